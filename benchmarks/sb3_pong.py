#!/usr/bin/env python
"""Stable-Baselines3 A2C on Pong for a fixed training wall time: the peer row of the Pong table.

SB3 A2C with the settings of ``benchmarks/atari.py``'s HSA2C run (and of rl-zoo's Atari A2C):
``CnnPolicy`` (Nature CNN), 16 environments, n_steps 5, ``RMSpropTFLike`` lr 7e-4 alpha 0.99
eps 1e-5, entropy 0.01, value 0.25, gradient clip 0.5, gamma 0.99, n-step returns; on the same
environments (``algorithms/hsa2c/envs.make_env``: no-op starts, frame skip 4 with max-pooling,
84x84 grey, frame stack 4, reward clipping, episodic life, FIRE on reset) in SB3's
``DummyVecEnv``, torch on ``--torch-threads`` (default 2 = the cores).

It trains until ``--max-seconds`` of training wall time (evaluations excluded, as for HSA2C) or
``--total-steps``, evaluating every ``--eval-freq`` agent steps with ``--eval-episodes``
deterministic episodes on the evaluation seeds HSA2C uses (1e6 + i, same environments, same
27,000-step cap), and writes a run directory in ``dpsgd a2c``'s layout *as it goes*, so
``python -m benchmarks.atari report`` reads it beside the HSA2C and A3C runs:
``progress.csv`` (training episodes with their true game return, evaluations, a ``losses`` row with
the steps/s every 10 s), ``config.json`` at the start, ``metrics.json`` at the end (also after
SIGTERM/SIGINT, which stop the run cleanly). The model is not saved (nothing reads it).

    python -m benchmarks.sb3_pong --max-seconds 6188 --out runs/atari/pongnoframeskip-v4-sb3-s0
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np


def evaluate(model, env_id: str, episodes: int) -> np.ndarray:
    from algorithms.hsa2c.agent import EVAL_MAX_STEPS
    from benchmarks.rl import _eval_returns

    return _eval_returns(env_id, lambda o: model.predict(o, deterministic=True)[0], episodes,
                         max_steps=EVAL_MAX_STEPS)


def build(a):
    from stable_baselines3 import A2C
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
    from stable_baselines3.common.vec_env import DummyVecEnv

    from algorithms.hsa2c.envs import make_env

    venv = DummyVecEnv([lambda: make_env(a.env, train=True) for _ in range(a.n_envs)])
    venv.seed(a.seed)
    return A2C("CnnPolicy", venv, learning_rate=7e-4, n_steps=5, gamma=0.99, gae_lambda=1.0, ent_coef=0.01,
               vf_coef=0.25, max_grad_norm=0.5, seed=a.seed, device="cpu", verbose=0,
               policy_kwargs=dict(optimizer_class=RMSpropTFLike,
                                  optimizer_kwargs=dict(alpha=0.99, eps=1e-5, weight_decay=0)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="PongNoFrameskip-v4")
    p.add_argument("--out", required=True, help="run directory (progress.csv, config.json, metrics.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-envs", type=int, default=16)
    p.add_argument("--max-seconds", type=float, required=True, help="training wall time, evaluations excluded")
    p.add_argument("--total-steps", type=int, default=20_000_000, help="agent steps at most")
    p.add_argument("--eval-freq", type=int, default=200_000, help="agent steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--torch-threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.max_seconds <= 0 or a.eval_freq <= 0 or a.eval_episodes < 1 or a.n_envs < 1:
        p.error("--max-seconds, --eval-freq, --n-envs must be > 0 and --eval-episodes >= 1")

    import stable_baselines3
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    from algorithms.hsa2c.runlog import LiveLog

    torch.set_num_threads(a.torch_threads)
    os.makedirs(a.out, exist_ok=True)
    config = {"command": "sb3-a2c", "env": a.env, "argv": sys.argv[1:], "seed": a.seed, "n_envs": a.n_envs,
              "n_steps": 5, "lr": 7e-4, "optimizer": "RMSpropTFLike(alpha=0.99, eps=1e-5)", "ent_coef": 0.01,
              "vf_coef": 0.25, "max_grad_norm": 0.5, "gamma": 0.99, "torch_threads": a.torch_threads,
              "stable_baselines3": stable_baselines3.__version__, "torch": torch.__version__}
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    log = LiveLog(a.out, tensorboard=False)
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    model = build(a)

    class Clock(BaseCallback):
        """Training clock (evaluations excluded), episodes and evaluations into the live log."""

        def __init__(self):
            super().__init__()
            self.t0 = self.eval_s = 0.0
            self.next_eval = a.eval_freq
            self.evals = 0

        def train_seconds(self):
            return time.perf_counter() - self.t0 - self.eval_s

        def _on_rollout_start(self):
            # the loss parts of the update that ended the previous rollout (SB3's logger keeps them)
            v = self.model.logger.name_to_value
            if "train/policy_loss" in v:
                log.losses({"policy_loss": v["train/policy_loss"], "value_loss": v["train/value_loss"],
                            "entropy": -v["train/entropy_loss"]})

        def _on_training_start(self):
            self.t0 = time.perf_counter()  # after SB3's first reset, as HSA2C's clock starts at its first update

        def _on_step(self):
            steps, wall = self.num_timesteps, self.train_seconds()
            for info in self.locals["infos"]:
                ep = info.get("episode")
                if ep is not None:
                    log.episode(steps, wall, float(ep["r"]), int(ep["l"]))
            log.tick(steps, wall)
            if steps >= self.next_eval:
                te = time.perf_counter()
                rets = evaluate(self.model, a.env, a.eval_episodes)
                log.evaluation(steps, wall, float(rets.mean()), float(rets.std()))
                self.evals += 1
                self.next_eval = (steps // a.eval_freq + 1) * a.eval_freq
                self.eval_s += time.perf_counter() - te
                print(f"{steps:,} agent steps, {wall:.0f} s: evaluation {rets.mean():+.1f}", flush=True)
            return stop["signal"] is None and wall < a.max_seconds

    cb = Clock()
    model.learn(a.total_steps, callback=cb)
    train_s, steps = cb.train_seconds(), int(model.num_timesteps)
    te = time.perf_counter()
    final = evaluate(model, a.env, a.eval_episodes)
    final_s = time.perf_counter() - te
    log.close(steps, train_s, steps / train_s)
    metrics = {"algorithm": "sb3-a2c", "env": a.env, "env_steps": steps, "train_seconds": train_s,
               "eval_seconds": cb.eval_s, "final_eval_seconds": final_s, "evaluations": cb.evals,
               "env_steps_per_second": steps / train_s, "wall_seconds": train_s + cb.eval_s,
               "final_eval_return_mean": float(final.mean()), "final_eval_return_std": float(final.std()),
               "stopped_by_signal": stop["signal"]}
    tmp = os.path.join(a.out, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(tmp, os.path.join(a.out, "metrics.json"))
    print(json.dumps(metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
