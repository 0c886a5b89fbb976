"""``dpsgd.train``: run an algorithm in one process (threads only) or over MPI.

Roles under ``mpiexec -n N``: ranks 0..S-1 are server shards (``config.n_servers = S``),
ranks S..N-1 workers. Without mpiexec (or with one rank) the one process runs one worker
whose pushes go to an in-process server with the same update rule.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint as ckpt
from . import transport as T
from .config import ConfigError, TrainConfig, available_cores, default_threads, ranks_on_this_node
from .rules import all_finite
from .server import FatalRunError, ServerCore, serve
from .worker import LocalChannel, MPIChannel, Worker


def mpi_world_size_from_env() -> int:
    """World size announced by the MPI launcher, without initialising MPI (1 when none)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 1


def get_comm():
    """COMM_WORLD when launched by mpiexec with more than one rank, else None."""
    if mpi_world_size_from_env() <= 1:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def broadcast_from_root(a: np.ndarray) -> np.ndarray:
    """Every rank's ``a`` (same shape and dtype on all) becomes rank 0's, in place; returns it.
    For work after :func:`train` that every rank joins (one process: nothing to do)."""
    comm = get_comm()
    if comm is not None:
        # waiting politely: the others may wait long for rank 0 (e.g. while it reads), and a rank
        # blocked in MPI_Bcast spins at 100 % of a core that an oversubscribed rank 0 needs
        T.wait(comm.Ibcast(a, root=0))
    return a


def sum_to_root(a: np.ndarray) -> np.ndarray | None:
    """The element-wise sum of every rank's ``a`` (same shape, float64) on rank 0, None on the
    others (one process: ``a``). For statistics that the ranks' own data give after :func:`train`
    (e.g. counts over each worker's shard), without gathering the data."""
    comm = get_comm()
    if comm is None:
        return a
    from mpi4py import MPI

    a = np.ascontiguousarray(a, np.float64)
    out = np.empty_like(a) if comm.Get_rank() == 0 else None
    T.wait(comm.Ireduce(a, out, op=MPI.SUM, root=0))  # politely, as broadcast_from_root
    return out


def warm_up_in_background() -> threading.Thread:
    """Load the framework's Numba kernels (:func:`server.warm_up_kernels`) in a daemon thread, for
    a caller with other work before :func:`train` - reading its data: most of it is Numba's own
    start-up (~0.3 s a process, ~0.5 s with three ranks on two cores), which would otherwise come
    between the data and the first update. :func:`train` loads what is not loaded yet (Numba's
    compiler lock makes the two safe together)."""
    from .server import warm_up_kernels

    t = threading.Thread(target=warm_up_kernels, name="dpsgd-warm-up", daemon=True)
    t.start()
    return t


#: tag of :func:`scatter_from_root`'s messages (sent before :func:`train`, apart from its tags)
SCATTER_TAG = 7_301
#: bytes per message of :func:`scatter_from_root` (an MPI count is a C int)
SCATTER_CHUNK = 1 << 30
#: arrays per rank :func:`scatter_from_root` carries at most
SCATTER_MAX_ARRAYS = 8


def scatter_from_root(parts: list | None) -> list[np.ndarray]:
    """Rank 0 gives every rank r its arrays ``parts[r]`` (a list of 1-d arrays, any numeric dtype
    and size); every rank calls it and returns its own list (rank 0: ``parts[0]``; one process:
    ``parts[0]``). Point-to-point messages without pickle, 1 GiB at most each. The other ranks
    wait for rank 0 politely (it may be reading meanwhile: a rank blocked in MPI_Recv spins a core
    an oversubscribed rank 0 needs), then drive the transfer itself (over a network path a large
    message advances only while its receiver calls into MPI)."""
    comm = get_comm()
    if comm is None:
        return list(parts[0])
    if comm.Get_rank() == 0:
        post_scatter(parts).wait()
        return list(parts[0])
    head = np.zeros(1 + 2 * SCATTER_MAX_ARRAYS, np.int64)  # count, then (dtype char, elements) each
    T.wait(comm.Irecv(head, source=0, tag=SCATTER_TAG))
    out = []
    for i in range(int(head[0])):
        a = np.empty(int(head[2 + 2 * i]), np.dtype(chr(int(head[1 + 2 * i]))))
        for piece in _chunks(a):
            T.wait(comm.Irecv(piece, source=0, tag=SCATTER_TAG), spin=float("inf"))
        out.append(a)
    return out


class PostedScatter:
    """Rank 0's sends of one :func:`scatter_from_root` call, under way (:func:`post_scatter`)."""

    def __init__(self, reqs: list, keep: list):
        self.reqs, self.keep = reqs, keep  # (the arrays stay alive until the sends complete)

    def wait(self) -> None:
        """Wait for the sends, politely: over shared memory the receivers copy, and need the cores."""
        while self.reqs:
            T.wait(self.reqs.pop(0))
        self.keep = []


def post_scatter(parts: list) -> PostedScatter:
    """Rank 0's half of :func:`scatter_from_root`: post the sends of every other rank's arrays
    ``parts[r]`` and return without waiting for them (the arrays must not change until
    :meth:`PostedScatter.wait` returns); the other ranks call ``scatter_from_root(None)`` as
    usual. A rank that sends a stream of parts, each while it computes the next, posts one and
    waits for the one before."""
    comm = get_comm()
    size = comm.Get_size()
    if len(parts) != size or any(len(p) > SCATTER_MAX_ARRAYS for p in parts):
        raise ValueError(f"scatter_from_root: {len(parts)} parts for {size} ranks, at most "
                         f"{SCATTER_MAX_ARRAYS} arrays each")
    reqs, keep = [], []
    for r in range(1, size):
        arrays = [np.ascontiguousarray(a).reshape(-1) for a in parts[r]]
        h = np.zeros(1 + 2 * SCATTER_MAX_ARRAYS, np.int64)
        h[0] = len(arrays)
        for i, a in enumerate(arrays):
            h[1 + 2 * i], h[2 + 2 * i] = ord(a.dtype.char), a.size
        keep.append(h)
        reqs.append(comm.Isend(h, dest=r, tag=SCATTER_TAG))
        for a in arrays:
            for piece in _chunks(a):
                keep.append(piece)
                reqs.append(comm.Isend(piece, dest=r, tag=SCATTER_TAG))
    return PostedScatter(reqs, keep)


def _chunks(a: np.ndarray) -> list[np.ndarray]:
    """Views of the 1-d array ``a`` of at most :data:`SCATTER_CHUNK` bytes each (one for an empty array)."""
    step = max(1, SCATTER_CHUNK // max(1, a.itemsize))
    return [a[i:i + step] for i in range(0, max(a.size, 1), step)]


@dataclass
class TrainResult:
    params: np.ndarray | None  # the final global parameters (every rank)
    metrics: dict = field(default_factory=dict)  # filled on the root rank
    rank: int = 0
    is_root: bool = True


def convergence_warnings(config: TrainConfig, n_workers: int, threads: int) -> list[str]:
    """The DPSGD guarantee (Mohamad et al.) needs threads <= T^(1/4) and workers <= T^(1/2)."""
    t = config.total_updates
    out = []
    if threads > t ** 0.25:
        out.append(f"{threads} threads per rank exceed T^(1/4) = {t ** 0.25:.1f} for T = {t} updates: "
                   "outside the DPSGD convergence guarantee")
    if n_workers > t ** 0.5:
        out.append(f"{n_workers} workers exceed T^(1/2) = {t ** 0.5:.1f} for T = {t} updates: "
                   "outside the DPSGD convergence guarantee")
    return out


def read_only(w: np.ndarray) -> np.ndarray:
    """A read-only view of ``w``: what an evaluation gets of a model it must not change."""
    v = w.view()
    v.flags.writeable = False
    return v


def _initial_params_of_rank(algorithm, config, comm, serving: bool) -> np.ndarray:
    """The initial parameters on a serving rank (one process, a server shard). A worker rank
    receives them with its hello's answer, so it learns only their number from rank 0 and holds
    zeros until then: at K 100, V 50k every worker drew 5M gamma variates for nothing (0.2 s a
    rank, on the cores rank 0 then needed to start serving). ConfigError (on every rank) unless
    ``init_params`` gives a non-empty 1-D float32 array."""
    w0 = error = None
    if serving:
        try:
            w0 = np.asarray(algorithm.init_params(np.random.default_rng(config.seed)))
            if w0.ndim != 1 or w0.dtype != np.float32 or w0.size == 0:
                raise ConfigError(f"{type(algorithm).__name__}.init_params must return a non-empty 1-D float32 "
                                  f"array, got {w0.dtype} {w0.shape}")
        except ConfigError as e:  # the algorithm's own, or the check's: every rank stops
            error = e
    if comm is None:
        if error is not None:
            raise error
        return w0
    n = np.array([-1 if error is not None or w0 is None else w0.size], np.int64)
    broadcast_from_root(n)
    if error is not None:
        raise error
    if n[0] < 0:
        raise ConfigError(f"{type(algorithm).__name__}.init_params failed on rank 0 (see its message)")
    return np.zeros(int(n[0]), np.float32) if w0 is None else w0


class Housekeeper:
    """Periodic work of a server shard: checkpoints, evaluation, progress bar."""

    def __init__(self, core: ServerCore, algorithm, config: TrainConfig, evaluate: bool, show_progress: bool,
                 meta: dict, background_eval: bool = False):
        self.core, self.alg, self.config = core, algorithm, config
        #: evaluate a snapshot of the model in a thread while the server goes on serving pushes
        #: (under MPI: an evaluation in the serving loop stalled every worker waiting for an answer)
        self.background_eval = background_eval
        self._eval_thread: threading.Thread | None = None
        self._eval_error: BaseException | None = None
        self._hist_lock = threading.Lock()
        self.evaluate = evaluate and config.eval_every is not None
        self.evaluate_updates = evaluate and config.eval_every_updates is not None
        self.next_eval_updates = config.eval_every_updates or 0
        self.history: list[dict] = []
        self.meta = meta
        now = time.perf_counter()
        self.next_ckpt = now + (config.checkpoint_every or float("inf"))
        self.next_eval = now
        self.checkpoints_written = 0
        self.eval_seconds = 0.0
        self.bar = None
        if show_progress:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=config.total_updates, unit="upd", dynamic_ncols=True,
                                initial=min(core.total_updates, config.total_updates))
            except ImportError:
                pass

    def __call__(self):
        self._raise_eval_error()
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(min(self.core.total_updates, self.config.total_updates) - self.bar.n)
        if self.evaluate and now >= self.next_eval:
            self.record_eval()
            self.next_eval = time.perf_counter() + self.config.eval_every
        if self.evaluate_updates and self.core.total_updates >= self.next_eval_updates:
            self.record_eval()
            every = self.config.eval_every_updates
            self.next_eval_updates = (self.core.total_updates // every + 1) * every
        if self.config.checkpoint_dir and now >= self.next_ckpt:
            self.write_checkpoint()
            self.next_ckpt = time.perf_counter() + self.config.checkpoint_every

    def evaluate_start(self):
        """Evaluate the model training starts from, in this thread, before any worker computes
        (in one process and under MPI alike: never overlapped with training, outside its clock)."""
        if not self.evaluate or self.core.model_broken:  # (evaluations every N updates start at N)
            return
        if self.config.eval_initial:
            self._evaluate(self._paused_model(), None, self.core.version, self.core.total_updates, background=False,
                           initial=True)
            self.core.last_push_time[:] = time.perf_counter()  # no worker has been heard yet: none is silent
        self.next_eval = time.perf_counter() + self.config.eval_every  # (without: the first after eval_every)

    def record_eval(self):
        if self.core.model_broken:
            return
        if not self.background_eval:
            self._evaluate(self._paused_model(), None, self.core.version, self.core.total_updates, background=False)
            return
        if self._eval_thread is not None and self._eval_thread.is_alive():
            return  # the previous evaluation is still running: this one is skipped
        args = (self.core.w.copy(), self.core.elapsed, self.core.version, self.core.total_updates, True)
        self._eval_thread = threading.Thread(target=self._evaluate, args=args, name="dpsgd-eval", daemon=True)
        self._eval_thread.start()

    def _paused_model(self) -> np.ndarray:
        """The model to evaluate while serving waits for the evaluation: the server's own array,
        read-only, not a copy (nothing writes it before the evaluation returns: pushes are applied
        in the thread that evaluates; one model's size less at the peak, 200 MB at K 1000, V 50k for
        LDA). A background evaluation gets a copy instead."""
        return read_only(self.core.w)

    def _evaluate(self, w, seconds, version, updates, background: bool, initial: bool = False):
        """One history row: the model's metrics at ``updates``; ``seconds`` is when the snapshot was
        taken (background) or, when None, the time after the evaluation (the serving paused meanwhile).
        ``initial``: the evaluation before training began."""
        t0 = time.perf_counter()
        try:
            m = self.alg.evaluate(w)
        except BaseException as e:  # noqa: BLE001 - raised again in the serving thread
            if not background:
                raise
            self._eval_error = e
            return
        dt = time.perf_counter() - t0
        row = {"seconds": self.core.elapsed if seconds is None else seconds, "version": version, "updates": updates}
        row.update({k: float(v) for k, v in m.items()})
        row["eval_duration"] = dt
        row["eval_background"] = float(background)
        row["eval_initial"] = float(initial)
        with self._hist_lock:
            self.eval_seconds += dt
            self.history.append(row)

    def _raise_eval_error(self):
        if self._eval_error is not None:
            e, self._eval_error = self._eval_error, None
            raise e

    #: callable returning more arrays to checkpoint (one process: the worker's optimizer statistics)
    extra_arrays = None

    def write_checkpoint(self):
        if self.core.model_broken:
            return  # keep the last good checkpoint rather than replace it by a model full of inf/NaN
        meta = dict(self.meta, **self.core.state_scalars())
        arrays = self.core.state_arrays()
        if self.extra_arrays is not None:
            arrays.update(self.extra_arrays())
        hook = getattr(self.alg, "checkpoint_arrays", None)
        if hook is not None and self.core.shard == 0:  # the algorithm's own state, with the root's shard
            arrays.update({ALG_PREFIX + k: np.asarray(v) for k, v in hook().items()})
        ckpt.save_npz(ckpt.shard_path(self.config.checkpoint_dir, self.core.shard), arrays, meta)
        self.checkpoints_written += 1

    def close(self):
        if self._eval_thread is not None:
            self._eval_thread.join()
        self._raise_eval_error()
        if self.bar is not None:
            self(), self.bar.close()


def _resume(core: ServerCore, config: TrainConfig, meta: dict, warn) -> dict[str, np.ndarray]:
    """Restore ``core`` from the checkpoint in ``config.resume``; returns the checkpoint's arrays."""
    arrays, saved = ckpt.load_latest(config.resume, core.shard, warn=warn)
    for key in ("n_params", "n_servers"):
        if saved.get(key) != meta[key]:
            raise ckpt.CheckpointError(
                f"{ckpt.shard_path(config.resume, core.shard)}: saved with {key}={saved.get(key)}, "
                f"this run has {key}={meta[key]}"
            )
    try:
        core.load_state(arrays, saved)
    except (ValueError, KeyError) as e:
        raise ckpt.CheckpointError(f"{ckpt.shard_path(config.resume, core.shard)}: {e}") from None
    return arrays


#: prefix of the algorithm's own arrays (``checkpoint_arrays``) in the root shard's checkpoint
ALG_PREFIX = "alg_"


def _tell_resumed(algorithm, core: ServerCore, saved: dict) -> None:
    restore = getattr(algorithm, "restore_arrays", None)
    if restore is not None:
        restore({k[len(ALG_PREFIX):]: v for k, v in saved.items() if k.startswith(ALG_PREFIX)})
    hook = getattr(algorithm, "resumed", None)
    if hook is not None:
        hook(int(core.total_updates), float(core.elapsed_offset))


#: what each worker rank reports to rank 0 at the end (one float64 each, gathered in this order)
WORKER_STATS = ("local_updates", "seconds", "rejected_seen", "threads", "pushes", "bytes_pushed", "bytes_pulled",
                "sparse_pushes", "exchange_wait_seconds", "overlap", "peak_rss_mb", "cpu_seconds",
                "first_update_unix")


def train(algorithm, config: TrainConfig | None = None) -> TrainResult:
    """Train ``algorithm`` (see :mod:`dpsgd.plugin`) with ``config``; returns the final model."""
    config = config or TrainConfig()
    comm = get_comm()
    size = comm.Get_size() if comm is not None else 1
    rank = comm.Get_rank() if comm is not None else 0
    config.validate(size)
    n_servers = config.n_servers if comm is not None else 1
    n_workers = size - n_servers if comm is not None else 1
    if config.threads is None:
        config.threads = default_threads(ranks_on_this_node(size))
    if rank == 0:
        for msg in convergence_warnings(config, n_workers, config.threads):
            warnings.warn(msg, stacklevel=2)
    w0 = _initial_params_of_rank(algorithm, config, comm, rank < n_servers)
    block = getattr(algorithm, "push_block", None)
    if block is not None and (int(block) != block or block < 1 or w0.size % int(block)):
        raise ConfigError(f"{type(algorithm).__name__}.push_block = {block!r} must be a positive integer "
                          f"that divides the {w0.size} parameters")
    meta = {"n_params": w0.size, "n_servers": n_servers, "config": config.to_dict(),
            "algorithm": type(algorithm).__name__, "seed": config.seed}
    handed = [w0]
    del w0  # the server's (or the worker's) copy replaces it: one model's size less for the whole run
    if comm is None:
        return _train_one_process(algorithm, config, handed, meta)
    return _train_mpi(comm, algorithm, config, handed, meta, n_servers, block)


def _server_shard(algorithm, config, w, n_workers, meta, *, shard=0, block=None, is_root=True, **hk_kw):
    """A server shard's state and periodic work: ServerCore (resumed when asked) and its Housekeeper.
    Returns ``(core, housekeeper, checkpoint arrays or None)``."""
    core = ServerCore(w, config, n_workers, shard=shard, block=block)
    # a worker that any shard tells to stop leaves the other shards (DONE): they need not agree
    core.stop_hook = getattr(algorithm, "should_stop", None)
    saved = None
    if config.resume:
        saved = _resume(core, config, meta, warn=print if is_root else (lambda *_: None))
        if is_root:
            _tell_resumed(algorithm, core, saved)
    hk = Housekeeper(core, algorithm, config, meta=meta, **hk_kw)
    return core, hk, saved


def _train_one_process(algorithm, config, handed: list, meta) -> TrainResult:
    """``handed``: ``[w0]``, emptied here so that the initial parameters are freed once the server
    holds its copy."""
    t_start = time.perf_counter()
    core, hk, saved = _server_shard(algorithm, config, handed.pop(), 1, meta, evaluate=True,
                                    show_progress=config.progress)
    # the one process does the server's periodic work too, after each push
    worker = Worker(algorithm, config, LocalChannel(core, housekeeping=hk), 0, 1, core.w)
    # the worker's optimizer statistics (RMSprop/Adam) go into the checkpoints and come back on resume
    hk.extra_arrays = worker.opt.state_arrays
    if saved is not None and not worker.opt.load_state_arrays(saved) and worker.opt.state_arrays():
        print(f"dpsgd: {config.resume} holds no {config.local_optimizer} statistics: they start afresh")
    hk.evaluate_start()
    try:
        wstats = worker.run()
    finally:
        hk.close()
    cpu = _training_cpu(worker)
    if config.checkpoint_dir:
        hk.write_checkpoint()
    worker_fatal = worker.fatal
    del worker  # its four model-sized buffers, before the final evaluation needs memory
    params = core.w  # training is over: nothing writes the server's array any more
    metrics = _root_metrics(core, hk, [wstats], config, 1, t_start, algorithm, params)
    metrics["peak_rss_mb_per_rank"] = [peak_rss_mb()]
    metrics["cpu_seconds_per_rank"] = [cpu]
    if core.fatal or worker_fatal:
        raise FatalRunError(core.fatal or "stopped by the server")
    return TrainResult(params, metrics, 0, True)


def _train_mpi(comm, algorithm, config, handed: list, meta, n_servers, block) -> TrainResult:
    """``handed``: ``[w0]``, emptied here: the initial parameters are freed once the rank's server
    shard or worker holds its copy (they stayed for the whole run: 200 MB a rank at K 1000, V 50k
    for LDA)."""
    t_start = time.perf_counter()
    w0 = handed.pop()
    size, rank = comm.Get_size(), comm.Get_rank()
    n_workers, is_root, n = size - n_servers, rank == 0, w0.size
    rank_map = _announce_ranks(comm, n_servers)
    local = ranks_on_this_node(size)
    T.set_spin(local * (config.threads or default_threads(local)) <= available_cores())
    bounds = T.shard_bounds(n, n_servers, int(block or 1))
    stats = np.zeros(len(WORKER_STATS), np.float64)
    core = hk = None
    if rank < n_servers:
        core, hk, _ = _server_shard(algorithm, config, w0[bounds[rank]:bounds[rank + 1]], n_workers, meta,
                                    shard=rank, block=block, is_root=is_root, evaluate=(n_servers == 1),
                                    show_progress=config.progress and is_root, background_eval=True)
        del w0
        hk.evaluate_start()  # the workers wait for their hello's answer meanwhile
        cpu0 = time.process_time()  # CPU seconds of this rank's training (all its threads)
        try:
            serve(comm, core, list(range(n_servers, size)), housekeeping=hk)
        finally:
            hk.close()
        if config.checkpoint_dir:
            hk.write_checkpoint()
        fatal = core.fatal
        if core.reported_silent and fatal:
            # a silent worker would never join the final collectives: end here (the CLI aborts the job)
            from . import deathwatch

            deathwatch.disarm()
            raise FatalRunError(fatal)
    else:
        channel = MPIChannel(comm, n_servers, n, block)
        worker = Worker(algorithm, config, channel, rank - n_servers, n_workers, w0)
        del w0
        ws = dict(worker.run(), pushes=channel.pushes, bytes_pushed=channel.bytes_pushed,
                  bytes_pulled=channel.bytes_pulled, sparse_pushes=channel.sparse_pushes)
        stats[:] = [ws.get(k, 0.0) for k in WORKER_STATS]
        fatal = "stopped by the server (see the server rank's message)" if worker.fatal else None
    # every rank's CPU seconds of training, servers' too
    stats[WORKER_STATS.index("cpu_seconds")] = time.process_time() - cpu0 if core is not None else _training_cpu(worker)
    if core is None:
        del worker, channel  # their model-sized buffers, before the final model arrives here too
    params = _gather_final(comm, core, bounds, n_servers, n)
    stats[WORKER_STATS.index("peak_rss_mb")] = peak_rss_mb()
    all_stats = np.zeros((size, stats.size), np.float64) if is_root else None
    comm.Gather(stats, all_stats, root=0)
    metrics = {}
    if is_root:
        ws_ = [dict(zip(WORKER_STATS, r)) for r in all_stats[n_servers:]]
        wstats = [{"local_updates": int(w["local_updates"]), "seconds": float(w["seconds"]),
                   "rejected_seen": int(w["rejected_seen"]), "threads": int(w["threads"]),
                   "exchange_wait_seconds": float(w["exchange_wait_seconds"]), "overlap": bool(w["overlap"]),
                   "first_update_unix": float(w["first_update_unix"])}
                  for w in ws_]
        metrics = _root_metrics(core, hk, wstats, config, n_workers, t_start, algorithm, params)
        pushes = max(sum(w["pushes"] for w in ws_), 1.0)
        metrics.update(
            n_servers=n_servers, ranks=rank_map, dense_push_bytes=T.HEADER_BYTES * n_servers + 4 * n,
            push_bytes_mean=float(sum(w["bytes_pushed"] for w in ws_) / pushes),  # every shard's part of one push
            pull_bytes_mean=float(sum(w["bytes_pulled"] for w in ws_) / pushes),
            sparse_pushes=int(sum(w["sparse_pushes"] for w in ws_)),
            peak_rss_mb_per_rank=[float(x) for x in all_stats[:, WORKER_STATS.index("peak_rss_mb")]],
            cpu_seconds_per_rank=[float(x) for x in all_stats[:, WORKER_STATS.index("cpu_seconds")]])
    from . import deathwatch

    deathwatch.disarm()  # this rank ends normally, or reports its own error next
    if fatal:
        raise FatalRunError(fatal, secondary=rank >= n_servers)
    return TrainResult(params, metrics, rank, is_root)


def _gather_final(comm, core, bounds, n_servers: int, n: int) -> np.ndarray:
    """The final model assembled on rank 0 from the server shards, then given to every rank."""
    rank = comm.Get_rank()
    params = np.empty(n, np.float32)
    if rank == 0:
        params[bounds[0]:bounds[1]] = core.w
        for s in range(1, n_servers):
            comm.Recv(params[bounds[s]:bounds[s + 1]], source=s, tag=T.TAG_FINAL)
    elif rank < n_servers:
        comm.Send(core.w, dest=0, tag=T.TAG_FINAL)
    comm.Bcast(params, root=0)
    return params


def _announce_ranks(comm, n_servers: int) -> list[dict] | None:
    """Rank 0 prints which PID plays which role, one line on stderr; every rank starts its
    :mod:`deathwatch` (which names the rank if it is killed). Returns the table on rank 0.

    When a rank dies by a signal (``kill -9``, the OOM killer) the launcher kills the other
    ranks at once, so none of them can say which rank it was: the watcher does, and this line
    maps any PID the launcher names to a rank and role.
    """
    import socket
    import sys

    from . import deathwatch

    size, me = comm.Get_size(), comm.Get_rank()
    mine = np.zeros(72, np.uint8)  # pid (8 bytes) + host name (64 bytes), fixed size: no pickle
    mine[:8] = np.frombuffer(np.int64(os.getpid()).tobytes(), np.uint8)
    host = socket.gethostname().encode()[:64]
    mine[8:8 + len(host)] = np.frombuffer(host, np.uint8)
    table = np.zeros((size, 72), np.uint8)
    comm.Allgather(mine, table)
    out = []
    for r in range(size):
        role = ("server" if n_servers == 1 else f"server shard {r}") if r < n_servers else f"worker {r - n_servers}"
        out.append({"rank": r, "role": role, "pid": int(table[r, :8].view(np.int64)[0]),
                    "host": table[r, 8:].tobytes().rstrip(b"\0").decode(errors="replace")})
    me_ = out[me]
    t0 = np.array([time.time()], np.float64)
    comm.Bcast(t0, root=0)  # rank 0's pid and clock: one id per job
    job = f"{out[0]['host']}-{out[0]['pid']}-{int(t0[0] * 1e6)}"
    deathwatch.start(me, f"{me_['role']}, pid {me_['pid']} on {me_['host']}", job)
    if me != 0:
        return None
    print("dpsgd ranks: " + ", ".join(f"rank {d['rank']} = {d['role']} (pid {d['pid']} on {d['host']})"
                                      for d in out), file=sys.stderr, flush=True)
    return out


def process_start_unix() -> float:
    """``time.time()`` when this process started (Linux ``/proc``; nan elsewhere): what the
    interpreter and the imports cost before a command's own code runs."""
    try:
        now = time.time()
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22: start, ticks after boot
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])  # seconds since boot (btime has 1 s steps only)
        return now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set so far (MB of 2^20 bytes), 0 where unknown.

    Linux: ``VmHWM`` of /proc/self/status. Not getrusage's ``ru_maxrss``: a process started by
    another (fork + exec) inherits that one's peak there - a `dpsgd lda` run launched by a
    benchmark that had built its 100k-document corpus in memory reported 1,466 MB, its own peak
    being ~450 MB. Elsewhere ``ru_maxrss`` (kB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1 << 20 if sys.platform == "darwin" else 1024.0)
    except (ImportError, OSError):
        return 0.0


def paused_eval_seconds(history) -> float:
    """Seconds of the evaluations in ``history`` that paused training: neither those of a
    background thread (training went on) nor the one before training began (not in its clock)."""
    return float(sum(r["eval_duration"] for r in history
                     if not r.get("eval_background") and not r.get("eval_initial")))


def _training_cpu(worker) -> float:
    """CPU seconds of this process (all its threads) since the worker's first update began
    (0 when it made none): set-up before training is not counted, as by the training clocks."""
    return time.process_time() - worker.first_update_cpu if worker.first_update_cpu is not None else 0.0


def _root_metrics(core, hk, wstats, config, n_workers, t_start, algorithm, params) -> dict:
    wall = time.perf_counter() - t_start
    m = core.metrics()
    starts = [w["first_update_unix"] for w in wstats if math.isfinite(w["first_update_unix"])]
    first = min(starts) if starts else float("nan")
    m.update({
        "wall_seconds": wall,
        # time.time() when the first update of any worker began (nan when none did): the start of
        # training proper, after every rank's set-up (an algorithm's training clock can start here)
        "first_update_unix": first,
        # from then to the end of training (evaluations included: see paused_eval_seconds)
        "training_wall_seconds": time.time() - first,
        # evaluations during that time that paused training (those of a background thread did not)
        "paused_eval_seconds": paused_eval_seconds(hk.history),
        "n_workers": n_workers,
        "threads_per_worker": config.threads,
        "rule": config.rule.name,
        "local_updates_per_worker": [w["local_updates"] for w in wstats],
        # seconds each worker's computing thread(s) spent pushing/pulling or waiting for an answer
        "exchange_wait_seconds_per_worker": [w["exchange_wait_seconds"] for w in wstats],
        "overlap": any(w["overlap"] for w in wstats),  # pipelined (one-thread) workers
        "updates_per_second": sum(w["local_updates"] for w in wstats) / max(wall, 1e-9),
        "samples_per_second": sum(w["local_updates"] for w in wstats)
        * getattr(algorithm, "samples_per_update", 1) / max(wall, 1e-9),
        "history": hk.history,
        "checkpoints_written": hk.checkpoints_written,
        "eval_seconds": hk.eval_seconds,
    })
    if config.final_eval and hasattr(algorithm, "evaluate") and all_finite(params):
        t0 = time.perf_counter()
        final = getattr(algorithm, "evaluate_final", algorithm.evaluate)(read_only(params))
        m["final"] = {k: float(v) for k, v in (final or {}).items()}
        m["final_eval_seconds"] = time.perf_counter() - t0
    return m


def write_metrics(path: str, metrics: dict) -> None:
    """metrics.json, written atomically."""
    ckpt.atomic_write_text(path, json.dumps(metrics, indent=1, default=float))
