#!/usr/bin/env python
"""The classic PyTorch A3C, written independently, to check that `dpsgd a3c` is no slower.

This follows the layout everybody copies from ikostrikov/pytorch-a3c (re-typed, not copied):

* the parent builds the global ``ActorCritic``, calls ``model.share_memory()`` and a
  ``SharedRMSprop`` whose statistics live in shared memory too;
* N ``torch.multiprocessing`` processes each own a *local* copy of the model and ONE environment;
  each iteration a worker syncs its local model from the shared one, runs an n-step rollout,
  computes the actor-critic loss on its local model, hands the gradients to the shared model
  (``ensure_shared_grads``) and steps the shared optimizer, without any lock (Hogwild).

Nothing here imports ``dpsgd`` or ``algorithms`` (independence is the point). Network and
hyperparameters are `dpsgd a3c`'s CartPole defaults (those of HSA2C / Stable-Baselines3 A2C):
separate 64-64 tanh policy and value MLPs with orthogonal init (gain sqrt 2, 0.01 for the policy
head, 1 for the value head), n_steps 5, gamma 0.99, value coef 0.5, entropy coef 0, gradient
norm clipped at 0.5, RMSprop lr 7e-4, alpha 0.99, eps 1e-5; losses are means over the rollout;
a time-limit truncation bootstraps from V(final observation), a termination does not.

Two deliberate differences from ikostrikov's code, both in the classic design's favour or
needed for correctness: the step counter is bumped once per rollout (not once per step under a
lock), and ``ensure_shared_grads`` always re-points the shared gradients (the original returns
early once they are set, which is only right while ``zero_grad`` zeroes in place; since torch 2.0
it sets them to None and the original would feed stale or accumulated gradients).

Measurement protocol = `dpsgd a3c`'s (``algorithms/a3c/a3c.py``), so the numbers compare: the
clock starts once every worker has built its model and environment; the parent evaluates the
shared model every ``eval_freq`` (5000) env steps with the workers paused: ``eval_episodes``
(10) deterministic (argmax) episodes on seeds 10**6 + i; evaluation time is excluded from the
wall times; the run is solved at the ``solve_evals``-th (3rd) evaluation in a row whose mean
return is >= the target, and stops there.

    python -m benchmarks.a3c_classic --seeds 5                # this file alone, a small table
    python -m benchmarks.rl cartpole --systems a3c,a3c-classic --seeds 5   # against dpsgd a3c
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

ENV_ID = "CartPole-v1"
EVAL_SEED = 10 ** 6
HPARAMS = dict(hidden=64, n_steps=5, gamma=0.99, lr=7e-4, rms_alpha=0.99, rms_eps=1e-5, vf_coef=0.5,
               ent_coef=0.0, max_grad_norm=0.5)


# ----------------------------------------------------------------------------- model


def _mlp(n_in, n_out, hidden, out_gain):
    net = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, n_out))
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain=out_gain if layer is net[-1] else math.sqrt(2.0))
            nn.init.zeros_(layer.bias)
    return net


class ActorCritic(nn.Module):
    """Separate policy and value MLPs; forward returns (action logits, state value)."""

    def __init__(self, obs_dim, n_actions, hidden=HPARAMS["hidden"]):
        super().__init__()
        self.pi = _mlp(obs_dim, n_actions, hidden, 0.01)
        self.v = _mlp(obs_dim, 1, hidden, 1.0)

    def forward(self, x):
        return self.pi(x), self.v(x).squeeze(-1)


# ----------------------------------------------------------------------------- shared optimizer


class SharedRMSprop(torch.optim.RMSprop):
    """RMSprop whose state (square averages, step) is created up front and put in shared memory,
    so every worker process updates the same statistics."""

    def __init__(self, params, lr, alpha, eps):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"] = torch.zeros(())
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def share_memory(self):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                state["step"].share_memory_()
                state["square_avg"].share_memory_()
        return self


def ensure_shared_grads(model, shared_model):
    """Point the shared model's gradients at this worker's local gradients (process-local
    attribute: each worker's copy of the shared parameters gets its own ``.grad``)."""
    for param, shared_param in zip(model.parameters(), shared_model.parameters()):
        shared_param._grad = param.grad


# ----------------------------------------------------------------------------- worker


def train(rank, seed, env_id, shared_model, optimizer, counter, total_steps, ready, go, parked, stop, errors):
    """One A3C worker process: one environment, a local model, Hogwild updates of the shared one."""
    try:
        import gymnasium as gym

        torch.set_num_threads(1)
        torch.manual_seed(seed * 1000 + rank)
        h = HPARAMS
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed * 1000 + rank)
        model = ActorCritic(env.observation_space.shape[0], env.action_space.n)
        with ready.get_lock():
            ready.value += 1
        while not stop.is_set():
            if not go.is_set():  # the parent is evaluating: park until it is done
                with parked.get_lock():
                    parked.value += 1
                go.wait()
                with parked.get_lock():
                    parked.value -= 1
                continue
            model.load_state_dict(shared_model.state_dict())  # sync local <- shared

            log_probs, values, entropies, rewards = [], [], [], []
            bootstrap = None  # the state whose value ends the n-step return (None: terminal)
            for _ in range(h["n_steps"]):
                logits, value = model(torch.from_numpy(np.asarray(obs, dtype=np.float32)))
                log_prob = F.log_softmax(logits, -1)
                prob = log_prob.exp()
                action = int(prob.multinomial(1))
                obs, reward, terminated, truncated, _ = env.step(action)
                log_probs.append(log_prob[action])
                entropies.append(-(log_prob * prob).sum())
                values.append(value)
                rewards.append(float(reward))
                if terminated or truncated:
                    if truncated and not terminated:  # time limit: bootstrap from the final observation
                        bootstrap = obs
                    obs, _ = env.reset()
                    break
            else:
                bootstrap = obs
            R = 0.0
            if bootstrap is not None:
                with torch.no_grad():
                    R = float(model(torch.from_numpy(np.asarray(bootstrap, dtype=np.float32)))[1])
            returns = []
            for r in reversed(rewards):
                R = r + h["gamma"] * R
                returns.append(R)
            returns = torch.tensor(returns[::-1], dtype=torch.float32)
            values_t = torch.stack(values)
            advantages = (returns - values_t).detach()
            policy_loss = -(torch.stack(log_probs) * advantages).mean()
            value_loss = F.mse_loss(values_t, returns)
            entropy = torch.stack(entropies).mean()
            loss = policy_loss + h["vf_coef"] * value_loss - h["ent_coef"] * entropy

            model.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), h["max_grad_norm"])
            ensure_shared_grads(model, shared_model)
            optimizer.step()  # lock-free update of the shared parameters and statistics
            with counter.get_lock():
                counter.value += len(rewards)
                if counter.value >= total_steps:
                    stop.set()
        env.close()
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        import traceback

        errors.put(f"worker {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        stop.set()


# ----------------------------------------------------------------------------- evaluation


def evaluate(model, env_id, episodes=10, seed=EVAL_SEED):
    """Returns of ``episodes`` deterministic (argmax) episodes on seeds ``seed + i``, stepped in lockstep."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(episodes)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    returns = np.zeros(episodes)
    alive = list(range(episodes))
    with torch.no_grad():
        while alive:
            logits, _ = model(torch.from_numpy(np.stack([obs[i] for i in alive]).astype(np.float32)))
            actions = logits.argmax(-1).tolist()
            still = []
            for i, a in zip(alive, actions):
                obs[i], r, terminated, truncated, _ = envs[i].step(a)
                returns[i] += r
                if not (terminated or truncated):
                    still.append(i)
            alive = still
    for e in envs:
        e.close()
    return returns


# ----------------------------------------------------------------------------- one run


def run(seed: int = 0, n_workers: int = 2, total_steps: int = 300_000, target_return: float | None = 475.0, *,
        env_id: str = ENV_ID, eval_freq: int = 5000, eval_episodes: int = 10, solve_evals: int = 3) -> dict:
    """Train the classic A3C once; returns ``solved``, ``seconds_to_solve``, ``steps_to_solve``,
    ``steps_per_s`` (training env steps per second, evaluation excluded) and a few more figures."""
    import gymnasium as gym

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    probe = gym.make(env_id)
    obs_dim, n_actions = probe.observation_space.shape[0], probe.action_space.n
    probe.close()
    shared_model = ActorCritic(obs_dim, n_actions)
    shared_model.share_memory()
    optimizer = SharedRMSprop(shared_model.parameters(), lr=HPARAMS["lr"], alpha=HPARAMS["rms_alpha"],
                              eps=HPARAMS["rms_eps"]).share_memory()

    ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
    counter, ready, parked = ctx.Value("q", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    go, stop = ctx.Event(), ctx.Event()
    errors = ctx.Queue()
    procs = [ctx.Process(target=train, args=(rank, seed, env_id, shared_model, optimizer, counter, int(total_steps),
                                             ready, go, parked, stop, errors), daemon=True)
             for rank in range(n_workers)]
    for p in procs:  # go is clear: the workers wait until all are ready (start-up is not training time)
        p.start()
    while ready.value < n_workers and errors.empty() and all(p.is_alive() for p in procs):
        time.sleep(0.005)
    t0 = time.perf_counter()
    go.set()

    evaluations, eval_s, next_eval, consec, solved = [], 0.0, eval_freq, 0, None
    error = None
    try:
        while not stop.is_set():
            time.sleep(0.002)
            if not errors.empty() or not all(p.is_alive() for p in procs):
                break
            if eval_episodes and counter.value >= next_eval:
                go.clear()
                te = time.perf_counter()
                while parked.value < n_workers and not stop.is_set() and all(p.is_alive() for p in procs):
                    time.sleep(0.0002)  # the in-flight updates finish (counted as evaluation time)
                steps, wall = counter.value, te - t0 - eval_s
                rets = evaluate(shared_model, env_id, eval_episodes)
                evaluations.append({"env_steps": int(steps), "wall_seconds": wall,
                                    "eval_return_mean": float(rets.mean()), "eval_return_std": float(rets.std())})
                next_eval = (steps // eval_freq + 1) * eval_freq
                eval_s += time.perf_counter() - te
                if target_return is not None:
                    consec = consec + 1 if rets.mean() >= target_return else 0
                    if consec >= solve_evals and solved is None:
                        solved = evaluations[-1]
                        stop.set()
                go.set()
    finally:
        stop.set()
        go.set()
        t_end = time.perf_counter()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        if not errors.empty():
            error = errors.get()
        elif any(p.exitcode not in (0, None) for p in procs):
            error = f"a worker process died (exit codes {[p.exitcode for p in procs]})"
    if error:
        raise RuntimeError(f"classic A3C {error}")
    train_s = max(t_end - t0 - eval_s, 1e-9)
    steps = int(counter.value)
    return {"solved": solved is not None if target_return is not None else None,
            "seconds_to_solve": solved["wall_seconds"] if solved else None,
            "steps_to_solve": solved["env_steps"] if solved else None,
            "steps_per_s": steps / train_s,
            "env_steps": steps, "train_seconds": train_s, "eval_seconds": eval_s, "n_workers": n_workers,
            "evaluations": evaluations}


# ----------------------------------------------------------------------------- table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--total-steps", type=int, default=300_000, help="env step budget per run (default 3e5)")
    ap.add_argument("--target", type=float, default=475.0, help="solve threshold (default 475)")
    a = ap.parse_args(argv)
    rows = []
    print(f"classic A3C on {ENV_ID}: {a.workers} worker processes x 1 env, target {a.target:g}, "
          f"budget {a.total_steps} steps\n")
    print("| seed | solved | s to solve | steps to solve | train steps/s |")
    print("|---:|---|---:|---:|---:|")
    for seed in range(a.seeds):
        r = run(seed, a.workers, a.total_steps, a.target)
        rows.append(r)
        s, st = r["seconds_to_solve"], r["steps_to_solve"]
        print(f"| {seed} | {r['solved']} | {'-' if s is None else f'{s:.1f}'} | {'-' if st is None else st} | "
              f"{r['steps_per_s']:.0f} |", flush=True)

    def med(key):
        xs = [r[key] for r in rows if r[key] is not None]
        return statistics.median(xs) if xs else None

    s, st = med("seconds_to_solve"), med("steps_to_solve")
    print(f"| median | {sum(bool(r['solved']) for r in rows)}/{len(rows)} | {'-' if s is None else f'{s:.1f}'} | "
          f"{'-' if st is None else f'{st:.0f}'} | {med('steps_per_s'):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
