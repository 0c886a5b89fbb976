"""ServerCore bookkeeping without MPI."""

import time

import numpy as np

import dpsgd
from dpsgd.server import ServerCore


def test_a_worker_not_yet_started_is_silent_since_the_server_started():
    """last_push_time began at 0 (boot time for perf_counter): a worker that had not said hello
    within worker_timeout was reported as silent for hours, and an SSGD round could turn fatal."""
    core = ServerCore(np.zeros(4, np.float32), dpsgd.TrainConfig(worker_timeout=1.0), 2)
    assert core.check_silent() == ([], [])
    msgs, _ = core.check_silent(now=time.perf_counter() + 5)
    assert len(msgs) == 2 and all("has not pushed for 5 s" in m or "has not pushed for 4 s" in m for m in msgs), msgs


def test_receive_decodes_checks_and_applies_every_kind_of_message():
    """ServerCore.receive is the one entry point of a worker's message (MPI and one process):
    encode_header's messages are decoded; malformed ones are rejections, counted by reason."""
    from dpsgd import transport as T

    n = 6
    core = ServerCore(np.zeros(n, np.float32), dpsgd.TrainConfig(rule=dpsgd.RuleConfig("asgd"), lr=0.5), 1, block=2)
    msg = T.Message(n)

    def send(kind, nbytes=None, **kw):
        T.encode_header(msg.header, kind, **kw)
        return dict(core.receive(0, msg.header, msg.payload, msg.nbytes_for(n) if nbytes is None else nbytes))

    assert send(T.KIND_HELLO, nbytes=T.HEADER_BYTES) == {0: 0}
    msg.payload[:] = np.arange(n)
    assert send(T.KIND_PUSH, n=n, lr=0.5, nsteps=1) == {0: 0}
    np.testing.assert_allclose(core.w, -0.5 * np.arange(n))
    assert core.version == 1 and core.total_updates == 1
    # rejections: short payload, a declared size that lies, a step size of 0, an unknown kind, NaN
    assert send(T.KIND_PUSH, nbytes=msg.nbytes_for(n - 1), n=n, lr=0.5, nsteps=1)[0] & T.FLAG_REJECTED
    assert send(T.KIND_PUSH, n=n + 1, lr=0.5, nsteps=1)[0] & T.FLAG_REJECTED
    assert send(T.KIND_PUSH, n=n, lr=0.0, nsteps=1)[0] & T.FLAG_REJECTED
    assert send(7.0, n=n, lr=0.5, nsteps=1)[0] & T.FLAG_REJECTED
    msg.payload[2] = np.nan
    assert send(T.KIND_PUSH, n=n, lr=0.5, nsteps=1)[0] & T.FLAG_REJECTED
    assert core.reject_reasons == {"size": 2, "step size": 1, "malformed": 1, "non-finite": 1}
    np.testing.assert_allclose(core.w, -0.5 * np.arange(n))  # none of them touched the model
    # a sparse push: block 1 (values 2, 3) only, applied in place by asgd (nothing scattered)
    sp = T.Message(3)
    sp.payload[:1].view(np.int32)[0] = 1
    sp.payload[1:3] = [10.0, 20.0]
    T.encode_header(sp.header, T.KIND_PUSH_SPARSE, n=1, lr=0.5, nsteps=1, block=2)
    assert dict(core.receive(0, sp.header, sp.payload, sp.nbytes_for(3))) == {0: 0}
    np.testing.assert_allclose(core.w, [0, -0.5, -6, -11.5, -2, -2.5])
    assert core.decoder.densifier.buf is None  # applied in place: no dense buffer made
    assert core.active[0]
    T.encode_header(msg.header, T.KIND_DONE)
    assert core.receive(0, msg.header, msg.payload, T.HEADER_BYTES) == []
    assert not core.active[0]  # the worker has left


def test_backoff_sleeps_grow_to_max_sleep_but_never_oversleep_a_short_wait(monkeypatch):
    """A waiting rank's sleeps double up to max_sleep, yet none is longer than OVERSLEEP of the
    time waited so far (or 100 us): an answer that lands after a few ms is seen late by a few %
    of that wait, and an idle rank still ends up sleeping max_sleep at a time."""
    from dpsgd import transport as T

    clock = [100.0]
    slept = []
    monkeypatch.setattr(T.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(T.os, "sched_yield", lambda: clock.__setitem__(0, clock[0] + 20e-6))

    def sleep(s):
        slept.append((s, clock[0] - 100.0))
        clock[0] += s

    monkeypatch.setattr(T.time, "sleep", sleep)
    b = T.Backoff(min_sleep=1e-5, max_sleep=1e-3, spin=100e-6)
    while clock[0] - 100.0 < 0.05:
        b.idle()
    assert slept and slept[0][1] >= 100e-6  # yields first, for spin seconds
    assert slept[0][0] == 1e-5
    for s, waited in slept:
        assert s <= max(1e-4, T.Backoff.OVERSLEEP * waited) + 1e-12
        assert s <= 1e-3
    assert slept[-1][0] == 1e-3  # an idle rank sleeps max_sleep at a time
    assert any(1e-4 < s < 1e-3 for s, _ in slept)  # the cap, not the doubling, set these
    n = len(slept)
    b.reset()
    b.idle()
    assert len(slept) == n  # reset: yields again before it sleeps


def test_spin_is_long_where_a_rank_has_cores_of_its_own(monkeypatch):
    """set_spin: 1 ms of yielding before a waiting rank sleeps where the node's ranks x threads fit
    its cores, 100 us where they share them; DPSGD_SPIN_SECONDS wins; a new Backoff takes it up."""
    from dpsgd import transport as T

    monkeypatch.setattr(T, "SPIN_SECONDS", T.SPIN_SECONDS)  # restored afterwards
    monkeypatch.delenv("DPSGD_SPIN_SECONDS", raising=False)
    assert T.set_spin(True) == T.SPIN_DEDICATED == 1e-3 and T.Backoff().spin == 1e-3
    assert T.set_spin(False) == T.SPIN_SHARED == 1e-4 and T.Backoff().spin == 1e-4
    assert T.Backoff(spin=0.5).spin == 0.5
    monkeypatch.setenv("DPSGD_SPIN_SECONDS", "0")
    assert T.set_spin(True) == 1e-4  # the environment's value stands (read at import, here 1e-4)
