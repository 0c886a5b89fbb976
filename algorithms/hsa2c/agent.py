"""HSA2C: advantage actor-critic as a :mod:`dpsgd` plug-in.

Each framework thread owns ``n_envs`` environments. ``compute_update`` copies the rank's live
parameters into the thread's own model (one memcpy: a consistent snapshot under Hogwild), rolls
out ``n_steps`` steps in every environment, and returns the clipped A2C gradient as a flat float32
vector; the framework applies it lock-free with the rank's shared RMSprop (or Adam/SGD), pushes the
accumulated change to the parameter server every ``local_steps`` updates and pulls the global model.
One process with one thread is plain synchronous A2C (Stable-Baselines3's algorithm).

Evaluation (``eval_episodes`` deterministic episodes on separate seeds): in one process every
``eval_freq`` environment steps, inside the training thread, its time excluded from the reported
wall times; under MPI the server's model every ``eval_seconds`` on rank 0. With ``target_return``
the run counts as solved at the ``solve_evals``-th evaluation in a row at or above the target, and
stops there when ``early_stop`` is set.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import time

import numpy as np

from dpsgd.config import ConfigError
from dpsgd.plugin import Algorithm

from . import envs as E
from .config import HSA2CConfig
from .gradient import a2c_gradient
from .losses import clip_grad_norm_, compute_advantages
from .rollout import RolloutBuffer, collect
from .runlog import LiveLog, write_progress
from .tracker import EVAL_SEED, EvalTracker, run_metrics

MODEL_FILE = "model.pt"
CONFIG_FILE = "model.json"
FORMAT = "hsa2c-1"
#: an evaluation episode is cut after this many agent steps (MinAtar has no time limit)
EVAL_MAX_STEPS = 27_000
#: environment i of thread g trains on the seed ``seed * ENV_SEED_STRIDE + g * n_envs + i``: runs
#: with different ``seed`` use disjoint environment seeds while all threads together have at most
#: this many environments (a prime)
ENV_SEED_STRIDE = 100_003

class HSA2C(Algorithm):
    """Advantage actor-critic on the dpsgd framework.

    >>> agent = HSA2C("CartPole-v1", target_return=475).learn(200_000)
    >>> agent.predict(obs)          # deterministic action(s)
    >>> agent.save("run/"); HSA2C.load("run/")
    """

    def __init__(self, env: str = "CartPole-v1", model_config: dict | None = None, **hparams):
        """``model_config``: the network's JSON architecture (:func:`.nets.model_config`; ``load``
        passes the saved one); None derives it from the environment's spaces and ``hidden``,
        ``activation``, ``log_std_init``, ``arch``."""
        self.config = HSA2CConfig.from_dict(hparams)
        self.env_id = env
        h = self.config
        self.env_kwargs = dict(h.env_kwargs or {})
        if model_config is None:
            from .nets import model_config as derive

            obs_space, act_space = E.env_spaces(env) if not self.env_kwargs else self._spaces_kw()
            model_config = derive(obs_space, act_space, hidden=h.hidden, activation=h.activation,
                                  log_std_init=h.log_std_init, arch=h.arch)
        self.model_config = model_config
        self.samples_per_update = self.config.n_envs * self.config.n_steps
        self.params: np.ndarray | None = None
        self.metrics: dict = {}
        self._model = None
        self._lock = threading.Lock()
        self._reset_run_state()

    def _spaces_kw(self):
        env = E.make_env(self.env_id, train=True, **self.env_kwargs)
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    # ------------------------------------------------------------------ plug-in interface
    def init_params(self, rng: np.random.Generator) -> np.ndarray:
        """The current parameters when there are any (learn() continues training), else a fresh network."""
        from .nets import build_model

        if self.params is not None:
            return np.array(self.params, np.float32, copy=True)
        return build_model(self.model_config, seed=int(rng.integers(2 ** 31))).flat.copy()

    def make_thread_state(self, ctx):
        import torch

        from .nets import build_model

        torch.set_num_threads(1)
        model = build_model(self.model_config, seed=0)
        g = ctx.global_thread
        env_seed = self.config.seed * ENV_SEED_STRIDE + g * self.config.n_envs
        # Atari: ale-py's C++ vector environment (outside the GIL) unless env_backend="python"
        venv = E.make_vec_env(self.env_id, self.config.n_envs, env_seed, train=True, backend=self.config.env_backend,
                              **self.env_kwargs)
        return RolloutBuffer(model, venv, self.config.n_steps, ctx.rng)

    def compute_update(self, params: np.ndarray, st, ctx) -> np.ndarray:
        """The plug-in hook: roll out from ``params`` (:mod:`.rollout`), return the clipped A2C
        gradient (:mod:`.gradient`)."""
        self._start_clock()
        if self._local_eval:
            self._maybe_eval(params)
        if self.tracker.stop:
            return st.zero  # solved: nothing more to learn, the run is being stopped
        st.model.set_flat(params)
        keep_graph = not (st.model.numpy_forward is not None and self.config.backend == "auto")
        graph, last_v, episodes = collect(st, keep_graph)
        adv, ret = compute_advantages(st.rewards, st.values, st.term, st.trunc, st.next_values, last_v,
                                      self.config.gamma, self.config.gae_lambda)
        parts = {} if self._live is not None and self._live.want_losses() else None
        g = a2c_gradient(st, graph, adv, ret, self.config.vf_coef, self.config.ent_coef, self.config.normalize_advantage, st.grad, parts)
        if parts is not None:
            self._live.losses(parts)
        clip_grad_norm_(g, self.config.max_grad_norm)
        self._count(st.n_samples, episodes)
        return g

    def _start_clock(self):
        if not self._started:  # the clock starts with the first update (environment creation excluded)
            with self._lock:
                if not self._started:
                    self._t0 = time.perf_counter()
                    self._started = True

    def evaluate(self, params: np.ndarray) -> dict:
        """Deterministic evaluation of ``params`` (the plug-in hook; on rank 0 under MPI)."""
        if self.config.eval_episodes == 0:
            return {}
        t0 = time.perf_counter()
        before = self._eval_seconds
        rets = self.evaluate_returns(params, self.config.eval_episodes)
        out = {"eval_return_mean": float(np.mean(rets)), "eval_return_std": float(np.std(rets)),
               "eval_seconds_before": before}
        self._eval_seconds += time.perf_counter() - t0
        # under MPI the server evaluates the initial model first: it never counts towards solved
        self.tracker.note(out["eval_return_mean"], counts=self._local_eval or self.tracker.n_evals > 0)
        return out

    # ------------------------------------------------------------------ bookkeeping
    def _reset_run_state(self):
        self._env_steps = 0
        self._episodes: list[tuple] = []  # (env_steps, wall_excl_eval, return, length)
        self._eval_seconds = 0.0
        self.tracker = EvalTracker(self.config.eval_freq, self.config.target_return, self.config.solve_evals, self.config.early_stop)
        self._t0 = time.perf_counter()
        self._started = False
        self._local_eval = False
        self._live = None
        self._wall_offset = 0.0
        self._eval_offset = 0.0  # evaluation seconds of the runs before a --resume
        self._restored_clock = None
        self._resumed_steps = 0
        self._stop_requested = None  # the signal that asked the run to stop (SIGINT/SIGTERM)

    def _wall(self) -> float:
        return self._wall_offset + time.perf_counter() - self._t0 - self._eval_seconds

    def checkpoint_arrays(self) -> dict:
        """The run's training clock (evaluations excluded) and evaluation seconds, for --resume."""
        return {"clock": np.array([self._wall(), self._eval_seconds_total()], np.float64)}

    def restore_arrays(self, arrays: dict) -> None:
        self._restored_clock = arrays.get("clock")

    def _eval_seconds_total(self) -> float:
        return self._eval_offset + self._eval_seconds

    def resumed(self, total_updates: int, seconds: float) -> None:
        """The dpsgd resume hook: continue the step count and the clock of the checkpointed run.
        The clock is the checkpoint's training clock when it has one; else (checkpoints of older
        versions) the server's ``seconds``, which include the earlier run's evaluations."""
        self._env_steps = int(total_updates) * self.samples_per_update
        self.tracker.reset(self._env_steps)
        clock = self._restored_clock
        if clock is not None and len(clock) == 2:
            self._wall_offset, self._eval_offset = float(clock[0]), float(clock[1])
        else:
            self._wall_offset = float(seconds)
        self._resumed_steps = self._env_steps

    def _count(self, n, episodes):
        live = self._live
        with self._lock:
            self._env_steps += n
            steps = self._env_steps
            w = self._wall()
            for ep in episodes:
                self._episodes.append((steps, w, float(ep["r"]), int(ep["l"])))
        if live is not None:
            for ep in episodes:
                live.episode(steps, w, float(ep["r"]), int(ep["l"]))
            live.tick(steps, w)

    def pop_episodes(self) -> list[tuple]:
        """The training episodes finished since the last call: (env steps, wall seconds, return, length)."""
        with self._lock:
            out, self._episodes = self._episodes, []
        return out

    def _maybe_eval(self, params):
        tr = self.tracker
        if self.config.eval_episodes == 0 or not tr.due(self._env_steps) or not self._lock.acquire(blocking=False):
            return
        try:
            if not tr.due(self._env_steps):
                return
            steps, wall = self._env_steps, self._wall()
            tr.take(steps)
            snapshot = params.copy()
            m = self.evaluate(snapshot)  # notes the return in the tracker
            tr.log.append({"env_steps": steps, "wall_seconds": wall, "eval_return_mean": m["eval_return_mean"],
                           "eval_return_std": m["eval_return_std"]})
            if self._live is not None:
                self._live.evaluation(steps, wall, m["eval_return_mean"], m["eval_return_std"])
                self._save_params(self._live.out, snapshot)  # `dpsgd evaluate OUT` works during the run
        finally:
            self._lock.release()

    def should_stop(self) -> bool:
        """The dpsgd stop hook: solved (target return reached solve_evals times in a row), or a
        SIGINT/SIGTERM asked the run to end (it then ends like a finished one: final checkpoint,
        model and metrics written)."""
        return self.tracker.stop or self._stop_requested is not None

    # ------------------------------------------------------------------ training
    def train_config(self, total_steps: int):
        import dpsgd

        if not (isinstance(total_steps, (int, np.integer)) and total_steps > 0):
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        from dpsgd.runner import mpi_world_size_from_env

        mpi = mpi_world_size_from_env() > 1
        threads = self.config.threads
        if threads is None:
            # MLPs: one thread (the GIL serialises their small numpy operations, README); CNNs run
            # outside the GIL, so the framework's default: cores / ranks on this machine
            threads = 1 if self.model_config["kind"] == "mlp" else None
        return dpsgd.TrainConfig(
            rule=dpsgd.RuleConfig(name=self.config.rule, lam=self.config.lam), lr=self.config.lr, schedule=self.config.schedule,
            local_optimizer=self.config.optimizer, rms_alpha=self.config.rms_alpha, opt_eps=self.config.opt_eps,
            local_steps=self.config.local_steps, overlap=self.config.overlap, threads=threads,
            total_updates=max(1, -(-int(total_steps) // self.samples_per_update)),
            max_seconds=self.config.max_seconds, seed=self.config.seed, progress=self.config.progress,
            eval_every=self.config.eval_seconds if mpi else None,
        )

    def learn(self, total_steps: int, config=None, out: str | None = None, append: bool = False) -> "HSA2C":
        """Train for ``total_steps`` environment steps (all workers); returns self.

        A second call continues from the current parameters (the optimizer statistics start afresh).

        ``config`` (a dpsgd.TrainConfig) overrides the framework settings derived from the
        hyperparameters (its ``total_updates`` counts updates of ``n_envs * n_steps`` steps).
        ``out``: in one process, write ``progress.csv``, TensorBoard events and (at every
        evaluation) the model into this directory while training (:mod:`.runlog`); ``append``
        continues an earlier run's ``progress.csv`` there.
        """
        import torch

        import dpsgd
        from dpsgd.runner import mpi_world_size_from_env

        torch.set_num_threads(1)
        cfg = config if config is not None else self.train_config(total_steps)
        self._reset_run_state()
        self._local_eval = mpi_world_size_from_env() <= 1
        if out is not None and self._local_eval:
            self._live = LiveLog(out, append=append)
            self._save_config(out)
        try:
            with _stop_on_signals(self):
                result = dpsgd.train(self, cfg)
            self._last_result = result
            if result.params is not None:
                self.params = np.array(result.params, np.float32, copy=True)
                self._model = None
            if result.is_root:
                self.metrics = self._summarize(result.metrics, cfg)
                if self._live is not None:
                    m = self.metrics
                    self._live.close(m["env_steps"], m["train_seconds"] + self._wall_offset,
                                     m["env_steps_per_second"])
        finally:
            if self._live is not None:
                self._live.close()
        return self

    def _summarize(self, fm: dict, cfg) -> dict:
        wall = time.perf_counter() - self._t0
        paused = self._eval_seconds  # evaluation time during which training waited
        started = float(fm.get("first_update_unix", float("nan")))
        if not self._local_eval and math.isfinite(started):
            # MPI: this rank (the server) computes nothing; training began with the workers' first
            # update, after their environments were made, as the clock of one process does
            wall = time.time() - started
        if self._local_eval:
            evals = list(self.tracker.log)
            env_steps = self._env_steps
        else:  # MPI: the server's periodic evaluations (history rows of dpsgd)
            hist = [r for r in fm.get("history", []) if "eval_return_mean" in r]
            # evaluations in the server's background thread did not pause training: not excluded
            # nor did the one before training began (outside the clock, which starts at the first update)
            paused -= sum(r.get("eval_duration", 0.0) for r in hist if r.get("eval_background") or r.get("eval_initial"))
            evals = [{"env_steps": int(r["updates"]) * self.samples_per_update,
                      "wall_seconds": float(r["seconds"]) - (0.0 if r.get("eval_background")
                                                             else float(r.get("eval_seconds_before", 0.0))),
                      "eval_return_mean": r["eval_return_mean"], "eval_return_std": r["eval_return_std"]}
                     for r in hist]
            env_steps = int(fm.get("total_updates", 0)) * self.samples_per_update
        out = run_metrics(
            env=self.env_id, algorithm="hsa2c", tracker=self.tracker, evals=evals, env_steps=env_steps,
            wall_seconds=wall, train_seconds=wall - paused, eval_seconds=self._eval_seconds,
            steps_this_run=env_steps - self._resumed_steps, final=fm.get("final"), eval_episodes=self.config.eval_episodes,
            resumed_at_env_steps=self._resumed_steps or None, stopped_by_signal=self._stop_requested,
            n_workers=fm.get("n_workers"), threads_per_worker=fm.get("threads_per_worker"), rule=fm.get("rule"),
            framework={k: v for k, v in fm.items() if k not in ("history", "push_workers", "final")})
        # the whole run's clocks, across --resume (this run's figures above are this part's)
        out["train_seconds_total"] = self._wall_offset + out["train_seconds"]
        out["eval_seconds_total"] = self._eval_seconds_total()
        return out

    # ------------------------------------------------------------------ evaluation / inference
    def evaluate_returns(self, params: np.ndarray | None = None, episodes: int = 10, seed: int = EVAL_SEED):
        """Undiscounted returns of ``episodes`` deterministic episodes (seeds ``seed + i``)."""
        from .nets import build_model

        model = build_model(self.model_config, seed=0)
        model.set_flat(self.params if params is None else params)
        envs = [E.make_env(self.env_id, train=False, **self.env_kwargs) for _ in range(episodes)]
        try:
            obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
            rets = np.zeros(episodes)
            alive = list(range(episodes))
            steps = 0
            while alive and steps < EVAL_MAX_STEPS:
                steps += 1
                batch = np.stack([np.asarray(obs[i]) for i in alive])
                acts = model.env_actions(model.predict_head(batch))
                still = []
                for k, i in enumerate(alive):
                    a = acts[k]
                    o, r, term, trunc, _ = envs[i].step(a.item() if a.ndim == 0 else a)
                    rets[i] += r
                    obs[i] = o
                    if not (term or trunc):
                        still.append(i)
                alive = still
            return rets
        finally:
            for e in envs:
                e.close()

    def set_params(self, params: np.ndarray) -> None:
        """Use ``params`` (a flat float32 vector in the model's layout) as the agent's parameters."""
        params = np.asarray(params, np.float32)
        m = self.model
        if params.shape != (m.n_params,):
            raise ValueError(f"expected {m.n_params} parameters, got shape {params.shape}")
        self.params = params.copy()
        m.set_flat(self.params)

    @property
    def model(self):
        if self._model is None:
            from .nets import build_model

            self._model = build_model(self.model_config, seed=0)
            if self.params is not None:
                self._model.set_flat(self.params)
        return self._model

    def predict(self, obs, deterministic: bool = True, rng: np.random.Generator | None = None):
        """Action(s) for one observation or a batch (as the environment takes them)."""
        if self.params is None:
            raise RuntimeError("the agent has no parameters yet: call learn() or load() first")
        m = self.model
        o = np.asarray(obs)
        single = o.shape == tuple(m.obs_shape) or (m.onehot and o.ndim == 0)
        batch = o[None] if single else o
        if deterministic:
            a = m.env_actions(m.predict_head(batch))
        else:
            head, _ = m.act(batch, rng or np.random.default_rng(), False)
            a = m.env_actions(head)
        return a[0] if single else a

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict:
        return {"format": FORMAT, "env": self.env_id, "hyperparameters": self.config.to_dict(),
                "model": self.model_config}

    def save(self, path: str) -> str:
        """Write ``model.pt`` (torch state_dict of tensors) and ``model.json`` into directory ``path``."""
        if self.params is None:
            raise RuntimeError("nothing to save: call learn() first")
        self._save_params(path, self.params)
        return path

    def _save_config(self, path: str) -> None:
        from dpsgd.checkpoint import atomic_write_text

        os.makedirs(path, exist_ok=True)
        atomic_write_text(os.path.join(path, CONFIG_FILE), json.dumps(self.config_dict(), indent=1))

    def _save_params(self, path: str, params: np.ndarray) -> None:
        """``model.pt`` of ``params`` (atomically) and ``model.json`` into ``path``."""
        import torch

        from dpsgd.checkpoint import atomic_write_bytes

        from .nets import build_model

        model = build_model(self.model_config, seed=0)
        model.set_flat(params)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(sd, buf)
        self._save_config(path)
        atomic_write_bytes(os.path.join(path, MODEL_FILE), lambda f: f.write(buf.getvalue()))

    @classmethod
    def load(cls, path: str) -> "HSA2C":
        import torch

        from .nets import build_model

        cfg_path = os.path.join(path, CONFIG_FILE)
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{path}: no {CONFIG_FILE} (not an HSA2C model directory)")
        with open(cfg_path) as f:
            cfg = json.load(f)
        if cfg.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: unknown format {cfg.get('format')!r}")
        h = HSA2CConfig.from_dict(cfg["hyperparameters"], strict=False)  # an older file's extras go
        agent = cls(cfg["env"], model_config=cfg["model"], **vars(h))
        model = build_model(agent.model_config, seed=0)
        sd = torch.load(os.path.join(path, MODEL_FILE), weights_only=True)
        model.load_state_dict(sd)
        agent.params = model.flat.copy()
        agent._model = model
        return agent

    def write_run(self, out: str) -> None:
        """metrics.json, progress.csv, the model and the config into ``out`` (rank 0).

        When the run wrote ``progress.csv`` and TensorBoard events live into ``out`` (``learn(out=...)``)
        those files are complete already and are kept as they are.
        """
        from dpsgd.checkpoint import atomic_write_text

        os.makedirs(out, exist_ok=True)
        self.save(out)
        atomic_write_text(os.path.join(out, "metrics.json"), json.dumps(self.metrics, indent=1, default=float))
        if self._live is not None and os.path.abspath(self._live.out) == os.path.abspath(out):
            return
        write_progress(out, self._episodes, self.metrics)


class _stop_on_signals:
    """While training in the main thread: SIGINT/SIGTERM ask the run to stop (``should_stop``)
    instead of killing it, so it ends like a finished run. A second signal acts as usual."""

    def __init__(self, agent):
        self.agent = agent
        self.old = {}

    def __enter__(self):
        import signal

        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        import signal
        import sys

        name = signal.Signals(signum).name
        if self.agent._stop_requested is not None:  # the second one: what it would have done
            old = self.old.get(signum)
            if callable(old):
                return old(signum, frame)
            raise KeyboardInterrupt
        self.agent._stop_requested = name
        print(f"dpsgd: {name}: stopping after the current updates (model, metrics and checkpoint are "
              f"written); send it again to stop at once", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        import signal

        for sig, old in self.old.items():
            signal.signal(sig, old)
        return False
