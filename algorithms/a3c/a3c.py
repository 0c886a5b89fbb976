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

from dpsgd.config import ConfigError

#: workers per default: one per core
DEFAULT_WORKERS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _worker(i, n_workers, env_id, hparams, flat, sq, counter, total_steps, go, stop, episodes_q, t0, errors_q,
            ready):
    """One A3C worker process (module level: picklable for the spawn start method)."""
    try:
        import torch

        torch.set_num_threads(1)
        from dpsgd.hogwild import rmsprop_step
        from dpsgd.plugin import ThreadContext

        from algorithms.hsa2c.agent import HSA2C

        agent = HSA2C(env_id, **hparams)
        ctx = ThreadContext(worker=i, n_workers=n_workers, thread=0, n_threads=1, seed=agent.seed)
        st = agent.make_thread_state(ctx)
        w = flat.numpy()
        s = sq.numpy()
        lr, alpha, eps = np.float32(agent.lr), np.float32(agent.rms_alpha), np.float32(agent.opt_eps)
        n = agent.samples_per_update
        with ready.get_lock():
            ready.value += 1
        while not stop.is_set():
            go.wait()
            if stop.is_set():
                break
            g = agent.compute_update(w, st, ctx)  # copies the shared parameters, rolls out, returns the gradient
            rmsprop_step(w, g, s, lr, alpha, eps)  # Hogwild: no lock
            with counter.get_lock():
                counter.value += n
                done = counter.value >= total_steps
            if agent._episodes:
                now = time.perf_counter() - t0.value
                episodes_q.put([(r, ln, now) for _, _, r, ln in agent._episodes])
                agent._episodes.clear()
            if done:
                stop.set()
        st.venv.close()
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        import traceback

        errors_q.put(f"worker {i}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        stop.set()


class A3C:
    """A3C with ``workers`` processes; ``learn()`` then ``.agent`` (an HSA2C) predicts and saves."""

    def __init__(self, env: str = "CartPole-v1", workers: int | None = None, start_method: str | None = None,
                 **hparams):
        from algorithms.hsa2c.agent import HSA2C

        hparams.setdefault("n_envs", 1)
        self.progress = bool(hparams.pop("progress", False))
        for k in ("threads", "rule", "lam", "local_steps", "schedule", "eval_seconds"):
            if k in hparams:
                raise ConfigError(f"A3C has no {k!r} setting (it is a parameter-server option of HSA2C)")
        self.workers = DEFAULT_WORKERS if workers is None else workers
        if not (isinstance(self.workers, int) and self.workers > 0):
            raise ConfigError(f"workers must be a positive integer, got {self.workers!r}")
        if hparams.get("optimizer", "rmsprop") != "rmsprop":
            raise ConfigError("the A3C baseline uses the shared-statistics RMSprop (optimizer rmsprop)")
        self.agent = HSA2C(env, **hparams)  # the network, evaluation and persistence
        self.env_id = env
        self.hparams = hparams
        self.start_method = start_method or ("fork" if os.name == "posix" else "spawn")
        self.metrics: dict = {}

    @property
    def params(self):
        return self.agent.params

    def learn(self, total_steps: int) -> "A3C":
        import torch
        import torch.multiprocessing as mp

        if not (isinstance(total_steps, (int, np.integer)) and total_steps > 0):
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        torch.set_num_threads(1)
        a = self.agent
        a._reset_run_state()
        ctx = mp.get_context(self.start_method)
        w0 = a.init_params(np.random.default_rng(a.seed))
        flat = torch.from_numpy(w0.copy()).share_memory_()
        sq = torch.zeros_like(flat).share_memory_()
        counter = ctx.Value("q", 0)
        t0 = ctx.Value("d", 0.0)
        ready = ctx.Value("i", 0)
        go, stop = ctx.Event(), ctx.Event()
        episodes_q, errors_q = ctx.Queue(), ctx.Queue()
        worker_hp = dict(self.hparams, eval_freq=10 ** 12)  # evaluation is the parent's job
        procs = [ctx.Process(target=_worker, args=(i, self.workers, self.env_id, worker_hp, flat, sq, counter,
                                                   int(total_steps), go, stop, episodes_q, t0, errors_q, ready),
                             daemon=True) for i in range(self.workers)]
        for p in procs:
            p.start()
        # the clock starts when every worker has its environments (process start-up excluded)
        while ready.value < self.workers and errors_q.empty() and all(p.is_alive() for p in procs):
            time.sleep(0.005)
        t_start = time.perf_counter()
        t0.value = t_start
        a._t0 = t_start
        go.set()
        wn = flat.numpy()
        evals, episodes = [], []
        next_eval = a.eval_freq
        consec = 0
        error = None
        eval_s = 0.0

        def drain():
            while True:
                try:
                    for r, ln, t in episodes_q.get_nowait():
                        episodes.append((counter.value, t - eval_s, r, ln))
                except queue.Empty:
                    return

        bar = None
        if self.progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=int(total_steps), unit="step", dynamic_ncols=True)
            except ImportError:
                pass
        try:
            while not stop.is_set():
                time.sleep(0.002)
                if bar is not None and counter.value - bar.n >= 1000:
                    bar.update(min(counter.value, bar.total) - bar.n)
                if not errors_q.empty() or not all(p.is_alive() for p in procs):
                    break
                drain()
                if a.eval_episodes and counter.value >= next_eval:
                    go.clear()
                    time.sleep(0.001)
                    te = time.perf_counter()
                    steps = counter.value
                    wall = te - t_start - eval_s
                    rets = a.evaluate_returns(wn.copy(), a.eval_episodes)
                    evals.append({"env_steps": steps, "wall_seconds": wall,
                                  "eval_return_mean": float(rets.mean()), "eval_return_std": float(rets.std())})
                    next_eval = (steps // a.eval_freq + 1) * a.eval_freq
                    eval_s += time.perf_counter() - te
                    if a.target_return is not None:
                        consec = consec + 1 if rets.mean() >= a.target_return else 0
                        if consec >= a.solve_evals and a.early_stop:
                            stop.set()
                    go.set()
                if a.max_seconds is not None and time.perf_counter() - t_start - eval_s >= a.max_seconds:
                    stop.set()
        finally:
            stop.set()
            go.set()
            t_end = time.perf_counter()
            if bar is not None:
                bar.update(min(counter.value, bar.total) - bar.n)
                bar.close()
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
            drain()
            if not errors_q.empty():
                error = errors_q.get()
            elif any(p.exitcode not in (0, None) for p in procs):
                error = f"a worker process died (exit codes {[p.exitcode for p in procs]})"
        if error:
            raise RuntimeError(f"A3C {error}")
        a.params = wn.copy()
        a._model = None
        a._episodes = episodes
        a._eval_seconds = eval_s
        train_s = max(t_end - t_start - eval_s, 1e-9)
        solved_at = None
        if a.target_return is not None:
            run = 0
            for e in evals:
                run = run + 1 if e["eval_return_mean"] >= a.target_return else 0
                if run >= a.solve_evals:
                    solved_at = e
                    break
        final = a.evaluate_returns(a.params, a.eval_episodes) if a.eval_episodes else None
        steps = int(counter.value)
        self.metrics = {
            "env": self.env_id, "algorithm": "a3c",
            "solved": bool(solved_at) if a.target_return is not None else None,
            "target_return": a.target_return, "solve_evals": a.solve_evals,
            "seconds_to_target": solved_at["wall_seconds"] if solved_at else None,
            "env_steps_to_target": solved_at["env_steps"] if solved_at else None,
            "env_steps": steps, "wall_seconds": t_end - t_start, "train_seconds": train_s, "eval_seconds": eval_s,
            "env_steps_per_second": steps / train_s,
            "final_eval_return_mean": None if final is None else float(final.mean()),
            "final_eval_return_std": None if final is None else float(final.std()),
            "final_eval_episodes": a.eval_episodes, "n_workers": self.workers, "threads_per_worker": 1,
            "start_method": self.start_method, "evaluations": evals,
        }
        a.metrics = self.metrics
        return self

    def predict(self, obs, deterministic: bool = True):
        return self.agent.predict(obs, deterministic)

    def save(self, path: str) -> str:
        return self.agent.save(path)

    def write_run(self, out: str) -> None:
        self.agent.write_run(out)
