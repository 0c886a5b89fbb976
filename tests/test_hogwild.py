"""Lock-free kernels and the threaded worker in one process."""

import sys
from pathlib import Path

import numpy as np
import pytest

import dpsgd
from dpsgd.hogwild import (LocalOptimizer, adam_step, merge_pull, rmsprop_step, rmsprop_tf_step, sgd_step,
                           snapshot_delta)

sys.path.insert(0, str(Path(__file__).parent / "progs"))
from train_ls import LS  # noqa: E402


def test_kernels_match_numpy():
    rng = np.random.default_rng(0)
    w, g = rng.normal(size=100).astype(np.float32), rng.normal(size=100).astype(np.float32)
    w1 = w.copy()
    sgd_step(w1, g, np.float32(0.1))
    np.testing.assert_allclose(w1, w - 0.1 * g, rtol=1e-6)
    sq = np.full(100, 0.5, np.float32)
    w2 = w.copy()
    rmsprop_step(w2, g, sq, np.float32(0.01), np.float32(0.99), np.float32(1e-5))
    s = 0.99 * 0.5 + 0.01 * g.astype(np.float64) ** 2
    np.testing.assert_allclose(sq, s, rtol=1e-5)
    np.testing.assert_allclose(w2, w - 0.01 * g / (np.sqrt(s) + 1e-5), rtol=1e-5, atol=1e-7)
    # TensorFlow's RMSprop: eps inside the root (statistics 0.5 here; LocalOptimizer starts them at 1)
    sq = np.full(100, 0.5, np.float32)
    w4 = w.copy()
    rmsprop_tf_step(w4, g, sq, np.float32(0.01), np.float32(0.99), np.float32(1e-5))
    np.testing.assert_allclose(sq, s, rtol=1e-5)
    np.testing.assert_allclose(w4, w - 0.01 * g / np.sqrt(s + 1e-5), rtol=1e-5, atol=1e-7)
    m, v = np.zeros(100, np.float32), np.zeros(100, np.float32)
    w3 = w.copy()
    adam_step(w3, g, m, v, np.float32(0.01), np.float32(0.9), np.float32(0.999), np.float32(1e-8), np.float32(1))
    # first Adam step moves every coordinate by lr * sign(g)
    np.testing.assert_allclose(w3, w - 0.01 * np.sign(g), rtol=1e-4, atol=1e-6)


def test_push_pull_keeps_concurrent_updates():
    rng = np.random.default_rng(1)
    w_start = rng.normal(size=50).astype(np.float32)
    w = w_start + 0.1
    snap, out = np.empty(50, np.float32), np.empty(50, np.float32)
    snapshot_delta(out, w_start, w, snap, np.float32(2.0))
    np.testing.assert_allclose(out, (w_start - w) * 2.0, rtol=1e-6)
    w += 0.5  # a thread kept updating after the snapshot
    w_new = rng.normal(size=50).astype(np.float32)
    merge_pull(w, w_start, w_new, snap)
    np.testing.assert_allclose(w, w_new + 0.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(w_start, w_new)


def manual_sgd(alg, lr, steps, seed):
    """The sequential SGD that one worker with one thread must reproduce."""
    w = alg.init_params(np.random.default_rng(seed))
    ctx = dpsgd.ThreadContext(worker=0, n_workers=1, thread=0, n_threads=1, seed=seed,
                              rng=np.random.default_rng([seed, 0, 0, 0]))
    state = alg.make_thread_state(ctx)
    for _ in range(steps):
        g = alg.compute_update(w, state, ctx)
        w = w - np.float32(lr) * g
        ctx.step += 1
    return w


@pytest.mark.parametrize("local_steps", [1, 5])
def test_one_thread_is_sequential_sgd(local_steps):
    alg = LS()
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("sgd"), lr=0.02, total_updates=300, threads=1,
                            local_steps=local_steps, progress=False)
    res = dpsgd.train(alg, cfg)
    expect = manual_sgd(alg, 0.02, 300, 0)
    np.testing.assert_allclose(res.params, expect, rtol=1e-4, atol=1e-4)
    assert res.metrics["total_updates"] == 300


def test_one_thread_run_is_reproducible():
    cfg = dict(rule=dpsgd.RuleConfig("dc-asgd-a"), lr=0.02, total_updates=200, threads=1, progress=False)
    a = dpsgd.train(LS(), dpsgd.TrainConfig(**cfg)).params
    b = dpsgd.train(LS(), dpsgd.TrainConfig(**cfg)).params
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop", "rmsprop_tf", "adam"])
def test_threads_converge_like_one_thread(optimizer):
    """Hogwild with 4 threads reaches the least-squares solution within tolerance."""
    lr = 0.02 if optimizer == "sgd" else 0.01
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=lr, total_updates=4000, threads=4,
                            local_optimizer=optimizer, progress=False,
                            schedule="linear" if optimizer != "sgd" else "constant")
    res = dpsgd.train(LS(), cfg)
    assert res.metrics["final"]["dist"] < 0.05, res.metrics["final"]
    assert sum(res.metrics["local_updates_per_worker"]) == 4000


def test_local_optimizer_shares_state():
    opt = LocalOptimizer("rmsprop", 10)
    w = np.zeros(10, np.float32)
    opt.step(w, np.ones(10, np.float32), 0.1, 1)
    np.testing.assert_allclose(opt.sq, 0.01, rtol=1e-6)  # (1 - alpha) * g^2 from zero statistics
    np.testing.assert_allclose(w, -0.1 / (0.1 + 1e-5), rtol=1e-5)  # torch's first step: 10 lr whatever g


def test_rmsprop_tf_first_step_scales_with_the_gradient():
    """The TF variant starts its statistics at 1, so a small gradient makes a small first step
    (torch's RMSprop moves every coordinate by ~10 lr at alpha 0.99, the Atari failure mode)."""
    opt = LocalOptimizer("rmsprop_tf", 4, alpha=0.99, eps=1e-5)
    np.testing.assert_array_equal(opt.sq, 1.0)
    w = np.zeros(4, np.float32)
    g = np.array([1e-3, -1e-3, 0.5, 0.0], np.float32)
    opt.step(w, g, 7e-4, 1)
    s = 0.99 + 0.01 * g.astype(np.float64) ** 2
    np.testing.assert_allclose(w, -7e-4 * g / np.sqrt(s + 1e-5), rtol=1e-5, atol=1e-12)
    assert abs(w[0]) < 1e-6 and w[3] == 0.0


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "rmsprop_tf", "adam"])
def test_local_optimizer_state_round_trip(name):
    a = LocalOptimizer(name, 6)
    w = np.zeros(6, np.float32)
    for t in range(1, 4):
        a.step(w, np.arange(6, dtype=np.float32) - 2.5, 0.01, t)
    saved = {k: v.copy() for k, v in a.state_arrays().items()}
    b = LocalOptimizer(name, 6)
    assert b.load_state_arrays(saved) == bool(saved)
    for k, v in b.state_arrays().items():
        np.testing.assert_array_equal(v, saved[k])
    assert not LocalOptimizer(name, 7).load_state_arrays(saved)  # another size: refused, untouched
    if name in ("rmsprop", "rmsprop_tf"):  # another optimizer's statistics: refused
        other = "rmsprop_tf" if name == "rmsprop" else "rmsprop"
        assert not LocalOptimizer(other, 6).load_state_arrays(saved)


def test_nan_updates_are_rejected_and_run_recovers():
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=500, threads=1, progress=False)
    res = dpsgd.train(LS(nan_updates=3), cfg)
    m = res.metrics
    assert m["rejected_pushes"] == 3 and m["reject_reasons"] == {"non-finite": 3}
    assert np.isfinite(res.params).all()
    assert m["final"]["dist"] < 0.5


def test_persistent_nan_stops_with_clear_message():
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=500, threads=1,
                            max_bad_pushes=4, progress=False)
    with pytest.raises(dpsgd.server.FatalRunError, match="4 bad pushes in a row"):
        dpsgd.train(LS(nan_updates=10**9), cfg)


def test_bad_update_shape_is_a_clear_error():
    class Bad(LS):
        def compute_update(self, w, rows, ctx):
            return np.zeros(3, np.float64)

    with pytest.raises(dpsgd.worker.WorkerError, match="must return a float32 array"):
        dpsgd.train(Bad(), dpsgd.TrainConfig(total_updates=10, threads=1, progress=False))


def test_convergence_guarantee_warning():
    cfg = dpsgd.TrainConfig(total_updates=10, threads=4, progress=False)
    with pytest.warns(UserWarning, match=r"T\^\(1/4\)"):
        dpsgd.train(LS(), cfg)


def test_algorithm_can_stop_the_run():
    class Stopper(LS):
        def __init__(self):
            super().__init__()
            self.evals = 0

        def evaluate(self, w):
            self.evals += 1
            return super().evaluate(w)

        def should_stop(self):
            return self.evals >= 3

    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=10**6, threads=1,
                            eval_every_updates=100, final_eval=False, progress=False)
    res = dpsgd.train(Stopper(), cfg)
    m = res.metrics
    assert [r["updates"] for r in m["history"]] == [100, 200, 300]
    assert 300 <= m["total_updates"] < 10**6 and "final" not in m


def test_final_evaluation_goes_through_evaluate_final():
    """The final model is scored by ``evaluate_final`` (the training threads are done: an algorithm
    may spend every core on it); the periodic evaluations by ``evaluate``."""

    class Final(LS):
        def evaluate(self, w):
            return {"which": 0.0, **super().evaluate(w)}

        def evaluate_final(self, w):
            return {"which": 1.0, **super().evaluate(w)}

    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=300, threads=1,
                            eval_every_updates=100, progress=False)
    m = dpsgd.train(Final(), cfg).metrics
    assert [r["which"] for r in m["history"]] == [0.0, 0.0, 0.0] and m["final"]["which"] == 1.0


def test_paused_evaluations_read_the_model_in_place():
    """In one process training waits for an evaluation: it gets the server's model itself, read-only
    (no model-sized copy); so does the final evaluation."""
    seen = []

    class Peek(LS):
        def evaluate(self, w):
            seen.append((w.flags.writeable, w.base is not None))
            with pytest.raises(ValueError):
                w[0] = 1.0  # an evaluation that writes fails instead of changing the model
            return super().evaluate(w)

    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=300, threads=2,
                            eval_every_updates=100, progress=False)
    m = dpsgd.train(Peek(), cfg).metrics
    assert len(m["history"]) == 3 and seen == [(False, True)] * 4 and "dist" in m["final"]
    assert all(np.isfinite(r["dist"]) for r in m["history"])


class _CountingLS(LS):
    """LS whose updates take a little while, so that threads overlap at the end of the budget."""

    def __init__(self):
        super().__init__()
        import threading

        self.calls = 0
        self.lock = threading.Lock()

    def compute_update(self, w, rows, ctx):
        import time

        with self.lock:
            self.calls += 1
        time.sleep(0.002)
        return super().compute_update(w, rows, ctx)


@pytest.mark.parametrize("local_steps", [1, 3])
def test_threads_compute_exactly_the_budget(local_steps):
    """With one worker the budget is known exactly: no thread starts an update past it (they used
    to compute up to threads-1 extra updates that the server's STOP threw away), and the updates
    of a last partial push (budget not a multiple of local_steps) still reach the server."""
    alg = _CountingLS()
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.02, total_updates=100, threads=4,
                            local_steps=local_steps, progress=False)
    res = dpsgd.train(alg, cfg)
    assert res.metrics["total_updates"] == 100
    assert alg.calls == 100
    assert sum(res.metrics["local_updates_per_worker"]) == 100


def test_only_evaluations_that_paused_training_are_taken_off_its_clock():
    from dpsgd.runner import paused_eval_seconds

    history = [
        {"updates": 0, "eval_duration": 1.0, "eval_background": 0.0, "eval_initial": 1.0},  # before training
        {"updates": 10, "eval_duration": 0.5, "eval_background": 0.0},  # paused the serving
        {"updates": 20, "eval_duration": 2.0, "eval_background": 1.0},  # a background thread's
        {"updates": 30, "eval_duration": 0.25, "eval_background": 0.0},
    ]
    assert paused_eval_seconds(history) == 0.75
    assert paused_eval_seconds([]) == 0.0


def test_direct_worker_pushes_its_update_and_computes_on_the_servers_model():
    """Blocking exchange, local_steps 1, SGD: the worker's threads compute on the server's own
    array (one process), each pushes its ``g`` itself with the version its update started from,
    and an update of step size 0 pushes zeros at the last step size (as the snapshot of an
    unchanged buffer did) - never a rejected push."""
    from dpsgd import transport as T
    from dpsgd.server import ServerCore
    from dpsgd.worker import LocalChannel, Worker

    def direct_worker(threads):
        """A direct worker with ``threads`` threads after its hello, and its in-process server."""
        cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.5, total_updates=10, threads=threads,
                                progress=False)
        core = ServerCore(np.ones(4, np.float32), cfg, 1)
        worker = Worker(LS(), cfg, LocalChannel(core), 0, 1, core.w)
        assert worker.direct and worker.w is core.w and worker.snap is None
        worker._exchange(T.KIND_HELLO)
        return core, worker

    core, worker = direct_worker(1)
    worker.since_push = 1
    worker._push_direct(np.full(4, 2.0, np.float32), 0.5)
    np.testing.assert_array_equal(core.w, np.zeros(4))  # 1 - 0.5 * 2
    worker.since_push = 1
    worker._push_direct(np.full(4, 7.0, np.float32), 0.0)
    np.testing.assert_array_equal(core.w, np.zeros(4))
    assert core.pushes[0] == 2 and core.rejected[0] == 0 and worker.version == 2 and worker.since_push == 0
    # several threads: each pushes its own update, with the version it started from
    core2, w2 = direct_worker(2)
    w2.since_push = 2
    w2._push_direct(np.full(4, 1.0, np.float32), 0.5, base_version=0)
    w2._push_direct(np.full(4, 1.0, np.float32), 0.5, base_version=0)  # computed while the first was pushed
    np.testing.assert_array_equal(core2.w, np.zeros(4))
    assert core2.staleness_hist[0] == 1 and core2.staleness_hist[1] == 1 and w2.version == 2
    # any other layout keeps its own buffer; a pipelined one with one SGD step a push pushes its
    # update as it is (no snapshot), the others snapshot
    for kw in ({"overlap": True}, {"local_steps": 2}, {"local_optimizer": "rmsprop"},
               {"overlap": True, "local_steps": 2}):
        c = dpsgd.TrainConfig(**{**dict(rule=dpsgd.RuleConfig("asgd"), threads=1), **kw})
        other = Worker(LS(), c, LocalChannel(ServerCore(np.ones(4, np.float32), c, 1)), 0, 1, np.ones(4, np.float32))
        assert not other.direct and other.w is not other.w_new
        assert other.pipelined_direct == (kw == {"overlap": True}) and (other.snap is None) == other.pipelined_direct


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status")
def test_peak_rss_is_the_process_own():
    """A run's peak RSS is its own, not the peak of the process that started it (getrusage's
    ru_maxrss is inherited through fork + exec: a benchmark that had built its corpus in memory
    saw every `dpsgd lda` child report that peak)."""
    import subprocess

    big = np.ones(600 * 2**20 // 8)  # this process peaks at > 600 MB
    del big
    code = "from dpsgd.runner import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout
    assert 10 < float(out) < 400, out
