"""The one interface between the framework and an algorithm.

An algorithm is any object with these methods (duck typing; subclass :class:`Algorithm`
for the defaults)::

    init_params(rng)                  -> 1-D float32 array: the initial flat parameters
    make_thread_state(ctx)            -> anything: this thread's data shard, buffers, model objects
    compute_update(params, state, ctx)-> 1-D float32 array g, same length as params
                                         (or, with ``push_block``, its non-zero blocks: SparseBlocks)

The framework owns everything else: the step-size schedule ``lr_t``, the lock-free
application ``params -= lr_t * g`` (or a shared RMSprop/Adam step) by every thread of a
rank into the rank's one flat buffer, pushing the accumulated change every ``local_steps``
updates, pulling, the server's update rule, logging and checkpoints.

``params`` handed to ``compute_update`` is the rank's live shared buffer: other threads
write to it while you read it (Hogwild). Copy what must stay consistent for one update.
Treat it as read-only: a one-thread worker with plain SGD steps (``local_steps`` 1) hands over
the model it pulled - in one process the server's own array - and pushes ``g`` itself.
Return a buffer of your own (reused between updates is fine), never ``params`` or a view of it.

Worked example (least squares, see :mod:`dpsgd.problems` for more)::

    import numpy as np, dpsgd

    class LeastSquares(dpsgd.Algorithm):
        def __init__(self, X, y, batch=32):
            self.X, self.y, self.batch = X.astype(np.float32), y.astype(np.float32), batch

        def init_params(self, rng):
            return np.zeros(self.X.shape[1], np.float32)

        def make_thread_state(self, ctx):
            # each thread of each worker reads only its own shard of the rows
            return ctx.shard(len(self.X))

        def compute_update(self, params, rows, ctx):
            i = ctx.rng.choice(rows, self.batch)
            X, y = self.X[i], self.y[i]
            return X.T @ (X @ params - y) / self.batch

        def evaluate(self, params):           # optional: run on the server's model
            return {"mse": float(np.mean((self.X @ params - self.y) ** 2))}

    result = dpsgd.train(LeastSquares(X, y), dpsgd.TrainConfig(lr=0.05, total_updates=2000))
    result.params      # the final global parameters (on the root rank; None elsewhere)

The same script runs in one process (threads only) or under ``mpiexec -n N python -m mpi4py
script.py`` (rank 0 serves, ranks 1..N-1 work).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .transport import SparseBlocks, valid_block_ids


@dataclass
class ThreadContext:
    """Who a thread is, and its private random stream."""

    worker: int  # 0-based worker index (ranks 1..N-1 map to 0..N-2; 0 in one process)
    n_workers: int
    thread: int  # 0-based thread index inside the worker
    n_threads: int
    seed: int
    rng: np.random.Generator = field(repr=False, default=None)
    #: number of updates this thread has computed so far (set by the framework)
    step: int = 0
    #: the step size the framework will use for this thread's next update
    lr: float = 0.0

    def __post_init__(self):
        if self.rng is None:
            self.rng = np.random.default_rng([self.seed, self.worker, self.thread])

    @property
    def global_thread(self) -> int:
        return self.worker * self.n_threads + self.thread

    @property
    def n_global_threads(self) -> int:
        return self.n_workers * self.n_threads

    def shard(self, n_items: int) -> np.ndarray:
        """Indices ``0..n_items-1`` that belong to this thread (a contiguous, balanced split)."""
        bounds = np.linspace(0, n_items, self.n_global_threads + 1).astype(np.int64)
        g = self.global_thread
        return np.arange(bounds[g], bounds[g + 1])


class Algorithm:
    """Base class with the optional hooks' defaults."""

    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """The initial flat float32 parameters, drawn from ``rng`` (seeded by the config). Called
        in one process and on the server ranks under MPI; a worker rank receives them with the
        answer to its hello (its ``make_thread_state`` must not depend on this call)."""
        raise NotImplementedError

    def make_thread_state(self, ctx: ThreadContext):
        return None

    def compute_update(self, params: np.ndarray, state, ctx: ThreadContext) -> np.ndarray:
        raise NotImplementedError

    def evaluate(self, params: np.ndarray) -> dict:
        """Metrics of a parameter vector (called on the server's model); optional."""
        return {}

    def evaluate_final(self, params: np.ndarray) -> dict:
        """The metrics of the final model, after training (``evaluate`` unless overridden: the
        training threads are done, so an algorithm may spend every core on it); optional."""
        return self.evaluate(params)

    def should_stop(self) -> bool:
        """True to end the run early (e.g. a target reached); polled by the server on every push.

        It is asked on the process that serves (rank 0 under MPI, the one process otherwise):
        set the flag from ``evaluate`` (which runs there) or, in one process, from anywhere.
        Keep it cheap: it is called on the server's hot path.
        """
        return False

    def resumed(self, total_updates: int, seconds: float) -> None:
        """Called on the serving process after ``--resume`` restored a checkpoint taken after
        ``total_updates`` updates and ``seconds`` of training, before any update; optional
        (an algorithm that counts samples or keeps a clock continues them from here)."""

    def checkpoint_arrays(self) -> dict:
        """Arrays of the algorithm's own state (a clock, counters) to keep in the checkpoints,
        on the serving process; optional. They come back through :meth:`restore_arrays`."""
        return {}

    def restore_arrays(self, arrays: dict) -> None:
        """Called on the serving process after ``--resume``, before :meth:`resumed`, with the
        arrays :meth:`checkpoint_arrays` returned when the checkpoint was taken (empty when the
        checkpoint has none, e.g. one written by an older version); optional."""

    #: samples (documents, env steps, examples) one compute_update consumes, for throughput
    samples_per_update: int = 1

    #: block size B when the parameters are blocks of B values of which a push changes few
    #: (one word's K topic weights, one embedding row): such pushes go over MPI as the changed
    #: blocks only. Must divide the number of parameters. None: dense pushes.
    #: ``compute_update`` may then return those blocks itself, as a :class:`SparseBlocks`
    #: (``payload``: nb block indices, strictly increasing, as int32 in float32 slots, then their
    #: nb x B values): a worker sends it as it is, without scanning a dense g for the changed
    #: blocks and copying them (4 ms a push at V 50k, K 100); the framework scatters it into a
    #: dense buffer where it needs one (one process, several server shards, local optimizers).
    push_block: int | None = None


def checked_update(g, n: int, algorithm, error=TypeError):
    """``g`` when it is what ``compute_update`` must return (a float32 array of shape (n,), or
    :class:`SparseBlocks` of the algorithm's ``push_block`` with valid indices), else ``error``
    with a message naming the algorithm: the one check of the worker and the simulator."""
    if isinstance(g, SparseBlocks):
        block, name = getattr(algorithm, "push_block", None), type(algorithm).__name__
        p = g.payload
        if not block or g.block != block:
            raise error(f"{name}.compute_update returned SparseBlocks of block {g.block}; "
                        f"its push_block is {block!r}")
        if (not isinstance(p, np.ndarray) or p.dtype != np.float32 or p.ndim != 1 or g.nb < 0
                or g.nb * (block + 1) > p.size or not valid_block_ids(p, int(g.nb), n // block)):
            raise error(f"{name}.compute_update returned invalid SparseBlocks: a float32 payload of nb "
                        f"strictly increasing block indices below {n // block}, then nb x {block} values, is expected")
        return g
    if not isinstance(g, np.ndarray) or g.dtype != np.float32 or g.shape != (n,):
        raise error(
            f"{type(algorithm).__name__}.compute_update must return a float32 array of shape ({n},), "
            f"got {getattr(g, 'dtype', type(g))} {getattr(g, 'shape', '')}"
        )
    return g
