"""The asynchrony simulator: N virtual workers in one process, no MPI, no threads.

Model (the paper's, and what one single-threaded MPI worker rank does with ``local_steps=1``):

* every virtual worker ``m`` holds the model it last pulled (``w_bak[m]``, with the server
  version and update count it saw) and computes its gradient at that copy, with its own
  ``ThreadContext`` (the same random stream ``[seed, m, 0, 0]`` as thread 0 of MPI worker m);
* how long each gradient takes is drawn from a delay distribution; an event queue ordered by
  finish time decides which worker reaches the server next:

  - ``"constant"``  every gradient takes 1: round robin, staleness exactly N-1 after the first
    round (worker m's first push has staleness m);
  - ``"uniform"``   U(1 - a, 1 + a) with ``a = delay_param`` (default 0.5, in [0, 1));
  - ``"geometric"`` Geometric(p) whole time units with ``p = delay_param`` (default 0.5),
    ties served in first-come order;
  - ``"exponential"`` Exp(1) (memoryless, the heaviest spread);
  - a sequence of worker ids (or a :class:`ReplayLog`): the push order logged by a real run's
    server, replayed exactly.

  ``slowdown`` (one factor per worker) multiplies the drawn times: heterogeneous workers.
* the server applies ``UpdateRule.apply(w, g, m, lr)`` (which also refreshes ``w_bak[m]``
  for the DC rules), then the worker pulls the new model. Staleness of a push = server version
  at apply time minus the version the worker pulled;
* ``ssgd``: every round all N workers compute at the same ``w``; the server averages
  (``add_to_round``/``apply_round``); ``sgd``: one worker, staleness 0.

Step sizes follow :func:`dpsgd.config.lr_at` evaluated, as in the real worker, at the number
of gradient computations the worker knew of when it pulled. With ``local_steps = k > 1`` the
worker makes k local steps on its copy (plain SGD unless ``local_optimizer`` says otherwise) and pushes the pseudo-gradient
``(w_pulled - w_local) / lr`` with ``lr`` the step size of its last local update, as the MPI
worker does (``local_optimizer``: RMSprop/Adam local steps, as the worker's). ``total_updates`` counts gradient
computations of all workers (so every method gets the same number).

Everything is deterministic for a seed. Replaying a real MPI run (one thread per worker,
``local_steps=1``) with its push order and its workers' first-pull versions reproduces the
run's staleness exactly and its model to float32 rounding (measured: max |w_sim - w_mpi| about
1e-6 after 337 pushes of softmax regression on digits, for asgd, dc-asgd-c and dc-asgd-a).
"""

from __future__ import annotations

import csv
import heapq
import json
import os
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from .config import TrainConfig, lr_at
from .plugin import ThreadContext, checked_update
from .rules import RuleConfig, UpdateRule, all_finite
from .transport import as_dense

__all__ = ["DELAYS", "ReplayLog", "SimResult", "load_staleness_log", "simulate"]

DELAYS = ("constant", "uniform", "geometric", "exponential")


class ReplayLog(NamedTuple):
    """The push order of a real run (0-based worker ids, as the server applied them).

    ``hello_versions[m]``, when known, is the server version at worker m's first pull (the
    MPI worker also seeds its random stream with it). By default every worker is assumed to
    have pulled version 0: when a worker joined late, its first push's staleness, and from
    then on its minibatches and so the model, differ from the real run's.
    """

    push_workers: np.ndarray
    hello_versions: np.ndarray | None = None


@dataclass
class SimResult:
    params: np.ndarray  # final global model (float32)
    history: list = field(default_factory=list)  # [(updates, algorithm.evaluate(w))]
    staleness: np.ndarray = None  # per push, in apply order
    push_workers: np.ndarray = None  # worker id per push, in apply order
    pushes: int = 0
    updates: int = 0  # gradient computations incorporated
    version: int = 0  # updates applied to the global model (pushes, or rounds for ssgd)
    dropped: int = 0  # pushes dropped for max_staleness
    sim_time: float = 0.0  # simulated time (units of one mean gradient computation)
    diverged: bool = False  # the model became non-finite (the run stopped there)
    rule: str = ""
    n_workers: int = 1

    @property
    def final(self) -> dict:
        return self.history[-1][1] if self.history else {}

    def staleness_stats(self) -> dict:
        s = self.staleness
        if s is None or s.size == 0:
            return {"staleness_mean": 0.0, "staleness_max": 0, "staleness_hist": {}}
        values, counts = np.unique(s, return_counts=True)
        return {"staleness_mean": float(s.mean()), "staleness_max": int(s.max()),
                "staleness_hist": {int(v): int(c) for v, c in zip(values, counts)}}

    def to_log(self) -> dict:
        """The replay log of this run (the format :func:`load_staleness_log` reads)."""
        return {"push_workers": [int(m) for m in self.push_workers]}


# --------------------------------------------------------------------------- replay logs


def load_staleness_log(path: str | os.PathLike) -> ReplayLog:
    """Read the push order of a run.

    Formats: a JSON object with key ``"push_workers"`` (a list of 0-based worker ids in the
    order the server applied them; the MPI server writes it into ``metrics.json``) and,
    optionally, ``"hello_versions"``; a JSON list of ids; or a CSV/text file with one id per
    line or comma-separated (an optional non-numeric header line is skipped).
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    hello = None
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        data = json.loads(text)
        if isinstance(data, dict):
            if "push_workers" not in data:
                raise ValueError(f"{path}: no 'push_workers' key (keys: {', '.join(sorted(data))})")
            ids = data["push_workers"]
            hello = data.get("hello_versions")
        else:
            ids = data
    else:
        ids = []
        for i, row in enumerate(csv.reader(text.splitlines())):
            cells = [c.strip() for c in row if c.strip()]
            if not cells:
                continue
            if i == 0 and not cells[0].lstrip("-").isdigit():
                continue  # header
            ids.extend(int(c) for c in cells)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{path}: worker ids must be >= 0")
    return ReplayLog(arr, None if hello is None else np.asarray(hello, np.int64))


# --------------------------------------------------------------------------- simulator


def _delay_sampler(delay, delay_param, rng, slowdown):
    if delay == "constant":
        def draw():
            return 1.0
    elif delay == "uniform":
        a = 0.5 if delay_param is None else float(delay_param)
        if not 0.0 <= a < 1.0:
            raise ValueError(f"uniform delay needs 0 <= delay_param < 1, got {a}")

        def draw():
            return float(rng.uniform(1.0 - a, 1.0 + a))
    elif delay == "geometric":
        p = 0.5 if delay_param is None else float(delay_param)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"geometric delay needs 0 < delay_param <= 1, got {p}")

        def draw():
            return float(rng.geometric(p))
    elif delay == "exponential":
        def draw():
            return float(rng.exponential(1.0))
    else:
        raise ValueError(f"unknown delay {delay!r}; choose {', '.join(DELAYS)} or a sequence of worker ids")
    if slowdown is None:
        return lambda m: draw()
    return lambda m: draw() * float(slowdown[m])


def simulate(algorithm, rule: RuleConfig | str, n_workers: int, *, lr: float,
             total_updates: int | None = None, schedule: str = "constant", tau0: float = 1.0,
             kappa: float = 0.0, delay="constant", delay_param: float | None = None,
             slowdown: Sequence[float] | None = None, local_steps: int = 1,
             max_staleness: int | None = None, seed: int = 0, eval_every: int | None = None,
             params0: np.ndarray | None = None, stop_on_nonfinite: bool = True,
             local_optimizer: str = "sgd", rms_alpha: float = 0.99, opt_eps: float = 1e-5,
             final_eval: bool = True, overlap: bool = False) -> SimResult:
    """Simulate ``n_workers`` asynchronous workers training ``algorithm`` under ``rule``.

    ``total_updates``: gradient computations of all workers together (required unless
    replaying). A replay always runs through the whole log, like the real server, which
    still applies the pushes in flight when it reaches ``total_updates``; there
    ``total_updates`` is only the horizon of the ``linear`` schedule (give the real run's
    value; default: the log's length x ``local_steps``). ``eval_every``:
    call ``algorithm.evaluate`` on the global model every that many gradient computations
    (and at the start and the end); ``final_eval`` evaluates the final model in any case
    (``.final``). ``params0``: initial model (default
    ``algorithm.init_params(np.random.default_rng(seed))``, as ``dpsgd.train`` does).
    ``local_optimizer`` (sgd, rmsprop, rmsprop_tf, adam; with ``rms_alpha``, ``opt_eps``): the
    rule of a worker's local steps, the MPI worker's :class:`dpsgd.hogwild.LocalOptimizer` (one
    per virtual worker, its statistics kept from push to push as a worker rank keeps them).
    ``overlap``: the pipelined worker of ``TrainConfig(overlap=True)`` - each worker computes its
    next ``local_steps`` updates while its push is in flight, on its local model before the merge
    (the same kernels as the worker rank: a replay of a real pipelined run reproduces it).
    """
    if isinstance(rule, str):
        rule = RuleConfig(name=rule)
    replay, total_updates = _validated(rule, n_workers, lr, schedule, local_steps, slowdown, delay, total_updates,
                                       eval_every, local_optimizer)
    if overlap and (rule.name == "ssgd" or max_staleness is not None):
        raise ValueError("overlap (pipelined workers) is modelled for the asynchronous rules without max_staleness")
    sim = _Simulation(algorithm, rule, int(n_workers), lr=float(lr), total_updates=total_updates,
                      sched=TrainConfig(lr=float(lr), schedule=schedule, tau0=tau0, kappa=kappa,
                                        total_updates=total_updates),
                      local_steps=int(local_steps), max_staleness=max_staleness, seed=seed, eval_every=eval_every,
                      params0=params0, stop_on_nonfinite=stop_on_nonfinite, replay=replay,
                      optimizer=(local_optimizer, rms_alpha, opt_eps), overlap=bool(overlap))
    sim.maybe_eval(force=True)
    if rule.name == "ssgd":
        sim.run_synchronous(delay, delay_param, slowdown)
    else:
        sim.run_asynchronous(delay, delay_param, slowdown)
    sim.maybe_eval(force=True, final=final_eval)
    res = sim.res
    res.staleness = np.asarray(sim.staleness, np.int64)
    res.push_workers = np.asarray(sim.push_workers, np.int64)
    return res


def _validated(rule, n_workers, lr, schedule, local_steps, slowdown, delay, total_updates, eval_every,
               local_optimizer):
    """Check simulate's arguments (ValueError); returns (replay log or None, total_updates)."""
    rule.validate(n_workers)
    if int(n_workers) < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    # the checks a real run makes (ConfigError is a ValueError): schedule, lr, local steps, optimizer
    TrainConfig(rule=rule, lr=lr, schedule=schedule, local_steps=local_steps, local_optimizer=local_optimizer,
                progress=False).validate()
    if slowdown is not None and len(slowdown) != n_workers:
        raise ValueError(f"slowdown needs one factor per worker ({n_workers}), got {len(slowdown)}")
    replay = None
    if not isinstance(delay, str):
        replay = delay if isinstance(delay, ReplayLog) else ReplayLog(np.asarray(delay, np.int64).reshape(-1))
        ids = replay.push_workers
        if ids.size and (ids.min() < 0 or ids.max() >= n_workers):
            raise ValueError(f"replayed worker ids must be in 0..{n_workers - 1}, got {ids.min()}..{ids.max()}")
        if rule.name == "ssgd":
            raise ValueError("replaying a push order needs an asynchronous rule, not ssgd")
        if total_updates is None:
            total_updates = int(ids.size) * int(local_steps)
    if total_updates is None or int(total_updates) < 1:
        raise ValueError(f"total_updates must be a positive integer, got {total_updates}")
    if eval_every is not None and int(eval_every) < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    return replay, int(total_updates)


#: the seed of the simulated delays' random stream (beside the run's seed)
DELAY_STREAM = 0xDE1A


class _Simulation:
    """The state of one simulated run and its steps (see :func:`simulate`)."""

    def __init__(self, algorithm, rule, n_workers, *, lr, total_updates, sched, local_steps, max_staleness, seed,
                 eval_every, params0, stop_on_nonfinite, replay, optimizer, overlap=False):
        from .hogwild import LocalOptimizer

        self.alg, self.rule, self.n_workers = algorithm, rule, n_workers
        self.total_updates, self.sched, self.local_steps = total_updates, sched, local_steps
        self.max_staleness, self.seed, self.eval_every = max_staleness, seed, eval_every
        self.stop_on_nonfinite, self.replay = stop_on_nonfinite, replay
        if params0 is None:
            params0 = algorithm.init_params(np.random.default_rng(seed))
        w = np.array(params0, dtype=np.float32, copy=True)
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"initial parameters must be a non-empty 1-D array, got shape {w.shape}")
        self.w, self.n = w, w.size
        self.upd = UpdateRule(rule, self.n, n_workers)
        self.hello = None
        if replay is not None and replay.hello_versions is not None:
            self.hello = np.asarray(replay.hello_versions, np.int64)
            if self.hello.shape != (n_workers,) or self.hello.min() < 0:
                raise ValueError(f"hello_versions needs {n_workers} entries >= 0, got {replay.hello_versions!r}")
        # the MPI worker of a fresh (not resumed) run seeds thread t with [seed, worker, t, 0]
        self.ctxs = [ThreadContext(worker=m, n_workers=n_workers, thread=0, n_threads=1, seed=seed,
                                   rng=np.random.default_rng([seed, m, 0, 0])) for m in range(n_workers)]
        self.states = [algorithm.make_thread_state(ctx) for ctx in self.ctxs]
        name, alpha, eps = optimizer
        # the worker rank's local optimizer (used for local_steps > 1, as the real worker does)
        self.opts = [LocalOptimizer(name, self.n, alpha, eps=eps) for _ in range(n_workers)]
        self.copies = np.empty((n_workers, self.n), np.float32)  # w_bak[m]: the model each worker pulled
        self.pulled_version = np.zeros(n_workers, np.int64)
        self.pulled_total = np.zeros(n_workers, np.int64)
        self.has_pulled = np.zeros(n_workers, bool)
        self.res = SimResult(params=w, rule=rule.name, n_workers=n_workers)
        self.staleness: list[int] = []
        self.push_workers: list[int] = []
        self.evaluate = getattr(algorithm, "evaluate", None)
        self.next_eval = 0
        self.overlap = overlap
        if overlap:  # each pipelined worker's rank buffer, snapshot and push in flight (see _apply_pipelined)
            self.local = np.empty((n_workers, self.n), np.float32)
            self.snaps = np.empty((n_workers, self.n), np.float32)
            self.pending: list = [None] * n_workers

    def maybe_eval(self, force=False, final=False):
        res = self.res
        if self.evaluate is None or (self.eval_every is None and not final):
            return
        if force or res.updates >= self.next_eval:
            if not res.history or res.history[-1][0] != res.updates:
                res.history.append((res.updates, dict(self.evaluate(self.w.copy()))))
            if self.eval_every is not None:
                while self.next_eval <= res.updates:
                    self.next_eval += int(self.eval_every)

    def pull(self, m):
        if self.overlap and not self.has_pulled[m]:
            self.local[m] = self.w  # the first pull (hello): the rank's buffer is the server's model
        self.copies[m] = self.w
        self.pulled_version[m] = self.res.version
        self.pulled_total[m] = self.res.updates
        self.has_pulled[m] = True
        self.upd.reset_worker(m, self.w)

    def compute(self, m, base: np.ndarray, known_total: int):
        """Worker m's push from the model ``base``: (gradient or pseudo-gradient, its lr)."""
        ctx, state, n = self.ctxs[m], self.states[m], self.n
        if self.local_steps == 1 and self.opts[m].name == "sgd":  # the plain gradient (the push is that to rounding)
            ctx.lr = lr_at(self.sched, known_total)
            g = as_dense(checked_update(self.alg.compute_update(base, state, ctx), n, self.alg), n)
            ctx.step += 1
            return g, ctx.lr
        local = base.copy()
        lr_push = self._local_updates(m, local, known_total)
        if lr_push == 0.0:
            return np.zeros(n, np.float32), 0.0
        return ((base - local) / np.float32(lr_push)).astype(np.float32), lr_push

    def finite_or_stop(self) -> bool:
        if self.stop_on_nonfinite and not all_finite(self.w):
            self.res.diverged = True
            return False
        return True

    def run_synchronous(self, delay, delay_param, slowdown):
        """SSGD: every round all workers compute at the same w; the server averages."""
        res = self.res
        draw = _delay_sampler(delay, delay_param, np.random.default_rng([self.seed, DELAY_STREAM]), slowdown)
        while res.updates < self.total_updates:
            known = res.updates
            for m in range(self.n_workers):
                g, lr_m = self.compute(m, self.w, known)  # every worker starts from the same w
                self.upd.add_to_round(g)
                self.staleness.append(0)
                self.push_workers.append(m)
            res.sim_time += max(draw(m) for m in range(self.n_workers))
            self.upd.apply_round(self.w, lr_m)
            res.version += 1
            res.pushes += self.n_workers
            res.updates += self.n_workers * self.local_steps
            if not self.finite_or_stop():
                break
            self.maybe_eval()

    def _next_pusher(self, queue, order):
        """(worker, finish time) of the next push, or (None, None) at the end of a replay."""
        res = self.res
        if self.replay is None:
            t, _, m = heapq.heappop(queue)
            res.sim_time = t
            return m, t
        m = next(order, None)
        if m is None:
            return None, None
        res.sim_time += 1.0
        if not self.has_pulled[m]:
            raise ValueError(f"replay: worker {m} pushes before its first pull "
                             f"(hello_versions[{m}] = {self.hello[m]} > version {res.version})")
        return m, None

    def _apply(self, m):
        """Worker m's push reaches the server: applied (or dropped as too stale); m pulls."""
        g, lr_m = self.compute(m, self.copies[m], int(self.pulled_total[m]))
        self._serve(m, g, lr_m)
        self.pull(m)

    def _serve(self, m, g, lr_m):
        """The server's side of worker m's push: staleness logged, then dropped or applied."""
        res = self.res
        stale = res.version - int(self.pulled_version[m])
        self.staleness.append(stale)
        self.push_workers.append(m)
        res.pushes += 1
        if self.max_staleness is not None and stale > self.max_staleness:
            res.dropped += 1  # the server drops it and the worker starts over
            return
        self.upd.apply(self.w, g, m, lr_m)  # DC rules: also w_bak[m] <- w
        res.version += 1
        res.updates += self.local_steps
        if self.hello is not None:
            for k in np.nonzero((self.hello == res.version) & ~self.has_pulled)[0]:
                self.pull(int(k))

    def _local_updates(self, m, w: np.ndarray, known_total: int) -> float:
        """Worker m's ``local_steps`` updates on ``w`` with its local optimizer, as the worker rank
        makes them on its buffer; returns the step size of the last (non-zero) one."""
        ctx, state = self.ctxs[m], self.states[m]
        lr_last = 0.0
        for k in range(self.local_steps):
            ctx.lr = lr_at(self.sched, known_total + k)
            g = as_dense(checked_update(self.alg.compute_update(w, state, ctx), self.n, self.alg), self.n)
            self.opts[m].step(w, g, ctx.lr, ctx.step + 1)
            ctx.step += 1
            lr_last = ctx.lr or lr_last
        return lr_last

    def _start_push(self, m, lr_push: float):
        """snap = local[m]; push = (w_start - snap) / lr: the worker's ``snapshot_delta``."""
        from .hogwild import snapshot_delta

        push = np.empty(self.n, np.float32)
        if lr_push == 0.0:
            push[:] = 0.0
            self.snaps[m] = self.local[m]
        else:
            snapshot_delta(push, self.copies[m], self.local[m], self.snaps[m], np.float32(1.0 / lr_push))
        self.pending[m] = (push, lr_push)

    def _apply_pipelined(self, m):
        """Worker m's push (computed one exchange earlier) reaches the server; meanwhile m has
        computed its next updates on its buffer, which now takes the answer (``merge_pull``)."""
        from .hogwild import merge_pull

        if self.local_steps == 1 and self.opts[m].name == "sgd":
            return self._apply_pipelined_direct(m)
        if self.pending[m] is None:  # its first push: computed on the model of its first pull
            self._start_push(m, self._local_updates(m, self.local[m], int(self.pulled_total[m])))
        self._serve(m, *self.pending[m])  # (never dropped: overlap excludes max_staleness)
        # the updates computed while the push was in flight (the push's steps counted as known)
        lr_next = self._local_updates(m, self.local[m], int(self.pulled_total[m]) + self.local_steps)
        merge_pull(self.local[m], self.copies[m], self.w, self.snaps[m])
        self.pull(m)
        self._start_push(m, lr_next)

    def _apply_pipelined_direct(self, m):
        """:meth:`_apply_pipelined` for one plain SGD step a push, as the worker's
        ``_push_pipelined_direct`` makes it: the update computed while the push was in flight is
        applied to the answer and pushed as it is."""
        from .hogwild import sgd_update

        def update(known_total):  # computed on the buffer, not yet applied
            ctx = self.ctxs[m]
            ctx.lr = lr_at(self.sched, known_total)
            g = checked_update(self.alg.compute_update(self.local[m], self.states[m], ctx), self.n, self.alg)
            ctx.step += 1
            return g, ctx.lr

        def push(g, lr):
            if lr <= 0:
                self.pending[m] = (np.zeros(self.n, np.float32), lr)
                return
            sgd_update(self.local[m], g, lr)
            dense = as_dense(g, self.n)
            self.pending[m] = (dense.copy() if dense is g else dense, lr)

        if self.pending[m] is None:  # its first push: computed on the model of its first pull
            push(*update(int(self.pulled_total[m])))
        self._serve(m, *self.pending[m])  # (never dropped: overlap excludes max_staleness)
        g, lr = update(int(self.pulled_total[m]) + 1)  # while the push was in flight
        self.pull(m)
        self.local[m] = self.w  # the buffer takes the answer, then the update
        push(g, lr)

    def run_asynchronous(self, delay, delay_param, slowdown):
        """The event queue of finish times (or a replayed push order) decides who pushes next."""
        for m in range(self.n_workers):
            if self.hello is None or self.hello[m] <= 0:
                self.pull(m)
        queue, order, seq, draw = None, None, self.n_workers, None
        if self.replay is None:
            draw = _delay_sampler(delay, delay_param, np.random.default_rng([self.seed, DELAY_STREAM]), slowdown)
            queue = [(draw(m), m, m) for m in range(self.n_workers)]  # (finish time, tie-break, worker)
            heapq.heapify(queue)
        else:
            order = iter(self.replay.push_workers.tolist())
        while self.replay is not None or self.res.updates < self.total_updates:
            m, t = self._next_pusher(queue, order)
            if m is None:
                break
            (self._apply_pipelined if self.overlap else self._apply)(m)
            if not self.finite_or_stop():
                break
            self.maybe_eval()
            if self.replay is None:
                heapq.heappush(queue, (t + draw(m), seq, m))
                seq += 1
