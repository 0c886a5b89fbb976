"""A worker: T threads update the rank's flat buffer lock-free and push/pull every k updates.

The thread that completes the k-th local update since the last push does the push itself
(pushes never overlap: a non-blocking try-lock skips the push when one is under way), so one
thread in one process is fully deterministic for a seed. While it waits for the server's
answer it sleeps between polls, releasing the GIL: the other threads keep computing.

With ``overlap`` a one-thread worker is *pipelined*: a communication thread carries the
exchange while the thread computes the next ``local_steps`` updates, and the answer is merged
when they are done (``w = w_new + (w - snap)``, as for the other threads' updates below). Each
push's updates were thus computed on the model of one exchange earlier (one more version of
staleness than the server logs for it). The merge happens only between updates, so a pipelined
one-process run stays deterministic for a seed, and ``simulate(..., overlap=True)`` replays it.
With one plain SGD step a push the merge needs no snapshot: the answer replaces the buffer, the
update computed meanwhile is applied to it and pushed as it is (``_push_pipelined_direct``).

Push: ``g = (w_start - snap) / lr`` where ``snap`` is a copy of the buffer taken now and
``w_start`` the model last pulled; the server applies ``w -= lr * rule(g)``. Pull:
``w += w_new - snap`` keeps the updates the other threads made meanwhile.

*Direct* worker (blocking exchange, ``local_steps`` 1, plain SGD locally - DPSVI's ranks): the
update computed is the push itself. Applying it locally, snapshotting and merging the answer
would only give back ``g`` and the server's model, so the worker skips all three: each thread
pushes its ``g`` itself (under the push lock) and the answer lands in the rank's buffer, which is
the model last pulled (in one process: the server's own array, so the threads' Hogwild updates
are the server's applies). Three model-sized passes and buffers fewer per update; the pushed
values are ``g`` exactly, as the simulator computes them, and each push carries the version the
thread's update started from.
"""

from __future__ import annotations

import threading
import time
import traceback

import numpy as np

from . import transport as T
from .config import TrainConfig, lr_at
from .hogwild import LocalOptimizer, merge_pull, sgd_update, snapshot_delta
from .plugin import ThreadContext, checked_update


class WorkerError(RuntimeError):
    pass


class LocalChannel:
    """The in-process server of a one-process run (same ServerCore as the MPI server)."""

    def __init__(self, core, housekeeping=None):
        self.core = core
        self.housekeeping = housekeeping  # the server's periodic work, done after each exchange
        self.bounds = np.array([0, core.w.size], np.int64)
        self.msg = T.Message(core.w.size)  # the same message an MPI push is, never sent
        self.push_buffers = [self.msg.payload]
        #: a sparse update (transport.SparseBlocks) is scattered into a dense gradient before a push
        self.takes_sparse = False

    def model_buffers(self, w0: np.ndarray):
        """``(w_start, w_new)`` of the worker: the model it last pulled and the buffer the answer
        lands in. Here both are the server's own array, not copies: with one worker, the server's
        model changes only inside an exchange, so between exchanges it *is* the model last pulled
        (two model-sized buffers less: 400 MB at K 1000, V 50k)."""
        if w0.size != self.core.w.size:
            raise ValueError(f"{w0.size} parameters for a server of {self.core.w.size}")
        return self.core.w, self.core.w

    def direct_buffer(self, w0: np.ndarray) -> np.ndarray:
        """The buffer of a direct worker (see the module docstring): the server's own model."""
        return self.model_buffers(w0)[0]

    def exchange(self, kind, base_version, nsteps, lr, w_new, payload=None):
        """Push (``payload``: the gradient to push instead of :attr:`push_buffers`) and pull into ``w_new``."""
        core = self.core
        n = self.msg.payload.size if kind == T.KIND_PUSH else 0
        T.encode_header(self.msg.header, kind, version=base_version, nsteps=nsteps, n=n, lr=lr)
        answers = core.receive(0, self.msg.header, self.msg.payload if payload is None else payload,
                               self.msg.nbytes_for(n))
        flags = dict(answers).get(0, 0)
        if w_new is not core.w:
            w_new[:] = core.w
        if self.housekeeping is not None:
            self.housekeeping()
        return flags, core.version, core.total_updates

    def done(self):
        self.core.leave(0)


class MPIChannel:
    """Pushes to and pulls from every server shard over MPI buffers.

    ``block``: the algorithm's ``push_block``; a push that changes few blocks of a shard goes
    as a sparse push (see :mod:`dpsgd.transport`).
    """

    def __init__(self, comm, n_servers, n_params, block: int | None = None):
        self.comm = comm
        self.block = int(block) if block else 0
        self.bounds = T.shard_bounds(n_params, n_servers, self.block or 1)
        sizes = np.diff(self.bounds)
        self.msgs = [T.Message(int(n)) for n in sizes]
        self.push_buffers = [m.payload for m in self.msgs]
        self.reply_headers = [np.zeros(T.HEADER_FIELDS, np.float64) for _ in sizes]
        self.stopped_by: set[int] = set()  # shards that told us to stop
        #: a sparse update (transport.SparseBlocks) goes out as it is; with several shards it is
        #: scattered into a dense gradient first (each shard takes its slice)
        self.takes_sparse = bool(self.block) and n_servers == 1
        if self.block:
            nblocks = [int(n) // self.block for n in sizes]
            self.max_blocks = [int(nb * T.SPARSE_MAX_FRACTION) for nb in nblocks]
            self.sparse_msgs = [T.Message(mb * (self.block + 1)) for mb in self.max_blocks]
            self.block_ids = [np.empty(nb, np.int32) for nb in nblocks]
        #: bytes sent in pushes / received in replies (headers included), and sparse pushes
        self.bytes_pushed = 0
        self.bytes_pulled = 0
        self.pushes = 0
        self.sparse_pushes = 0

    def model_buffers(self, w0: np.ndarray):
        """``(w_start, w_new)`` of the worker: a copy of the initial model (the model last pulled)
        and the array the server shards' answers are received into."""
        return np.array(w0, np.float32, copy=True), np.empty(w0.size, np.float32)

    def direct_buffer(self, w0: np.ndarray) -> np.ndarray:
        """The buffer of a direct worker (see the module docstring): the model last pulled, into
        which the answers land."""
        return np.array(w0, np.float32, copy=True)

    def _send_push(self, s, msg, kind, base_version, nsteps, lr, src=None):
        """Post shard ``s``'s push: ``src`` (a slice of the gradient) or, when None, ``msg.payload``.
        Returns (bytes, send requests), as :func:`transport.send_message`."""
        src = msg.payload if src is None else src
        nb, values = -1, None  # a sparse push's blocks, and its payload when not in the message
        if isinstance(src, T.SparseBlocks):
            if src.nb <= self.max_blocks[s]:  # the algorithm's own sparse update: sent as it is
                nb = int(src.nb)
                values = src.payload[:nb * (self.block + 1)]
            else:  # more blocks than a sparse push may carry: the dense push is smaller
                msg.payload[:] = 0
                T.scatter_blocks(src.payload, int(src.nb), self.block, msg.payload)
                src = msg.payload
        elif kind == T.KIND_PUSH and self.block:  # the changed blocks of a dense gradient, if few
            nb = T.compress_blocks(src, self.block, self.sparse_msgs[s].payload, self.block_ids[s],
                                   self.max_blocks[s])
        if nb >= 0:
            sp = self.sparse_msgs[s]
            T.encode_header(sp.header, T.KIND_PUSH_SPARSE, version=base_version, nsteps=nsteps, n=nb, lr=lr,
                            block=self.block)
            self.sparse_pushes += 1
            return T.send_message(self.comm, sp, nb * (self.block + 1), s, values=values)
        n = msg.payload.size if kind == T.KIND_PUSH else 0
        T.encode_header(msg.header, kind, version=base_version, nsteps=nsteps, n=n, lr=lr)
        return T.send_message(self.comm, msg, n, s, values=None if src is msg.payload or not n else src)

    def exchange(self, kind, base_version, nsteps, lr, w_new, payload=None):
        """Push (``payload``: the gradient to push instead of :attr:`push_buffers`) and pull
        every shard's answer into ``w_new``."""
        comm = self.comm
        reqs = []
        for s, (lo, hi) in enumerate(zip(self.bounds[:-1], self.bounds[1:])):
            # post the receives of the answer before pushing: the server's Send completes at once
            reqs.append(comm.Irecv(self.reply_headers[s], source=s, tag=T.TAG_REPLY))
            reqs.append(comm.Irecv(w_new[lo:hi], source=s, tag=T.TAG_REPLY_PARAMS))
        sent = 0
        sends = []
        for s, msg in enumerate(self.msgs):
            src = payload if payload is None or isinstance(payload, T.SparseBlocks) else \
                payload[self.bounds[s]:self.bounds[s + 1]]
            nbytes, r = self._send_push(s, msg, kind, base_version, nsteps, lr, src)
            sent += nbytes
            sends += r
        # a push of more than INLINE_PAYLOAD_BYTES is waited for politely: the server reads it itself
        # (MPICH's single-copy path), which takes it milliseconds and a core; a blocking wait spins
        # meanwhile (2 ms of CPU a push at K 100, V 50k). A small one completes within microseconds
        # of the server's poll: sleeping would add its latency to every round trip.
        large = sent > T.INLINE_PAYLOAD_BYTES
        for r in sends:
            T.wait(r) if large else r.Wait()
        for k, r in enumerate(reqs):
            # the parameters follow their header: once it is here, drive their transfer without
            # sleeping (over a network path a 20 MB answer took 0.7 s polled every 1 ms, 17 ms driven)
            T.wait(r, spin=float("inf") if k % 2 else None)
        if kind == T.KIND_PUSH:
            self.pushes += 1
            self.bytes_pushed += sent
            self.bytes_pulled += T.HEADER_BYTES * len(self.msgs) + 4 * w_new.size
        flags = 0
        for s, h in enumerate(self.reply_headers):
            f = T.decode_reply(h)[0]
            flags |= f
            if f & T.FLAG_STOP:
                self.stopped_by.add(s)
        _, version, total = T.decode_reply(self.reply_headers[0])
        return flags, version, total

    def done(self):
        """Tell every shard that has not told us to stop that we leave."""
        for s, msg in enumerate(self.msgs):
            if s in self.stopped_by:
                continue
            T.encode_header(msg.header, T.KIND_DONE)
            for r in T.send_message(self.comm, msg, 0, s)[1]:
                T.wait(r)


class _Exchanger:
    """The communication thread of a pipelined worker: runs ``channel.exchange`` jobs one at a
    time, so the computing thread goes on while a push and its pull are in flight. Only this
    thread touches the channel between the worker's hello and its goodbye; the computing thread
    reads ``w_new`` only after :meth:`wait`."""

    def __init__(self, channel, w_new, worker: int):
        import queue

        self.channel, self.w_new = channel, w_new
        self.jobs: queue.Queue = queue.Queue(maxsize=1)
        self.answers: queue.Queue = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"dpsgd-w{worker}-comm")
        self.thread.start()

    def _main(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                answer = self.channel.exchange(*job[:4], self.w_new, *job[4:])  # (a payload may follow)
            except BaseException as e:  # handed to the computing thread by wait()
                answer = e
            self.answers.put(answer)

    def submit(self, job):
        self.jobs.put(job)

    def wait(self):
        answer = self.answers.get()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def close(self):
        self.jobs.put(None)
        self.thread.join()


class Worker:
    """Runs ``config.threads`` threads of an algorithm against a channel to the server."""

    def __init__(self, algorithm, config: TrainConfig, channel, worker: int, n_workers: int,
                 w0: np.ndarray):
        self.alg = algorithm
        self.config = config
        self.channel = channel
        self.worker = worker
        self.n_workers = n_workers
        self.n_threads = int(config.threads or 1)
        n = w0.size
        #: the update computed is the push itself (see the module docstring)
        self.direct = (not config.overlap and config.local_steps == 1 and config.local_optimizer == "sgd")
        #: one thread with ``overlap``: a communication thread carries the exchange (see run)
        self.pipelined = bool(config.overlap) and self.n_threads == 1
        #: pipelined with one plain SGD step a push: the update is pushed as computed (see
        #: :meth:`_push_pipelined_direct`), without the snapshot and merge passes
        self.pipelined_direct = self.pipelined and config.local_steps == 1 and config.local_optimizer == "sgd"
        if self.direct:
            # one buffer: the model last pulled, where the answers land and the thread computes
            self.w = channel.direct_buffer(w0)
            self.w_start = self.w_new = self.w
            self.snap = None
            self._zero_push: np.ndarray | None = None  # pushed for an update of step size 0
        else:
            self.w = np.array(w0, np.float32, copy=True)  # the rank's shared Hogwild buffer
            # the model last pulled, and where the next answer lands (written by the exchange only)
            self.w_start, self.w_new = channel.model_buffers(self.w)
            self.snap = None if self.pipelined_direct else np.empty(n, np.float32)
        self.opt = LocalOptimizer(config.local_optimizer, n, config.rms_alpha, config.adam_betas, config.opt_eps)
        self.seed_offset = 0
        self.version = 0
        self.server_total = 0
        self.since_push = 0
        #: local updates allowed before the threads wait for the push under way
        self.max_unpushed = 2 * config.local_steps + self.n_threads
        self.last_lr = config.lr
        self.local_updates = 0
        #: updates being computed now; with one worker the budget is known exactly here, so a
        #: thread does not start an update that the server would answer with STOP (with several
        #: threads the last ones used to compute up to threads-1 updates past the budget, thrown away)
        self.in_flight = 0
        self.pushing = 0  # updates in the push under way (counted by neither since_push nor server_total)
        self.exact_budget = n_workers == 1
        self.rejected_seen = 0
        #: wall clock (``time.time()``) and process CPU seconds when the first update began: the
        #: start of training proper (environment creation, warm-up and the hello excluded)
        self.first_update_unix = float("nan")
        self.first_update_cpu: float | None = None
        self.stop = threading.Event()
        self.count_lock = threading.Lock()
        self.push_lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.fatal = False
        #: seconds the computing thread(s) spent in push/pull or waiting for an answer
        self.wait_seconds = 0.0
        #: a pipelined worker's communication thread and the kind of the exchange in flight
        self._exchanger: _Exchanger | None = None
        self._in_flight = None
        self._discard_next = False  # the last answer rejected or dropped the push: the next update goes too
        self._push_copy = None  # a pipelined direct worker's copy of a sparse update under way

    # ------------------------------------------------------------------ schedule
    def _updates_done(self) -> int:
        """Updates counted so far: the server's total, the push under way, the local ones not pushed."""
        return self.server_total + self.pushing + self.since_push

    def lr_now(self) -> float:
        return lr_at(self.config, self._updates_done())

    # ------------------------------------------------------------------ push/pull
    def _begin_exchange(self, kind):
        """Snapshot the buffer and form the push (``w_start - snap) / lr``): the arguments of
        ``channel.exchange`` (without ``w_new``)."""
        nsteps = self.since_push
        # the step size of the latest local update: g = delta / lr, and the server applies lr * rule(g)
        lr = self.last_lr if kind == T.KIND_PUSH else 0.0
        if kind == T.KIND_PUSH:
            inv = np.float32(1.0 / lr)
            for s, (lo, hi) in enumerate(zip(self.channel.bounds[:-1], self.channel.bounds[1:])):
                snapshot_delta(self.channel.push_buffers[s][: hi - lo], self.w_start[lo:hi],
                               self.w[lo:hi], self.snap[lo:hi], inv)
            with self.count_lock:
                self.since_push -= nsteps
                self.pushing = nsteps
        return kind, self.version, nsteps, lr

    def _end_exchange(self, kind, flags, version, total):
        """The answer landed in ``w_new``: merge it (or start over from it) and take its counts."""
        if flags & T.FLAG_REJECTED:
            self.rejected_seen += 1
        if self.direct:
            pass  # the answer landed in the rank's buffer: nothing to merge or start over from
        elif self.pipelined_direct:
            # the buffer becomes the server's model; the update computed meanwhile is applied to it
            # next (or dropped, as the local updates of a rejected push are: _push_pipelined_direct)
            np.copyto(self.w, self.w_new)
            self._discard_next = bool(flags & (T.FLAG_REJECTED | T.FLAG_DROPPED_STALE))
        elif kind == T.KIND_HELLO or flags & (T.FLAG_REJECTED | T.FLAG_DROPPED_STALE):
            # start over from the server's model: the local updates are discarded
            self.w[:] = self.w_new
            self.w_start[:] = self.w_new
        else:
            merge_pull(self.w, self.w_start, self.w_new, self.snap)
        with self.count_lock:
            self.version, self.server_total = version, total
            self.pushing = 0
        if flags & T.FLAG_STOP:
            self.fatal = bool(flags & T.FLAG_FATAL)
            self.stop.set()

    def _exchange(self, kind):
        """Push (or say hello) and pull, blocking this thread until the answer is merged."""
        t0 = time.perf_counter()
        job = self._begin_exchange(kind)
        flags, version, total = self.channel.exchange(*job, self.w_new)
        self._end_exchange(kind, flags, version, total)
        self.wait_seconds += time.perf_counter() - t0

    def _push_direct(self, g, lr, base_version=None):
        """Direct worker: push the update ``g`` (step size ``lr``, computed on the model of
        ``base_version``, default the last pulled) itself; the answer lands in ``self.w``. An
        update of step size 0 changes nothing, so it pushes zeros at the last non-zero step size,
        as a snapshot of the unchanged buffer would. Threads push one at a time."""
        t0 = time.perf_counter()
        with self.push_lock:
            if self.stop.is_set():
                return
            if lr <= 0:
                if self._zero_push is None:
                    self._zero_push = np.zeros_like(self.w)
                g, lr = self._zero_push, self.last_lr
            with self.count_lock:
                self.since_push -= 1
                self.pushing = 1
            base = self.version if base_version is None else base_version
            flags, version, total = self.channel.exchange(T.KIND_PUSH, base, 1, lr, self.w, payload=g)
            self._end_exchange(T.KIND_PUSH, flags, version, total)
        with self.count_lock:  # several threads add to it (their wait for the push lock included)
            self.wait_seconds += time.perf_counter() - t0

    def _land(self):
        """Pipelined worker: wait for the exchange in flight (if any) and merge its answer."""
        if self._in_flight is None:
            return
        kind, self._in_flight = self._in_flight, None
        t0 = time.perf_counter()
        answer = self._exchanger.wait()
        self._end_exchange(kind, *answer)
        self.wait_seconds += time.perf_counter() - t0

    def _push_pipelined(self):
        """Pipelined worker (one thread, ``overlap``): merge the previous answer, which arrived
        while these local updates were computed, then hand the next push to the communication
        thread and go on computing."""
        self._land()
        if self.stop.is_set():
            return
        t0 = time.perf_counter()
        job = self._begin_exchange(T.KIND_PUSH)
        self._exchanger.submit(job)
        self._in_flight = T.KIND_PUSH
        self.wait_seconds += time.perf_counter() - t0

    def _push_pipelined_direct(self, g, lr):
        """Pipelined worker with one plain SGD step a push (``local_steps`` 1, ``overlap``): the
        update ``g`` (step size ``lr``) was computed while the last push was in flight; its answer
        replaces the buffer (:meth:`_end_exchange`), ``g`` is applied to it, and ``g`` itself goes
        to the communication thread - what the snapshot and merge of :meth:`_push_pipelined` give
        (``w = answer + (w - snap)``, the push ``(w_start - snap) / lr``) to rounding, without their
        model-sized passes, and sparse as computed (a SparseBlocks update is copied out: the
        algorithm writes its next one into the same buffer). After a rejected or dropped push the
        update is dropped and zeros go, as the merge after such an answer would push."""
        self._land()
        if self.stop.is_set():
            return
        if lr <= 0 or self._discard_next:
            g, lr = None, self.last_lr  # zeros at the last step size, as a snapshot of an unchanged buffer
        else:
            sgd_update(self.w, g, lr)
        t0 = time.perf_counter()
        payload = None
        if isinstance(g, T.SparseBlocks):
            used = g.nb * (g.block + 1)
            if self._push_copy is None or self._push_copy.size < used:
                self._push_copy = np.empty(g.payload.size, np.float32)
            self._push_copy[:used] = g.payload[:used]
            payload = T.SparseBlocks(self._push_copy, g.nb, g.block)
        else:
            for s, (lo, hi) in enumerate(zip(self.channel.bounds[:-1], self.channel.bounds[1:])):
                buf = self.channel.push_buffers[s][: hi - lo]
                buf[:] = 0.0 if g is None else g[lo:hi]
        with self.count_lock:
            self.since_push -= 1
            self.pushing = 1
        self._exchanger.submit((T.KIND_PUSH, self.version, 1, lr, payload))
        self._in_flight = T.KIND_PUSH
        self.wait_seconds += time.perf_counter() - t0

    def _claim(self) -> bool:
        """Reserve the next update of the budget (always granted with several workers: the
        server's STOP ends those runs)."""
        with self.count_lock:
            if self.exact_budget and self._updates_done() + self.in_flight >= self.config.total_updates:
                return False
            if self.first_update_cpu is None:
                self.first_update_unix, self.first_update_cpu = time.time(), time.process_time()
            self.in_flight += 1
            return True

    def _flush(self):
        """The budget is spent: push the updates not pushed yet (``local_steps`` > 1), so that
        the server reaches the budget and answers STOP."""
        if self.direct:
            return  # every update was pushed as it was made
        with self.push_lock:
            self._land()
            if self.since_push > 0 and not self.stop.is_set():
                self._exchange(T.KIND_PUSH)

    def _maybe_push(self):
        if self.since_push < self.config.local_steps or self.stop.is_set():
            return
        if self._exchanger is not None:  # one thread: no lock needed
            self._push_pipelined()
            return
        if not self.push_lock.acquire(blocking=False):
            # a push is under way; a thread that is far ahead waits for it, so that one push
            # never carries an unbounded number of local updates
            while self.since_push >= self.max_unpushed and self.push_lock.locked() and not self.stop.is_set():
                time.sleep(1e-4)
            return
        try:
            if self.since_push >= self.config.local_steps and not self.stop.is_set():
                self._exchange(T.KIND_PUSH)
        finally:
            self.push_lock.release()

    # ------------------------------------------------------------------ threads
    def _thread_main(self, t: int):
        ctx = ThreadContext(worker=self.worker, n_workers=self.n_workers, thread=t,
                            n_threads=self.n_threads, seed=self.config.seed,
                            rng=np.random.default_rng([self.config.seed, self.worker, t, self.seed_offset]))
        try:
            state = self.alg.make_thread_state(ctx)
            n = self.w.size
            densifier = T.Densifier(n)  # this thread's dense form of a sparse update, when needed
            while not self.stop.is_set():
                if not self._claim():
                    self._flush()
                    break
                ctx.lr = self.lr_now()
                base_version = self.version  # the model this update starts from
                try:
                    g = self.alg.compute_update(self.w, state, ctx)
                except BaseException:
                    with self.count_lock:
                        self.in_flight -= 1
                    raise
                checked_update(g, n, self.alg, WorkerError)
                as_is = self.direct or self.pipelined_direct  # the update is pushed as it is
                if isinstance(g, T.SparseBlocks) and not (as_is and self.channel.takes_sparse):
                    g = densifier.dense(g)  # zeroed again after its push or local step
                if not as_is:
                    self.opt.step(self.w, g, ctx.lr, self.local_updates + 1)
                    densifier.release()
                lr = ctx.lr
                if lr > 0:
                    self.last_lr = lr
                ctx.step += 1
                with self.count_lock:
                    self.in_flight -= 1
                    self.since_push += 1
                    self.local_updates += 1
                if self.direct:
                    self._push_direct(g, lr, base_version)
                    densifier.release()
                elif self.pipelined_direct and self._exchanger is not None:
                    self._push_pipelined_direct(g, lr)
                    densifier.release()
                else:
                    self._maybe_push()
        except BaseException as e:  # surfaced by run(); the other threads stop
            e.thread_traceback = traceback.format_exc()
            self.errors.append(e)
            self.stop.set()

    def run(self) -> dict:
        from .server import warm_up_kernels

        warm_up_kernels()
        t0 = time.perf_counter()
        self._exchange(T.KIND_HELLO)
        # a resumed run continues with fresh random streams, not the first run's again
        # (a fresh run does not depend on when a worker joined: offset 0)
        self.seed_offset = self.version if self.config.resume else 0
        if not self.stop.is_set():
            if self.pipelined:
                self._exchanger = _Exchanger(self.channel, self.w_new, self.worker)
                try:
                    self._thread_main(0)
                finally:
                    try:
                        self._land()  # an error or a STOP may leave an exchange in flight
                    except BaseException as e:
                        if not self.errors:
                            self.errors.append(e)
                    self._exchanger.close()
            elif self.n_threads == 1:
                self._thread_main(0)
            else:
                threads = [threading.Thread(target=self._thread_main, args=(t,), daemon=True,
                                            name=f"dpsgd-w{self.worker}-t{t}")
                           for t in range(self.n_threads)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
        self.channel.done()
        if self.errors:
            e = self.errors[0]
            raise WorkerError(f"worker {self.worker}: {type(e).__name__}: {e}\n{getattr(e, 'thread_traceback', '')}") from e
        return {
            "local_updates": self.local_updates,
            "seconds": time.perf_counter() - t0,
            "rejected_seen": self.rejected_seen,
            "threads": self.n_threads,
            "exchange_wait_seconds": self.wait_seconds,
            "overlap": self.pipelined,
            "first_update_unix": self.first_update_unix,
        }
