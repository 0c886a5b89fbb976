"""Numerical faults on the server: an update that overflows stops the run, never a checkpoint full of inf/NaN."""

import numpy as np
import pytest

import dpsgd
from dpsgd import checkpoint as ckpt
from dpsgd.rules import RULES, RuleConfig, UpdateRule
from dpsgd.server import FatalRunError, ServerCore

BIG = np.float32(1e20)  # finite, but its square is not


@pytest.mark.parametrize("name", [r for r in RULES if r != "ssgd"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_every_kernel_reports_overflow(name, momentum):
    n = 257  # not a multiple of the vector width: the tail is checked too
    rule = UpdateRule(RuleConfig(name, momentum=momentum), n, 1)
    w = np.ones(n, np.float32)
    assert rule.apply(w, np.full(n, 0.5, np.float32), 0, 0.1) is True
    for i in (0, 100, n - 1):
        w = np.ones(n, np.float32)
        rule.reset_worker(0, w - 1)  # w != backup: the DC term is used
        g = np.zeros(n, np.float32)
        linear = name in ("sgd", "asgd", "dc-asgd-i")
        g[i] = -BIG if linear else BIG
        lr = 1e30 if linear else 0.1  # rules linear in g: lr * g overflows; DC with g * g: g * g does
        assert rule.apply(w, g, 0, lr) is False, (name, i)
        assert not np.isfinite(w[i])


def test_ssgd_round_reports_overflow():
    rule = UpdateRule(RuleConfig("ssgd"), 10, 2)
    w = np.ones(10, np.float32)
    rule.add_to_round(np.full(10, 3e38, np.float32))
    rule.add_to_round(np.full(10, 3e38, np.float32))  # the sum overflows, each push is finite
    assert rule.apply_round(w, 0.1) is False


def _core(rule="dc-asgd-c"):
    cfg = dpsgd.TrainConfig(rule=RuleConfig(rule), total_updates=100, progress=False)
    return ServerCore(np.ones(8, np.float32), cfg, 2)


def _decoded(core, g):
    """``g`` sent as a dense push, as the server's decoder reads it."""
    T = dpsgd.transport
    msg = T.Message(g.size)
    msg.payload[:] = g
    T.encode_header(msg.header, T.KIND_PUSH, n=g.size, lr=0.1, nsteps=1)
    return core.decoder.decode(msg.header, msg.payload, msg.nbytes_for(g.size))


def test_server_stops_on_overflow_and_names_the_push():
    core = _core()
    g = np.full(8, 0.1, np.float32)
    core.hello(0)
    assert _decoded(core, g).problem is None
    core.push(0, g, 0, 1, 0.1)
    assert core.fatal is None and not core.model_broken
    bad = np.full(8, BIG, np.float32)
    assert _decoded(core, bad).problem is None  # finite: passes the push check ...
    answers = core.push(1, bad, 0, 1, 0.1)  # ... but g * g overflows in the DC term
    assert core.model_broken
    assert "non-finite" in core.fatal and "worker 1's push" in core.fatal
    assert answers[0][1] & dpsgd.transport.FLAG_FATAL


class Overflowing(dpsgd.Algorithm):
    """Healthy updates, then finite ones whose g * g overflows the server's DC-ASGD term."""

    def __init__(self, healthy=150):
        self.healthy = healthy

    def init_params(self, rng):
        return np.ones(16, np.float32)

    def compute_update(self, params, state, ctx):
        if ctx.step < self.healthy:
            return (0.01 * params).astype(np.float32)
        return np.full(16, 1e20, np.float32)  # finite, and lr * 1e20 stays finite on the worker

    def evaluate(self, params):
        assert np.isfinite(params).all(), "evaluate was called on a broken model"
        return {"norm": float(np.linalg.norm(params))}


def test_overflow_keeps_the_last_good_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    cfg = dpsgd.TrainConfig(rule=RuleConfig("dc-asgd-c", lam=1.0), lr=1e-3, total_updates=10**6, threads=1,
                            progress=False, checkpoint_dir=str(ck), checkpoint_every=0.002, eval_every=0.002)
    with pytest.raises(FatalRunError, match="server.s model became non-finite"):
        dpsgd.train(Overflowing(), cfg)
    arrays, meta = ckpt.load_latest(str(ck), 0)
    assert np.isfinite(arrays["w"]).all()
    assert 0 < meta["total_updates"] <= 151
