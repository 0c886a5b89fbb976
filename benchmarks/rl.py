#!/usr/bin/env python
"""HSA2C against the A3C baseline and Stable-Baselines3 A2C, in the same run on the same machine.

Parts (each child is a separate process, one torch thread unless a row says otherwise; systems interleaved per seed):

1. ``cartpole``: CartPole-v1 solved at 475 - the mean return of 10 deterministic evaluation
   episodes (seeds 1e6 + i, the same for every system) every 5000 env steps, three evaluations
   in a row; evaluation time excluded. Systems: ``hsa2c`` (one process, one thread, 8 envs),
   ``hsa2c-2t`` (one process, 2 Hogwild threads x 8 envs), ``hsa2c-mpi3`` (``mpiexec -n 3``:
   server + 2 workers x 8 envs, DC-ASGD-a; the server's model is evaluated every 0.25 s on rank 0,
   not every 5000 steps), ``a3c`` (2 worker processes, 1 env each, t_max 5), ``a3c-classic``
   (``benchmarks/a3c_classic.py``: an independent classic PyTorch A3C - local models, shared model
   and shared RMSprop, 2 worker processes x 1 env, same network, hyperparameters and protocol as
   ``a3c``; row "A3C classic (independent)", with our A3C's ratios to it) and ``sb3`` (SB3 A2C,
   rl-zoo CartPole hyperparameters: 8 envs, MlpPolicy, ent_coef 0). All A2C hyperparameters
   equal SB3's defaults (n_steps 5, lr 7e-4, RMSprop alpha .99 eps 1e-5, gamma .99, vf .5,
   grad-norm .5, 64-64 tanh separate policy/value nets). Median over seeds of wall seconds and
   env steps to solve, and training env steps per second; the raw env step rate as the ceiling.
2. ``threads``: the GIL question - training env steps/s (no evaluation, fixed budget) of one
   thread x 8 envs, 2 threads x 8 envs, one thread x 16 envs (one batched forward), and
   ``mpiexec -n 3`` (2 worker processes x 8 envs).
3. ``pong``: ALE/Pong-v5, the same preprocessing for all: training agent steps/s of HSA2C
   (Nature CNN; 1 thread x 16 envs, 2 threads x 8 and x 16; its default Atari environments are
   ale-py's C++ vector env, two rows with the Python wrappers instead) against SB3 A2C (CnnPolicy,
   16 envs in a DummyVecEnv of our Python wrappers, rl-zoo Atari ent 0.01 / vf 0.25) with torch
   on 1 and on 2 threads, with 32 envs on 2 threads, and on SB3's own make_atari_env +
   VecFrameStack; fixed budget, clocks from the first update (SB3: after its first env reset);
   plus the raw preprocessed env step rate.
4. ``minatar``: a learning curve of HSA2C on MinAtar/Breakout-v1 (PNG).

    python -m benchmarks.rl                 # everything (about 35-45 minutes on 2 busy cores)
    python -m benchmarks.rl --quick         # 3 seeds, shorter Pong/MinAtar (about 10-15 minutes)
    python -m benchmarks.rl cartpole --seeds 5 --systems hsa2c,sb3
    python -m benchmarks.rl cartpole --seeds 5 --systems a3c,a3c-classic --results-dir /tmp/rl

Outputs: markdown on stdout and per part in ``benchmarks/results/rl_<part>[_quick].md`` (raw
numbers in ``.json``), all parts' latest results in ``rl[_quick].md``, and ``rl_minatar[_quick].png`` (``--results-dir``
to write them elsewhere, e.g. for a partial run). Needs ``pip install -e '.[bench,rl]'``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.stats import med
from dpsgd.config import available_cores

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
BIN = os.path.dirname(sys.executable)
EVAL_SEED = 10 ** 6
SYSTEMS = ("hsa2c", "hsa2c-2t", "hsa2c-mpi3", "a3c", "a3c-classic", "sb3")
#: table labels where the system's name is not enough
LABELS = {"a3c-classic": "A3C classic (independent)"}


# ============================================================================ children


def _eval_returns(env_id, predict, episodes=10, seed=EVAL_SEED, make=None, max_steps=None):
    """The evaluator used for SB3 (HSA2C/A3C use HSA2C.evaluate_returns: same seeds, same envs;
    ``max_steps``: its cap on an episode's steps)."""
    from algorithms.hsa2c.envs import make_env

    envs = [(make or (lambda: make_env(env_id, train=False)))() for _ in range(episodes)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    rets = np.zeros(episodes)
    alive = list(range(episodes))
    steps = 0
    while alive and (max_steps is None or steps < max_steps):
        steps += 1
        acts = predict(np.stack([np.asarray(obs[i]) for i in alive]))
        still = []
        for k, i in enumerate(alive):
            o, r, term, trunc, _ = envs[i].step(acts[k])
            rets[i] += r
            obs[i] = o
            if not (term or trunc):
                still.append(i)
        alive = still
    for e in envs:
        e.close()
    return rets


def child_hsa2c(args):
    from algorithms.hsa2c.agent import HSA2C

    kw = dict(seed=args.seed, target_return=args.target, eval_freq=args.eval_freq,
              eval_episodes=args.eval_episodes, threads=args.threads, n_envs=args.n_envs, eval_seconds=0.25,
              env_backend=args.env_backend)
    if args.atari:
        kw.update(ent_coef=0.01, vf_coef=0.25)
    a = HSA2C(args.env, **kw)
    a.learn(args.max_steps)
    if not a.metrics:  # a non-root MPI rank
        return None
    m = a.metrics
    m.pop("framework", None)
    return m


def child_a3c(args):
    from algorithms.a3c.a3c import A3C

    a = A3C(args.env, workers=args.threads, n_envs=args.n_envs, seed=args.seed, target_return=args.target,
            eval_freq=args.eval_freq, eval_episodes=args.eval_episodes).learn(args.max_steps)
    return a.metrics


def child_a3c_classic(args):
    """benchmarks/a3c_classic.py (imports neither dpsgd nor algorithms), renamed to our keys."""
    from benchmarks.a3c_classic import run

    r = run(args.seed, args.threads, args.max_steps, args.target, env_id=args.env, eval_freq=args.eval_freq,
            eval_episodes=args.eval_episodes)
    return {"env": args.env, "algorithm": "a3c-classic", "solved": r["solved"],
            "seconds_to_target": r["seconds_to_solve"], "env_steps_to_target": r["steps_to_solve"],
            "env_steps": r["env_steps"], "train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"],
            "env_steps_per_second": r["steps_per_s"], "n_workers": r["n_workers"], "evaluations": r["evaluations"]}


def child_sb3(args):
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from algorithms.hsa2c.envs import make_env

    if args.atari:
        if args.sb3_wrappers:
            # SB3's own Atari pipeline, as its users run it (rl-zoo): AtariWrapper + VecFrameStack(4)
            import ale_py
            import gymnasium as gym
            from stable_baselines3.common.env_util import make_atari_env
            from stable_baselines3.common.vec_env import VecFrameStack

            gym.register_envs(ale_py)
            # AtariWrapper skips frames itself: the v5 env's own frameskip and sticky actions off
            venv = VecFrameStack(make_atari_env(args.env, n_envs=args.n_envs, seed=args.seed,
                                                env_kwargs=dict(frameskip=1, repeat_action_probability=0.0)),
                                 n_stack=4)
        else:
            venv = DummyVecEnv([lambda: make_env(args.env, train=True) for _ in range(args.n_envs)])
            venv.seed(args.seed)
        model = A2C("CnnPolicy", venv, ent_coef=0.01, vf_coef=0.25, seed=args.seed, device="cpu", verbose=0)
    else:
        from stable_baselines3.common.env_util import make_vec_env

        venv = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
        model = A2C("MlpPolicy", venv, ent_coef=0.0, seed=args.seed, device="cpu", verbose=0)

    class EvalStop(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_eval, self.eval_s, self.evals, self.consec = args.eval_freq, 0.0, [], 0

        def _on_training_start(self):
            # the clock starts after SB3's first env reset (HSA2C's starts at its first update): a
            # seeded Atari reset reloads the ROM, ~0.15 s per environment
            nonlocal t0
            t0 = time.perf_counter()

        def _on_step(self):
            if args.eval_episodes == 0 or self.num_timesteps < self.next_eval:
                return True
            te = time.perf_counter()
            rets = _eval_returns(args.env, lambda o: self.model.predict(o, deterministic=True)[0],
                                 args.eval_episodes)
            self.evals.append({"env_steps": self.num_timesteps, "wall_seconds": te - t0 - self.eval_s,
                               "eval_return_mean": float(rets.mean()), "eval_return_std": float(rets.std())})
            self.next_eval = (self.num_timesteps // args.eval_freq + 1) * args.eval_freq
            self.eval_s += time.perf_counter() - te
            if args.target is not None:
                self.consec = self.consec + 1 if rets.mean() >= args.target else 0
                if self.consec >= 3:
                    return False
            return True

    cb = EvalStop()
    t0 = time.perf_counter()
    model.learn(args.max_steps, callback=cb)
    wall = time.perf_counter() - t0
    train_s = wall - cb.eval_s
    solved = None
    if args.target is not None:
        run = 0
        for e in cb.evals:
            run = run + 1 if e["eval_return_mean"] >= args.target else 0
            if run >= 3:
                solved = e
                break
    return {"env": args.env, "algorithm": "sb3-a2c", "solved": bool(solved) if args.target is not None else None,
            "seconds_to_target": solved["wall_seconds"] if solved else None,
            "env_steps_to_target": solved["env_steps"] if solved else None,
            "env_steps": int(model.num_timesteps), "train_seconds": train_s, "eval_seconds": cb.eval_s,
            "env_steps_per_second": model.num_timesteps / train_s, "evaluations": cb.evals}


def child_raw(args):
    """Raw env steps/s with random actions (one env, our wrappers): the ceiling."""
    from algorithms.hsa2c.envs import make_env

    env = make_env(args.env, train=True)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    n = env.action_space.n
    acts = rng.integers(0, n, args.max_steps)
    t0 = time.perf_counter()
    for i in range(args.max_steps):
        _, _, term, trunc, _ = env.step(acts[i])
        if term or trunc:
            env.reset()
    return {"env": args.env, "algorithm": "raw", "env_steps": args.max_steps,
            "env_steps_per_second": args.max_steps / (time.perf_counter() - t0)}


def _cpu_seconds():
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def run_child(args):
    import torch

    torch.set_num_threads(args.torch_threads)
    fn = {"hsa2c": child_hsa2c, "a3c": child_a3c, "a3c-classic": child_a3c_classic, "sb3": child_sb3,
          "raw": child_raw}[args.child]
    cpu0 = _cpu_seconds()
    out = fn(args)
    if out is not None:
        # CPU seconds of this process and its children (not of other MPI ranks): a load-robust figure
        out["cpu_seconds"] = _cpu_seconds() - cpu0
        with open(args.json, "w") as f:
            json.dump(out, f, default=float)


# ============================================================================ parent


def launch(system, env, seed, max_steps, *, target=None, eval_freq=5000, eval_episodes=10, n_envs=None,
           threads=1, atari=False, timeout=1800, extra=()):
    """Run one child; returns its result dict (or {"error": ...})."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="rlbench-")
    os.close(fd)
    kind = {"hsa2c": "hsa2c", "hsa2c-2t": "hsa2c", "hsa2c-mpi3": "hsa2c", "a3c": "a3c", "a3c-classic": "a3c-classic",
            "sb3": "sb3", "raw": "raw"}[system.split(":")[0]]
    if n_envs is None:
        n_envs = 1 if kind.startswith("a3c") else 8
    if system == "hsa2c-2t":
        threads = 2
    if kind.startswith("a3c"):
        threads = 2  # worker processes
    cmd = ["-m", "benchmarks.rl", "--child", kind, "--env", env, "--seed", str(seed), "--max-steps", str(max_steps),
           "--eval-freq", str(eval_freq), "--eval-episodes", str(eval_episodes), "--n-envs", str(n_envs),
           "--threads", str(threads), "--json", path]
    if target is not None:
        cmd += ["--target", str(target)]
    if atari:
        cmd += ["--atari"]
    cmd += list(extra)
    if system.startswith("hsa2c-mpi"):
        full = [os.path.join(BIN, "mpiexec"), "-n", "3", sys.executable, "-m", "mpi4py"] + cmd
    else:
        full = [sys.executable] + cmd
    t0 = time.perf_counter()
    try:
        r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(HERE))
        if r.returncode != 0:
            return {"error": f"exit {r.returncode}: {r.stderr.strip()[-400:]}"}
        with open(path) as f:
            out = json.load(f)
        out["process_seconds"] = time.perf_counter() - t0
        return out
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    finally:
        os.unlink(path)


def med_solved(runs, key):
    """Median of ``key`` over the runs that did not fail, an unsolved run counting as never solved
    (infinite): None ("-") when at least half of them did not solve."""
    xs = [r[key] if r.get("solved") else math.inf for r in runs if "error" not in r]
    m = statistics.median(xs) if xs else math.inf
    return None if math.isinf(m) else m


def fmt(x, f=".1f"):
    return "-" if x is None else format(x, f)


def part_cartpole(a, log):
    systems = a.systems.split(",")
    runs = {s: [] for s in systems}
    for seed in range(a.seeds):
        for s in systems:
            r = launch(s, "CartPole-v1", seed, a.cartpole_steps, target=475)
            runs[s].append(r)
            log(f"  cartpole seed {seed} {s:11s}: " + (r["error"] if "error" in r else
                f"solved={r['solved']} {fmt(r['seconds_to_target'])} s {fmt(r['env_steps_to_target'], 'd')} steps, "
                f"{r['env_steps_per_second']:.0f} steps/s"))
    raw = [launch("raw", "CartPole-v1", 0, 100_000) for _ in range(3)]
    raw_rate = med([r.get("env_steps_per_second") for r in raw])
    sb3 = runs.get("sb3", [])
    sb3_t = med_solved(sb3, "seconds_to_target")
    sb3_sps = med([r.get("env_steps_per_second") for r in sb3 if "error" not in r])
    lines = ["| system | solved | median s to 475 | x SB3 | median steps to 475 | median train steps/s | x SB3 |",
             "|---|---|---|---|---|---|---|"]
    medians = {}
    for s in systems:
        rs = [r for r in runs[s] if "error" not in r]
        t = med_solved(rs, "seconds_to_target")
        st = med_solved(rs, "env_steps_to_target")
        sps = med([r["env_steps_per_second"] for r in rs])
        medians[s] = (t, sps)
        lines.append(f"| {LABELS.get(s, s)} | {sum(bool(r.get('solved')) for r in rs)}/{len(runs[s])} | {fmt(t)} | "
                     f"{fmt(t / sb3_t if t and sb3_t else None, '.2f')} | {fmt(st, '.0f')} | {fmt(sps, '.0f')} | "
                     f"{fmt(sps / sb3_sps if sps and sb3_sps else None, '.2f')} |")
    if "a3c" in medians and "a3c-classic" in medians:
        (t, sps), (tc, spsc) = medians["a3c"], medians["a3c-classic"]
        lines.append(f"\nOur A3C / {LABELS['a3c-classic']} (same seeds, interleaved): median time to solve "
                     f"{fmt(t / tc if t and tc else None, '.2f')} x, median train steps/s "
                     f"{fmt(sps / spsc if sps and spsc else None, '.2f')} x.")
    lines.append("\nThe medians of time and steps to solve count an unsolved run as never solved (\"-\" when half or "
                 "more of the runs did not solve).")
    lines.append(f"\nRaw CartPole-v1 (one env, random actions, our wrappers): {fmt(raw_rate, '.0f')} steps/s.")
    per_seed = ["\n| system | " + " | ".join(f"seed {i}" for i in range(a.seeds)) + " |",
                "|---|" + "---|" * a.seeds]
    for s in systems:
        per_seed.append(f"| {LABELS.get(s, s)} | " + " | ".join(
            ("err" if "error" in r else (f"{r['seconds_to_target']:.1f} s / {r['env_steps_to_target']}" if r.get("solved")
                                          else f"not solved ({r['env_steps']} steps)")) for r in runs[s]) + " |")
    return "\n".join(lines + per_seed), {"runs": runs, "raw": raw}


def part_threads(a, log):
    configs = [("1 thread x 8 envs", "hsa2c", dict(threads=1, n_envs=8)),
               ("2 threads x 8 envs", "hsa2c", dict(threads=2, n_envs=8)),
               ("1 thread x 16 envs (batched)", "hsa2c", dict(threads=1, n_envs=16)),
               ("mpiexec -n 3: 2 workers x 8 envs", "hsa2c-mpi3", dict(threads=1, n_envs=8))]
    res = {c[0]: [] for c in configs}
    for rep in range(a.reps):
        for name, system, kw in configs:
            r = launch(system, "CartPole-v1", rep, a.thread_steps, eval_episodes=0, **kw)
            res[name].append(r.get("env_steps_per_second"))
            log(f"  threads rep {rep} {name}: {r.get('env_steps_per_second', r.get('error'))}")
    base = med(res[configs[0][0]])
    lines = ["| CartPole-v1, no evaluation | median train env steps/s | x 1 thread |", "|---|---|---|"]
    for name, _, _ in configs:
        v = med(res[name])
        lines.append(f"| {name} | {fmt(v, '.0f')} | {fmt(v / base if v and base else None, '.2f')} |")
    return "\n".join(lines), res


#: Pong configurations: (label, system, threads, envs per thread, extra child arguments)
SB3_1T = "SB3 A2C CnnPolicy, 16 envs, torch 1 thread"  # the ratio columns' baselines
SB3_2T = "SB3 A2C CnnPolicy, 16 envs, torch 2 threads"
PONG = [
    ("HSA2C, 1 thread x 16 envs", "hsa2c", 1, 16, ()),
    ("HSA2C, 2 threads x 8 envs", "hsa2c", 2, 8, ()),
    ("HSA2C, 2 threads x 16 envs", "hsa2c", 2, 16, ()),
    ("HSA2C, 1 thread x 16 envs, Python env wrappers", "hsa2c", 1, 16, ("--env-backend", "python")),
    ("HSA2C, 2 threads x 16 envs, Python env wrappers", "hsa2c", 2, 16, ("--env-backend", "python")),
    (SB3_1T, "sb3", 1, 16, ()),
    (SB3_2T, "sb3", 1, 16, ("--torch-threads", "2")),
    # as many environments as HSA2C's fastest row: does a bigger batch alone close the gap?
    ("SB3 A2C CnnPolicy, 32 envs, torch 2 threads", "sb3", 1, 32, ("--torch-threads", "2")),
    ("SB3 A2C CnnPolicy, 16 envs, torch 2 threads, SB3's own make_atari_env + VecFrameStack", "sb3", 1, 16,
     ("--torch-threads", "2", "--sb3-wrappers")),
]


def part_pong(a, log):
    res = {label: [] for label, *_ in PONG}
    for rep in range(a.reps):
        for label, system, threads, n_envs, extra in PONG:
            r = launch(system, "ALE/Pong-v5", rep, a.pong_steps, eval_episodes=0, n_envs=n_envs, threads=threads,
                       atari=True, extra=extra)
            res[label].append(r.get("env_steps_per_second"))
            log(f"  pong rep {rep} {label}: {r.get('env_steps_per_second', r.get('error'))}")
    raw = launch("raw", "ALE/Pong-v5", 0, 3000)
    res["raw"] = [raw.get("env_steps_per_second")]
    sb1, sb2 = med(res[SB3_1T]), med(res[SB3_2T])
    lines = [f"| ALE/Pong-v5, {a.pong_steps} agent steps, {a.reps} runs | median agent steps/s | x SB3 1 thread "
             "| x SB3 2 threads |", "|---|---|---|---|"]
    for label, *_ in PONG:
        v = med(res[label])
        lines.append(f"| {label} | {fmt(v, '.0f')} | {fmt(v / sb1 if v and sb1 else None, '.2f')} "
                     f"| {fmt(v / sb2 if v and sb2 else None, '.2f')} |")
    lines.append(f"| raw env (one env, random actions, Python wrappers) | {fmt(med(res['raw']), '.0f')} | | |")
    return "\n".join(lines), res


def part_minatar(a, log):
    r = launch("hsa2c", "MinAtar/Breakout-v1", 0, a.minatar_steps, eval_freq=max(5000, a.minatar_steps // 20),
               eval_episodes=10, n_envs=16)
    if "error" in r:
        return f"MinAtar run failed: {r['error']}", r
    ev = r["evaluations"]
    log(f"  minatar: {r['env_steps']} steps, {r['env_steps_per_second']:.0f} steps/s, final "
        f"{r['final_eval_return_mean']}")
    png = os.path.join(a.results_dir, f"rl_minatar{a.suffix}.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([e["env_steps"] for e in ev], [e["eval_return_mean"] for e in ev], "o-", label="HSA2C eval (10 ep.)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("return")
        ax.set_title(f"MinAtar/Breakout-v1, HSA2C 1 process x 16 envs ({r['env_steps_per_second']:.0f} steps/s)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png, dpi=100)
    except ImportError:
        png = None
    text = (f"MinAtar/Breakout-v1: {r['env_steps']} env steps at {r['env_steps_per_second']:.0f} steps/s "
            f"(train {r['train_seconds']:.0f} s); eval return mean: "
            + ", ".join(f"{e['env_steps'] // 1000}k: {e['eval_return_mean']:.1f}" for e in ev)
            + (f"\n\n![MinAtar learning curve]({os.path.basename(png)})" if png else ""))
    return text, r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", default=["threads", "cartpole", "pong", "minatar"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="CartPole systems, comma-separated (default: all of "
                   + ", ".join(SYSTEMS) + ")")
    p.add_argument("--results-dir", default=RESULTS, help="where the .md/.json/.png results go "
                   "(default benchmarks/results)")
    p.add_argument("--cartpole-steps", type=int, default=300_000, help="budget per CartPole run (default 3e5)")
    # child options
    p.add_argument("--child", default=None)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--target", type=float, default=None)
    p.add_argument("--eval-freq", type=int, default=5000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--atari", action="store_true")
    p.add_argument("--env-backend", default="auto", help="HSA2C's Atari environments: auto (ale-py's vector env) "
                   "| python")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--sb3-wrappers", action="store_true", help="SB3 on Atari: its own make_atari_env + VecFrameStack "
                   "instead of our Python wrappers")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.child:
        return run_child(a)
    bad = [s for s in a.systems.split(",") if s not in SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}")
    a.suffix = "_quick" if a.quick else ""
    a.seeds = a.seeds or (3 if a.quick else 5)
    a.reps = 2 if a.quick else 3
    a.thread_steps = 40_000 if a.quick else 100_000
    a.pong_steps = 3200 if a.quick else 9600
    a.minatar_steps = 100_000 if a.quick else 300_000
    os.makedirs(a.results_dir, exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import platform

    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{available_cores()} cores, load average {os.getloadavg()[0]:.1f} at start")
    for part in a.parts:
        log(f"== {part}")
        text, data = {"cartpole": part_cartpole, "threads": part_threads, "pong": part_pong,
                      "minatar": part_minatar}[part](a, log)
        text += f"\n\n({head}, {os.getloadavg()[0]:.1f} at the end; torch 1 thread per process unless a row says otherwise.)\n"
        print(f"\n## {part}\n\n{text}", flush=True)
        with open(os.path.join(a.results_dir, f"rl_{part}{a.suffix}.md"), "w") as f:
            f.write(f"## {part}\n\n{text}")
        with open(os.path.join(a.results_dir, f"rl_{part}{a.suffix}.json"), "w") as f:
            json.dump(data, f, default=float, indent=1)
    # the combined report: every part's latest results
    sections = []
    for part in ("threads", "cartpole", "pong", "minatar"):
        path = os.path.join(a.results_dir, f"rl_{part}{a.suffix}.md")
        if os.path.exists(path):
            with open(path) as f:
                sections.append(f.read())
    with open(os.path.join(a.results_dir, f"rl{a.suffix}.md"), "w") as f:
        f.write(f"# RL benchmark{' (quick)' if a.quick else ''}\n\n" + "\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
