"""The parameter server: the rule's state and bookkeeping (``ServerCore``) and its MPI loop.

``ServerCore`` knows nothing of MPI: the single-process mode calls it directly and the MPI
loop (``serve``) feeds it the pushes it receives. One core per server shard.
"""

from __future__ import annotations

import sys
import time
from array import array

import numpy as np

from . import transport as T
from .config import TrainConfig
from .rules import UpdateRule, all_finite

STALENESS_BINS = 1024  # the last bin counts everything >= STALENESS_BINS - 1
PUSH_LOG_LIMIT = 1_000_000


def warm_up_kernels() -> None:
    """Compile (or load from cache) the Numba kernels before the first push arrives: a first
    push that waits ~0.3 s for compilation lets the workers pile up local updates."""
    from .hogwild import merge_pull, snapshot_delta
    from .rules import _dc_kernel, _plain_blocks_kernel

    x = np.zeros(1, np.float32)
    e = np.zeros(0, np.float32)
    all_finite(x)
    for mode in (0, 1, 2):
        _dc_kernel(x, x, np.float32(1), np.float32(0), x, x, np.float32(0), np.float32(0.9),
                   np.float32(1e-7), mode, e, np.float32(0))
    snapshot_delta(x, x, x, x.copy(), np.float32(1))
    merge_pull(x.copy(), x.copy(), x, x)
    sparse = np.zeros(2, np.float32)  # one block of one value: index 0, value 0
    T.compress_blocks(x, 1, sparse, np.zeros(1, np.int32), 1)
    T.valid_block_ids(sparse, 1, 1)
    _plain_blocks_kernel(x.copy(), sparse, 1, 1, np.float32(0))


class FatalRunError(RuntimeError):
    """The run cannot go on (e.g. a worker keeps sending bad pushes).

    ``secondary``: raised on a rank that was only told to stop (a worker); the rank that knows
    the cause raises its own FatalRunError, and its message is the one to show.
    """

    def __init__(self, message: str, secondary: bool = False):
        super().__init__(message)
        self.secondary = secondary


class ServerCore:
    """Global parameters of one shard, the update rule, staleness and bad-push accounting."""

    def __init__(self, w0: np.ndarray, config: TrainConfig, n_workers: int, shard: int = 0,
                 block: int | None = None):
        self.config = config
        #: block size of sparse pushes (the algorithm's push_block), 0: dense pushes only
        self.block = int(block) if block else 0
        self.shard = shard
        self.n_workers = n_workers
        self.w = np.array(w0, dtype=np.float32, copy=True)
        self.rule = UpdateRule(config.rule, self.w.size, n_workers)
        # sparse pushes go to the rule as received where it applies them in place (no dense scatter)
        self.decoder = T.PushDecoder(self.w.size, self.block, scatter=not self.rule.applies_blocks)
        warm_up_kernels()
        for m in range(n_workers):
            self.rule.reset_worker(m, self.w)
        self.version = 0  # updates applied to w (pushes, or rounds for SSGD)
        self.total_updates = 0  # local updates incorporated (sum of the pushes' nsteps)
        self.staleness_hist = np.zeros(STALENESS_BINS, np.int64)
        self.push_workers = array("i")
        self.pushes = np.zeros(n_workers, np.int64)
        self.rejected = np.zeros(n_workers, np.int64)
        self.dropped_stale = np.zeros(n_workers, np.int64)
        self.consecutive_bad = np.zeros(n_workers, np.int64)
        self.reject_reasons: dict[str, int] = {}
        # a worker that has not said hello yet is silent since the server started (not since boot)
        self.last_push_time = np.full(n_workers, time.perf_counter())
        self.active = np.ones(n_workers, bool)
        self.reported_silent: set[int] = set()
        self.hello_versions = np.zeros(n_workers, np.int64)  # server version at each worker's first pull
        self.pending: list[int] = []  # SSGD: workers waiting for the round to close
        self.fatal: str | None = None
        #: an update overflowed: w holds inf/NaN and must never be checkpointed or evaluated
        self.model_broken = False
        #: callable asked on every push whether the algorithm wants the run to end
        self.stop_hook = None
        self.t0 = time.perf_counter()
        self.elapsed_offset = 0.0  # seconds of earlier runs when resumed
        #: seconds spent checking and applying pushes (:meth:`receive`), the rest of a push's cost
        #: being MPI's and the waits
        self.push_seconds = 0.0

    # ------------------------------------------------------------------ decisions
    @property
    def elapsed(self) -> float:
        return self.elapsed_offset + time.perf_counter() - self.t0

    def should_stop(self) -> bool:
        if self.fatal is not None or self.total_updates >= self.config.total_updates:
            return True
        if self.stop_hook is not None and self.stop_hook():
            return True
        return self.config.max_seconds is not None and self.elapsed >= self.config.max_seconds

    def flags_for(self, m: int, extra: int = 0) -> int:
        flags = extra
        if self.should_stop():
            flags |= T.FLAG_STOP
        if self.fatal is not None:
            flags |= T.FLAG_FATAL
        return flags

    # ------------------------------------------------------------------ messages
    def hello(self, m: int) -> list[tuple[int, int]]:
        """Worker ``m`` pulls for the first time. Returns [(worker, flags)] to answer now."""
        self.rule.reset_worker(m, self.w)
        self.last_push_time[m] = time.perf_counter()
        self.hello_versions[m] = self.version
        return [(m, self.flags_for(m))]

    def receive(self, m: int, header: np.ndarray, payload: np.ndarray, nbytes: int) -> list[tuple[int, int]]:
        """The one entry point for a message from worker ``m`` (``nbytes``: header included, as
        received): a hello, a leave, or a push - decoded and checked by :class:`transport.PushDecoder`
        (a malformed, wrong-size, wrong-dtype, non-finite or bad-step-size push is a rejection)
        and applied. Returns the [(worker, flags)] to answer now."""
        t0 = time.perf_counter()
        p = self.decoder.decode(header, payload, nbytes)
        if p.kind == T.KIND_DONE:
            return self.leave(m)
        if p.kind == T.KIND_HELLO:
            return self.hello(m)
        try:
            return self.push(m, payload if p.g is None else p.g, p.version, p.nsteps, p.lr, p.problem)
        finally:
            self.decoder.release()
            self.push_seconds += time.perf_counter() - t0

    def push(self, m: int, g, base_version: int, nsteps: int, lr: float,
             problem: str | None = None) -> list[tuple[int, int]]:
        """Apply worker ``m``'s push (``g``: a dense gradient, or a sparse push's blocks as
        ``transport.SparseBlocks`` where the rule applies them in place; ``problem``: why it is
        rejected, from the decoder).

        Returns the [(worker, flags)] to answer now (SSGD defers answers to the round's end).
        """
        self.pushes[m] += 1
        self.last_push_time[m] = time.perf_counter()
        self.reported_silent.discard(m)
        if problem is not None:
            self.rejected[m] += 1
            self.consecutive_bad[m] += 1
            self.reject_reasons[problem] = self.reject_reasons.get(problem, 0) + 1
            if self.consecutive_bad[m] >= self.config.max_bad_pushes and self.fatal is None:
                self.fatal = (
                    f"worker {m} sent {self.consecutive_bad[m]} bad pushes in a row "
                    f"(last: {problem}); stopping (max_bad_pushes={self.config.max_bad_pushes})"
                )
            self.rule.reset_worker(m, self.w)
            return self._answer(m, T.FLAG_REJECTED)
        self.consecutive_bad[m] = 0
        stale = max(0, self.version - int(base_version))
        self.staleness_hist[min(stale, STALENESS_BINS - 1)] += 1
        if len(self.push_workers) < PUSH_LOG_LIMIT:
            self.push_workers.append(m)
        bound = self.config.max_staleness
        if bound is not None and stale > bound:
            self.dropped_stale[m] += 1
            self.rule.reset_worker(m, self.w)
            return self._answer(m, T.FLAG_DROPPED_STALE)
        self.total_updates += int(nsteps)
        if self.rule.synchronous:
            self.rule.add_to_round(g)
            self.pending.append(m)
            self._last_lr = lr
            return self._maybe_close_round()
        sparse = isinstance(g, T.SparseBlocks)
        if not (self.rule.apply_blocks(self.w, g, m, lr) if sparse else self.rule.apply(self.w, g, m, lr)):
            self._overflowed(f"worker {m}'s push (staleness {stale}, lr {lr:.3g})")
        self.version += 1
        return [(m, self.flags_for(m))]

    def _overflowed(self, what: str) -> None:
        self.model_broken = True
        if self.fatal is None:
            self.fatal = (f"the server's model became non-finite (inf/NaN) applying {what} at version "
                          f"{self.version}: the step size is too large or the updates overflow float32; "
                          "stopping (no checkpoint of this model is written; the last one is the last good model)")

    def leave(self, m: int) -> list[tuple[int, int]]:
        """Worker ``m`` is gone (done, or told to stop). May close an SSGD round."""
        self.active[m] = False
        return self._maybe_close_round() if self.rule.synchronous else []

    def _answer(self, m, flag):
        if self.rule.synchronous and self.pending:
            # a rejected worker still takes part in the round: it waits with the others
            self.pending.append(m)
            return self._maybe_close_round(extra={m: flag})
        return [(m, self.flags_for(m, flag))]

    def _maybe_close_round(self, extra=None):
        waiting = set(self.pending)
        if not self.pending or any(self.active[k] and k not in waiting for k in range(self.n_workers)):
            return []
        if self.rule.sync_count:
            if not self.rule.apply_round(self.w, self._last_lr):
                self._overflowed(f"the SSGD round of workers {sorted(waiting)}")
            self.version += 1
        out = [(k, self.flags_for(k, (extra or {}).get(k, 0))) for k in self.pending]
        self.pending = []
        return out

    def check_silent(self, now: float | None = None) -> tuple[list[str], list[tuple[int, int]]]:
        """Workers silent for longer than ``worker_timeout``: (messages to report once, answers).

        For SSGD a silent worker holds up the round forever: the run becomes fatal and the
        waiting workers are answered with a stop.
        """
        limit = self.config.worker_timeout
        if limit is None:
            return [], []
        now = time.perf_counter() if now is None else now
        msgs, answers = [], []
        for m in np.nonzero(self.active)[0]:
            silent = now - self.last_push_time[m]
            if silent > limit and m not in self.reported_silent:
                self.reported_silent.add(int(m))
                msgs.append(f"worker {m} has not pushed for {silent:.0f} s (worker_timeout={limit:g} s)")
                if self.rule.synchronous and self.pending and m not in self.pending and self.fatal is None:
                    self.fatal = (f"SSGD: worker {m} has not pushed for {silent:.0f} s; the round cannot close "
                                  f"(worker_timeout={limit:g} s)")
                    answers = [(k, self.flags_for(k)) for k in self.pending]
                    self.pending = []
        return msgs, answers

    # ------------------------------------------------------------------ reporting
    def staleness_stats(self) -> dict:
        h = self.staleness_hist
        n = int(h.sum())
        values = np.arange(h.size)
        nz = np.nonzero(h)[0]
        return {
            "staleness_mean": float((h * values).sum() / n) if n else 0.0,
            "staleness_max": int(nz[-1]) if nz.size else 0,
            "staleness_hist": {int(k): int(h[k]) for k in nz},
        }

    def metrics(self) -> dict:
        out = {
            "version": self.version,
            "total_updates": self.total_updates,
            "pushes": int(self.pushes.sum()),
            "pushes_per_worker": self.pushes.tolist(),
            "rejected_pushes": int(self.rejected.sum()),
            "reject_reasons": dict(self.reject_reasons),
            "dropped_stale_pushes": int(self.dropped_stale.sum()),
            "server_seconds": self.elapsed,
            "server_push_seconds": self.push_seconds,
            "push_workers": list(self.push_workers),
            "hello_versions": self.hello_versions.tolist(),
        }
        out.update(self.staleness_stats())
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"w": self.w, "staleness_hist": self.staleness_hist}
        arrays.update(self.rule.state_arrays())
        return arrays

    def state_scalars(self) -> dict:
        return {"version": self.version, "total_updates": self.total_updates,
                "elapsed": self.elapsed, "shard": self.shard, "n_workers": self.n_workers}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict) -> None:
        if arrays["w"].shape != self.w.shape:
            raise ValueError(
                f"checkpoint holds {arrays['w'].size} parameters for shard {self.shard}, "
                f"this run has {self.w.size} (another model or number of server shards)"
            )
        self.w[...] = arrays["w"]
        self.staleness_hist[...] = arrays["staleness_hist"]
        self.rule.load_state_arrays(arrays)
        self.version = int(scalars["version"])
        self.total_updates = int(scalars["total_updates"])
        self.elapsed_offset = float(scalars["elapsed"])


# ---------------------------------------------------------------------- MPI loop


def _only_silent_workers_left(core: ServerCore, open_: list, answer) -> bool:
    """Once a second: report silent workers (an SSGD round may close without them); True when the
    run is over and only silent workers are left, so the server stops waiting for them."""
    reports, answers = core.check_silent()
    for text in reports:
        print(f"dpsgd server shard {core.shard}: warning: {text}", file=sys.stderr, flush=True)
    for m, flags in answers:
        answer(m, flags)
        open_[m] = False
    if (core.fatal is not None or core.should_stop()) and all(
            not open_[m] or m in core.reported_silent for m in range(len(open_))):
        if core.fatal is None:
            silent = sorted(m for m in range(len(open_)) if open_[m])
            core.fatal = (f"the run finished but worker(s) {silent} stopped answering for more than "
                          f"worker_timeout={core.config.worker_timeout:g} s")
        return True
    return False


def serve(comm, core: ServerCore, worker_ranks: list[int], housekeeping=None) -> None:
    """Serve pushes from ``worker_ranks`` until every worker has left.

    Persistent receives per worker, posted in advance so that MPI takes in one worker's push while
    the server answers another: a message's header (with a payload of up to
    ``INLINE_PAYLOAD_BYTES``) and, for larger models, a push's payload sent apart (see
    :func:`transport.send_message`). The headers are polled with ``Testsome`` and a backing-off
    sleep (never a blocking receive while idle, which spins a core, and never ``Waitany``, which can
    starve all workers but one); once the header of a push whose payload comes apart is here, the
    payload is waited for without sleeping, which drives a large transfer over a network path
    (polled every ~1 ms, a 20 MB message over MPICH's network path took 0.7 s instead of 17 ms). Answers are two
    sends (header, then the parameters straight from ``core.w``: no copy) into receives the worker
    posted before it pushed; the parameters' send is completed only before the next message that
    may change ``core.w`` (the worker copies them meanwhile, see ``settle_answers``).
    """
    from mpi4py import MPI

    n = core.w.size
    H = T.HEADER_BYTES
    # a header with an inline payload of at most INLINE_PAYLOAD_BYTES, and apart a push's larger payload
    heads = [T.Message(min(n, T.INLINE_PAYLOAD_BYTES // 4)) for _ in worker_ranks]
    msgs = [T.Message(n) if n > T.INLINE_PAYLOAD_BYTES // 4 else None for _ in worker_ranks]
    reqs = [comm.Recv_init(h.buf, source=r, tag=T.TAG_PUSH) for h, r in zip(heads, worker_ranks)]
    payload_reqs = [comm.Recv_init(m.buf[H:], source=r, tag=T.TAG_PUSH_PAYLOAD)
                    for m, r in zip(msgs, worker_ranks) if m is not None]
    for r in reqs + payload_reqs:
        r.Start()
    started = [True] * len(reqs)
    statuses = [MPI.Status() for _ in reqs]
    reply = np.zeros(T.HEADER_FIELDS, np.float64)
    open_ = [True] * len(reqs)
    backoff = T.Backoff()
    answers_in_flight = []  # the parameters' sends: core.w must not change until they complete

    def answer(m, flags):
        T.encode_header(reply, T.KIND_PARAMS, version=core.version, flags=flags, total=core.total_updates, n=n)
        comm.Send(reply, dest=worker_ranks[m], tag=T.TAG_REPLY)  # 64 bytes: sent eagerly
        answers_in_flight.append(comm.Isend(core.w, dest=worker_ranks[m], tag=T.TAG_REPLY_PARAMS))

    def settle_answers():
        # a large answer is copied by the worker when it next calls into MPI (MPICH's single-copy
        # path): a blocking send spun in MPI's progress loop meanwhile (27 % of the server's time
        # at K 100, V 50k under mpiexec -n 3), a core the workers need. Waited for politely, and
        # only before the next message may change core.w.
        try:
            while answers_in_flight:
                T.wait(answers_in_flight.pop())
        except MPI.Exception as e:
            lost_a_worker(e)

    def lost_a_worker(e):
        # a worker's process died (kill -9, OOM): MPI may report it here before the launcher
        # ends the job. Leave the dead rank's watcher (dpsgd.deathwatch) a moment to name it.
        time.sleep(1.0)
        core.fatal = core.fatal or f"lost a worker: MPI error {e.Get_error_string()!r}"
        raise FatalRunError(core.fatal) from None

    next_check = time.perf_counter() + 1.0
    while any(open_):
        if time.perf_counter() >= next_check:
            next_check = time.perf_counter() + 1.0
            settle_answers()  # an SSGD round may close without the silent workers
            if _only_silent_workers_left(core, open_, answer):
                break
        try:
            done = MPI.Request.Testsome(reqs, statuses)
        except MPI.Exception as e:
            lost_a_worker(e)
        if not done:
            backoff.idle()
            if housekeeping is not None:
                housekeeping()
            continue
        backoff.reset()
        for k, i in enumerate(done):
            started[i] = False
            head = heads[i]
            nbytes = statuses[k].Get_count(MPI.BYTE)  # statuses are in completion order
            payload = head.payload
            if nbytes < H:
                head.header[:] = 0  # a short header: not the last one (kind 0 is malformed)
            elif T.payload_apart(head.header) and nbytes == H and payload_reqs:
                try:
                    status = T.wait(payload_reqs[i], spin=float("inf"))
                except MPI.Exception as e:
                    lost_a_worker(e)
                nbytes = H + status.Get_count(MPI.BYTE)
                payload = msgs[i].payload
                payload_reqs[i].Start()
            if T.is_leaving(head.header):
                open_[i] = False
            settle_answers()
            answers = core.receive(i, head.header, payload, nbytes)
            for m, flags in answers:
                answer(m, flags)
                if flags & T.FLAG_STOP:
                    # this worker is told to stop: it sends nothing more to this shard
                    open_[m] = False
                    for mm, ff in core.leave(m):
                        answer(mm, ff)
            if open_[i]:
                reqs[i].Start()
                started[i] = True
        if housekeeping is not None:
            housekeeping()
    settle_answers()
    for r, active in zip(reqs, started):
        if active:  # a worker told to stop: its receive will never match
            r.Cancel()
            r.Wait()
        r.Free()
    for r in payload_reqs:  # every one is waiting for a push that will not come
        r.Cancel()
        r.Wait()
        r.Free()
