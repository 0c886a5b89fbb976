"""An independent A3C in the classic PyTorch style, to check that `dpsgd a3c` is no slower.

Written from the description of Mnih et al. (2016) and the common PyTorch layout of
ikostrikov/pytorch-a3c (not copied): every worker process owns a local copy of the model and one
environment, pulls the shared model before each rollout of ``n_steps``, computes the
actor-critic loss on its local model, hands its gradients to the shared model and steps a
shared-statistics RMSprop without a lock. Nothing here imports ``dpsgd`` or ``algorithms``.

The measurement protocol is ours (so the numbers compare with ``benchmarks/rl.py``): the parent
evaluates the shared model every ``eval_freq`` steps with the workers paused, 10 deterministic
episodes, evaluation time excluded; solved = mean return >= target three evaluations in a row.
Same network sizes and hyperparameters as ``dpsgd a3c``'s CartPole defaults: 64-64 tanh actor
and critic, orthogonal init, n_steps 5, gamma 0.99, lr 7e-4, RMSprop alpha 0.99 eps 1e-5,
value coefficient 0.5, entropy 0, gradient norm 0.5.

    python -m benchmarks.a3c_reference --seeds 5          # our A3C and this one, same seeds
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import numpy as np

H = dict(n_steps=5, gamma=0.99, lr=7e-4, alpha=0.99, eps=1e-5, vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5)


def make_model(obs_dim, n_actions):
    import torch.nn as nn

    def mlp(out, gain):
        net = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))
        for i, m in enumerate(net):
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain if i == len(net) - 1 else math.sqrt(2))
                nn.init.zeros_(m.bias)
        return net

    class ActorCritic(nn.Module):
        def __init__(self):
            super().__init__()
            self.pi = mlp(n_actions, 0.01)
            self.v = mlp(1, 1.0)

        def forward(self, x):
            return self.pi(x), self.v(x).squeeze(-1)

    return ActorCritic()


def shared_rmsprop(params):
    """RMSprop whose square averages live in shared memory (the classic A3C optimizer)."""
    import torch

    opt = torch.optim.RMSprop(params, lr=H["lr"], alpha=H["alpha"], eps=H["eps"])
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state[p]
            st["step"] = torch.zeros(())
            st["square_avg"] = torch.zeros_like(p.data)
            st["step"].share_memory_()
            st["square_avg"].share_memory_()
    return opt


def worker(rank, seed, env_id, shared, opt, counter, total, go, parked, stop):
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed * 1000 + rank)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed * 1000 + rank)
    local = make_model(env.observation_space.shape[0], env.action_space.n)
    while not stop.is_set():
        if not go.is_set():
            with parked.get_lock():
                parked.value += 1
            go.wait()
            with parked.get_lock():
                parked.value -= 1
            continue
        local.load_state_dict(shared.state_dict())
        logps, values, rewards, ents = [], [], [], []
        bootstrap = 0.0
        for _ in range(H["n_steps"]):
            logits, v = local(torch.as_tensor(obs, dtype=torch.float32))
            dist = torch.distributions.Categorical(logits=logits)
            a = dist.sample()
            obs, r, term, trunc, _ = env.step(int(a))
            logps.append(dist.log_prob(a))
            values.append(v)
            ents.append(dist.entropy())
            rewards.append(float(r))
            if term or trunc:
                if trunc and not term:  # time limit: bootstrap from the final observation
                    with torch.no_grad():
                        bootstrap = float(local(torch.as_tensor(obs, dtype=torch.float32))[1])
                obs, _ = env.reset()
                break
        else:
            with torch.no_grad():
                bootstrap = float(local(torch.as_tensor(obs, dtype=torch.float32))[1])
        R, returns = bootstrap, []
        for r in reversed(rewards):
            R = r + H["gamma"] * R
            returns.append(R)
        returns = torch.tensor(returns[::-1])
        values_t = torch.stack(values)
        adv = (returns - values_t).detach()
        loss = (-(torch.stack(logps) * adv).mean() + H["vf_coef"] * ((returns - values_t) ** 2).mean()
                - H["ent_coef"] * torch.stack(ents).mean())
        local.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(local.parameters(), H["max_grad_norm"])
        for lp, sp in zip(local.parameters(), shared.parameters()):
            sp._grad = lp.grad  # hand the local gradient to the shared model (no lock: Hogwild)
        opt.step()
        with counter.get_lock():
            counter.value += len(rewards)
            if counter.value >= total:
                stop.set()


def evaluate(model, env_id, episodes, seed=10 ** 6):
    import gymnasium as gym
    import torch

    rets = []
    for i in range(episodes):
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed + i)
        done, ret = False, 0.0
        while not done:
            with torch.no_grad():
                a = int(torch.argmax(model(torch.as_tensor(obs, dtype=torch.float32))[0]))
            obs, r, term, trunc, _ = env.step(a)
            ret += r
            done = term or trunc
        rets.append(ret)
    return float(np.mean(rets))


def run(seed, n_workers=2, total_steps=1_000_000, target_return=475.0, env_id="CartPole-v1", eval_freq=5000,
        eval_episodes=10, solve_evals=3) -> dict:
    import gymnasium as gym
    import torch
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    probe = gym.make(env_id)
    shared = make_model(probe.observation_space.shape[0], probe.action_space.n)
    shared.share_memory()
    opt = shared_rmsprop(shared.parameters())
    ctx = mp.get_context("fork")
    counter, parked = ctx.Value("q", 0), ctx.Value("i", 0)
    go, stop = ctx.Event(), ctx.Event()
    go.set()
    procs = [ctx.Process(target=worker, args=(r, seed, env_id, shared, opt, counter, total_steps, go, parked, stop),
                         daemon=True) for r in range(n_workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    eval_s, next_eval, consec, solved = 0.0, eval_freq, 0, None
    while not stop.is_set():
        time.sleep(0.002)
        if counter.value >= next_eval:
            te = time.perf_counter()
            go.clear()
            while parked.value < n_workers and not stop.is_set() and all(p.is_alive() for p in procs):
                time.sleep(0.0005)
            steps = counter.value
            mean = evaluate(shared, env_id, eval_episodes)
            wall = te - t0 - eval_s
            eval_s += time.perf_counter() - te
            next_eval = (steps // eval_freq + 1) * eval_freq
            consec = consec + 1 if mean >= target_return else 0
            go.set()
            if consec >= solve_evals:
                solved = {"seconds_to_target": wall, "env_steps_to_target": steps}
                stop.set()
    go.set()
    t_end = time.perf_counter()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
    train_s = t_end - t0 - eval_s
    return {"solved": solved is not None, **(solved or {"seconds_to_target": None, "env_steps_to_target": None}),
            "env_steps": int(counter.value), "env_steps_per_second": counter.value / train_s}


def run_ours(seed, n_workers=2, total_steps=1_000_000, target_return=475.0, env_id="CartPole-v1") -> dict:
    """`dpsgd a3c` through its Python API, with the same protocol."""
    sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
    from algorithms.a3c.a3c import A3C

    m = A3C(env_id, workers=n_workers, n_envs=1, seed=seed, target_return=target_return, eval_freq=5000,
            eval_episodes=10).learn(total_steps).metrics
    return {k: m[k] for k in ("solved", "seconds_to_target", "env_steps_to_target", "env_steps",
                              "env_steps_per_second")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--total-steps", type=int, default=1_000_000)
    ap.add_argument("--target", type=float, default=475.0)
    a = ap.parse_args(argv)
    res = {"dpsgd a3c": [], "classic A3C (this file)": []}
    for seed in range(a.seeds):  # interleaved: both see the same machine load
        for name, fn in (("dpsgd a3c", run_ours), ("classic A3C (this file)", run)):
            r = fn(seed, a.workers, a.total_steps, a.target)
            res[name].append(r)
            print(f"seed {seed} {name}: {r}", flush=True)

    def med(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    lines = [f"CartPole-v1, {a.workers} worker processes x 1 env, target {a.target:g}, {a.seeds} seeds, medians:", "",
             "| system | solved | s to solve | env steps to solve | train env steps/s |", "|---|---:|---:|---:|---:|"]
    for name, rows in res.items():
        s, st, sps = med(rows, "seconds_to_target"), med(rows, "env_steps_to_target"), med(rows, "env_steps_per_second")
        lines.append(f"| {name} | {sum(r['solved'] for r in rows)}/{len(rows)} | {s if s is None else f'{s:.1f}'} | "
                     f"{st if st is None else f'{st:,.0f}'} | {sps:,.0f} |")
    text = "\n".join(lines)
    print("\n" + text)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "a3c_reference.md")
    with open(out, "w") as f:
        f.write(f"## A3C: dpsgd a3c against an independent classic PyTorch A3C\n\n"
                f"`python -m benchmarks.a3c_reference --seeds {a.seeds}` "
                f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {len(os.sched_getaffinity(0))} cores, "
                f"the two systems interleaved per seed):\n\n{text}\n\nPer seed:\n\n```\n"
                + "\n".join(f"seed {i} {name}: {r}" for name, rows in res.items() for i, r in enumerate(rows))
                + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
