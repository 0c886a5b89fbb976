"""The A3C baseline (Mnih et al. 2016): torch.multiprocessing workers around a shared model.

Classic design: the model's flat parameters and the RMSprop square statistics live in shared
memory; each worker process owns its environments (one by default), copies the shared
parameters, rolls out ``n_steps`` (t_max = 5) steps, computes the actor-critic gradient and
applies it to the shared model with the shared-statistics RMSprop, without locks (Hogwild).

The rollout, network and loss are HSA2C's very code (each worker runs
:meth:`algorithms.hsa2c.agent.HSA2C.compute_update`), so a comparison of the two measures the
parallel scheme only. The parent process counts steps, evaluates the shared model every
``eval_freq`` steps with the workers paused (evaluation time is excluded from the reported wall
times) and stops the workers at ``total_steps`` or once solved.
"""

from __future__ import annotations

import os
import queue
import time

import numpy as np

from dpsgd.config import ConfigError, available_cores

#: workers per default: one per core
DEFAULT_WORKERS = available_cores()


def _worker(i, n_workers, env_id, hparams, flat, sq, counter, total_steps, go, stop, episodes_q, t0, errors_q,
            ready):
    """One A3C worker process (module level: picklable for the spawn start method)."""
    try:
        import torch

        torch.set_num_threads(1)
        from dpsgd.hogwild import LocalOptimizer
        from dpsgd.plugin import ThreadContext

        from algorithms.hsa2c.agent import HSA2C

        agent = HSA2C(env_id, **hparams)
        ctx = ThreadContext(worker=i, n_workers=n_workers, thread=0, n_threads=1, seed=agent.config.seed)
        st = agent.make_thread_state(ctx)
        w = flat.numpy()
        s = sq.numpy()
        c = agent.config
        opt = LocalOptimizer(c.optimizer, w.size, c.rms_alpha, eps=c.opt_eps, sq=s)  # the shared statistics
        n = agent.samples_per_update
        with ready.get_lock():
            ready.value += 1
        while not stop.is_set():
            go.wait()
            if stop.is_set():
                break
            g = agent.compute_update(w, st, ctx)  # copies the shared parameters, rolls out, returns the gradient
            opt.step(w, g, c.lr, 0)  # Hogwild: no lock
            with counter.get_lock():
                counter.value += n
                done = counter.value >= total_steps
            eps_done = agent.pop_episodes()
            if eps_done:
                now = time.perf_counter() - t0.value
                episodes_q.put([(r, ln, now) for _, _, r, ln in eps_done])
            if done:
                stop.set()
        st.venv.close()
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        import traceback

        errors_q.put(f"worker {i}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        stop.set()


class _Shared:
    """What the parent and the worker processes share: step counter, clock, events, queues."""

    def __init__(self, ctx):
        self.counter = ctx.Value("q", 0)
        self.t0 = ctx.Value("d", 0.0)
        self.ready = ctx.Value("i", 0)
        self.go, self.stop = ctx.Event(), ctx.Event()
        self.episodes_q, self.errors_q = ctx.Queue(), ctx.Queue()


class _Supervisor:
    """The parent's loop: start the clock, collect episodes, evaluate on schedule with the workers
    paused (evaluation time excluded from the clock), stop at the budget, when solved or on error."""

    def __init__(self, agent, sh: _Shared, procs, tracker, live, total_steps: int, progress: bool):
        self.a, self.sh, self.procs, self.tracker, self.live = agent, sh, procs, tracker, live
        self.total_steps = total_steps
        self.episodes: list[tuple] = []
        self.eval_s = 0.0
        self.bar = None
        if progress:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True)
            except ImportError:
                pass

    def _alive(self) -> bool:
        return self.sh.errors_q.empty() and all(p.is_alive() for p in self.procs)

    def _drain(self):
        while True:
            try:
                batch = self.sh.episodes_q.get_nowait()
            except queue.Empty:
                return
            steps = self.sh.counter.value
            for r, ln, t in batch:
                self.episodes.append((steps, t - self.eval_s, r, ln))
                if self.live is not None:
                    self.live.episode(steps, t - self.eval_s, r, ln)

    def _evaluate(self, w):
        sh, a = self.sh, self.a
        sh.go.clear()
        time.sleep(0.001)
        te = time.perf_counter()
        steps = sh.counter.value
        wall = te - self.t_start - self.eval_s
        self.tracker.take(steps)
        rets = a.evaluate_returns(w.copy(), a.config.eval_episodes)
        if self.tracker.record(steps, wall, float(rets.mean()), float(rets.std())):
            sh.stop.set()
        if self.live is not None:
            self.live.evaluation(steps, wall, float(rets.mean()), float(rets.std()))
        self.eval_s += time.perf_counter() - te
        sh.go.set()

    def loop(self, w):
        sh, a = self.sh, self.a
        # the clock starts when every worker has its environments (process start-up excluded)
        while sh.ready.value < len(self.procs) and self._alive():
            time.sleep(0.005)
        self.t_start = time.perf_counter()
        sh.t0.value = self.t_start
        sh.go.set()
        try:
            while not sh.stop.is_set() and self._alive():
                time.sleep(0.002)
                steps = sh.counter.value
                if self.bar is not None and steps - self.bar.n >= 1000:
                    self.bar.update(min(steps, self.bar.total) - self.bar.n)
                self._drain()
                if self.live is not None:
                    self.live.tick(steps, time.perf_counter() - self.t_start - self.eval_s)
                if a.config.eval_episodes and self.tracker.due(steps):
                    self._evaluate(w)
                if a.config.max_seconds is not None and time.perf_counter() - self.t_start - self.eval_s >= a.config.max_seconds:
                    sh.stop.set()
        finally:
            self._shutdown()

    def _shutdown(self):
        sh = self.sh
        sh.stop.set()
        sh.go.set()
        self.t_end = time.perf_counter()
        if self.bar is not None:
            self.bar.update(min(sh.counter.value, self.bar.total) - self.bar.n)
            self.bar.close()
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        self._drain()
        error = None
        if not sh.errors_q.empty():
            error = sh.errors_q.get()
        elif any(p.exitcode not in (0, None) for p in self.procs):
            error = f"a worker process died (exit codes {[p.exitcode for p in self.procs]})"
        if error:
            raise RuntimeError(f"A3C {error}")

    def metrics(self, a3c, final) -> dict:
        from algorithms.hsa2c.tracker import run_metrics

        a = self.a
        steps = int(self.sh.counter.value)
        wall = self.t_end - self.t_start
        fin = None if final is None else {"eval_return_mean": float(final.mean()),
                                          "eval_return_std": float(final.std())}
        return run_metrics(
            env=a3c.env_id, algorithm="a3c", tracker=self.tracker, evals=list(self.tracker.log), env_steps=steps,
            wall_seconds=wall, train_seconds=wall - self.eval_s, eval_seconds=self.eval_s, steps_this_run=steps,
            final=fin, eval_episodes=a.config.eval_episodes, n_workers=a3c.workers, threads_per_worker=1,
            start_method=a3c.start_method)


class A3C:
    """A3C with ``workers`` processes; ``learn()`` then ``.agent`` (an HSA2C) predicts and saves."""

    def __init__(self, env: str = "CartPole-v1", workers: int | None = None, start_method: str | None = None,
                 **hparams):
        from algorithms.hsa2c.agent import HSA2C

        hparams.setdefault("n_envs", 1)
        self.progress = bool(hparams.pop("progress", False))
        for k in ("threads", "rule", "lam", "local_steps", "overlap", "schedule", "eval_seconds"):
            if k in hparams:
                raise ConfigError(f"A3C has no {k!r} setting (it is a parameter-server option of HSA2C)")
        self.workers = DEFAULT_WORKERS if workers is None else workers
        if not (isinstance(self.workers, int) and self.workers > 0):
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        if hparams.get("optimizer", "rmsprop") not in ("rmsprop", "rmsprop_tf"):
            raise ConfigError("the A3C baseline uses the shared-statistics RMSprop (optimizer rmsprop or rmsprop_tf)")
        self.agent = HSA2C(env, **hparams)  # the network, evaluation and persistence
        self.env_id = env
        self.hparams = hparams
        self.start_method = start_method or ("fork" if os.name == "posix" else "spawn")
        self.metrics: dict = {}
        self._episodes: list[tuple] = []  # the last run's training episodes (for progress.csv)
        self._live_out: str | None = None  # where the last run wrote its progress live

    @property
    def params(self):
        return self.agent.params

    def learn(self, total_steps: int, out: str | None = None) -> "A3C":
        """Train for ``total_steps`` environment steps (all workers); returns self. ``out``: write
        ``progress.csv`` and TensorBoard events there while training (as HSA2C does)."""
        import torch
        import torch.multiprocessing as mp

        from algorithms.hsa2c.runlog import LiveLog
        from algorithms.hsa2c.tracker import EvalTracker

        if not (isinstance(total_steps, (int, np.integer)) and total_steps > 0):
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        torch.set_num_threads(1)
        a = self.agent
        ctx = mp.get_context(self.start_method)
        w0 = a.init_params(np.random.default_rng(a.config.seed))
        flat = torch.from_numpy(w0.copy()).share_memory_()
        # the shared RMSprop statistics, with the optimizer's initial values (TF's variant: ones)
        from dpsgd.hogwild import LocalOptimizer

        sq = torch.from_numpy(LocalOptimizer(a.config.optimizer, flat.numel()).sq).share_memory_()
        sh = _Shared(ctx)
        worker_hp = dict(self.hparams, eval_episodes=0)  # evaluation is the parent's job
        procs = [ctx.Process(target=_worker, args=(i, self.workers, self.env_id, worker_hp, flat, sq, sh.counter,
                                                   int(total_steps), sh.go, sh.stop, sh.episodes_q, sh.t0,
                                                   sh.errors_q, sh.ready), daemon=True)
                 for i in range(self.workers)]
        for p in procs:
            p.start()
        tracker = EvalTracker(a.config.eval_freq, a.config.target_return, a.config.solve_evals, a.config.early_stop)
        live = LiveLog(out) if out is not None else None
        try:
            run = _Supervisor(a, sh, procs, tracker, live, int(total_steps), self.progress)
            run.loop(flat.numpy())
            a.set_params(flat.numpy())
            final = a.evaluate_returns(a.params, a.config.eval_episodes) if a.config.eval_episodes else None
            self.metrics = run.metrics(self, final)
            self._episodes = run.episodes
            if live is not None:
                m = self.metrics
                live.close(m["env_steps"], m["train_seconds"], m["env_steps_per_second"])
        finally:
            if live is not None:
                live.close()
        self._live_out = out
        return self

    def predict(self, obs, deterministic: bool = True):
        return self.agent.predict(obs, deterministic)

    def save(self, path: str) -> str:
        return self.agent.save(path)

    def write_run(self, out: str) -> None:
        """metrics.json, the model and its config into ``out``; progress.csv and tb/ too unless
        ``learn(out=...)`` wrote them there live."""
        import json

        from dpsgd.checkpoint import atomic_write_text

        from algorithms.hsa2c.runlog import write_progress

        self.agent.save(out)
        atomic_write_text(os.path.join(out, "metrics.json"), json.dumps(self.metrics, indent=1, default=float))
        if self._live_out is None or os.path.abspath(self._live_out) != os.path.abspath(out):
            write_progress(out, self._episodes, self.metrics)
