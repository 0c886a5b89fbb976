#!/usr/bin/env python
"""Atari for real: HSA2C trained on Pong to a winning score, timed; curves you can compare.

Parts:

``pong``     trains HSA2C on ``PongNoFrameskip-v4`` (no sticky actions, as the published A2C curves;
             ``--env ALE/Pong-v5`` for sticky actions 0.25; the A2C/A3C preprocessing of
             ``algorithms/hsa2c/envs.py``, frame skip 4) with the standard
             A2C Atari settings - 16 envs per thread, n_steps 5, RMSprop *TF-style* (``rmsprop_tf``)
             lr 7e-4 alpha 0.99 eps 1e-5, entropy 0.01, value 0.25, gradient clip 0.5, gamma 0.99 -
             on 2 Hogwild threads (the default for images on 2 cores), until the mean return of
             ``--eval-episodes`` deterministic evaluation episodes (separate seeds 1e6 + i, time
             excluded from the clock) reaches ``--target`` three evaluations in a row, or
             ``--max-seconds``. One run per seed, one after another (never two at once on 2 cores).
             Each run is a plain ``dpsgd a2c`` command (printed), writing its live ``progress.csv``,
             TensorBoard events, model and checkpoints into ``--runs-dir``/pong-hsa2c-s<seed>;
             an interrupted run continues with ``--resume`` (the command is printed too).
             The peers: ``dpsgd a3c`` (the A3C baseline, a plain command) and Stable-Baselines3 A2C
             (``python -m benchmarks.sb3_pong``, same settings and environments), each for the
             training time HSA2C needed; their run directories go to ``report`` beside HSA2C's.
``report``   the table, the JSON and the curves (PNG: evaluation return and training episode return
             against wall time and against frames) from run directories, finished or still running.
``minatar``  HSA2C (one process, its defaults: 2 threads x 16 envs on 2 cores; with torch's and with
             TF's RMSprop) and the A3C baseline (2 worker processes x 1 env, its defaults) on MinAtar
             Breakout and Space Invaders for a fixed budget of env steps, 3 seeds each, one run at
             a time: the training return as the MinAtar paper plots it (moving average over 100
             episodes) at fixed frames, the final evaluation, steps/s; PNG of the curves.

    python -m benchmarks.atari pong --seeds 0 --max-seconds 6000     # up to 100 min a seed on 2 cores
    python -m benchmarks.atari report runs/atari/pong-hsa2c-s0       # any time, also mid-run
    python -m benchmarks.atari report RUN --previous benchmarks/results/atari/pong.json  # keep earlier rows
    python -m benchmarks.atari minatar --steps 300000 --seeds 0 1 2  # ~15 min

Outputs: ``benchmarks/results/atari/pong.{md,json,png}`` (``--results-dir``). The run directories
(models of 7 MB, checkpoints) stay out of git.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

from dpsgd.config import available_cores

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "atari")
BIN = os.path.dirname(sys.executable)
FRAMESKIP = 4  # emulator frames per agent step

#: the HSA2C Pong settings (A2C's Atari settings; rmsprop_tf: see algorithms/hsa2c/README.md)
PONG_ARGS = ["--n-envs", "16", "--n-steps", "5", "--lr", "7e-4", "--optimizer", "rmsprop_tf",
             "--ent-coef", "0.01", "--vf-coef", "0.25", "--max-grad-norm", "0.5"]


def pong_command(seed: int, out: str, a) -> list[str]:
    return ([os.path.join(BIN, "dpsgd"), "a2c", "--env", a.env] + PONG_ARGS +
            ["--total-steps", str(a.total_steps), "--eval-freq", str(a.eval_freq), "--eval-episodes",
             str(a.eval_episodes), "--target-return", str(a.target), "--checkpoint-every", "300",
             "--max-seconds", str(a.max_seconds), "--no-progress", "--seed", str(seed), "--out", out])


def part_pong(a) -> int:
    os.makedirs(a.runs_dir, exist_ok=True)
    dirs = []
    for seed in a.seeds:
        out = os.path.join(a.runs_dir, f"{a.env.replace('/', '-').lower()}-hsa2c-s{seed}")
        cmd = pong_command(seed, out, a)
        print("$ " + shlex.join(cmd), flush=True)
        print(f"  (resume a cut run: the same command with --resume {out})", flush=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_THREADING_LAYER="threadsafe")
        with open(out + ".log", "w") as log:
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        print(f"  seed {seed}: exit {r.returncode} (log {out}.log)", flush=True)
        dirs.append(out)
    return report(dirs, a)


# ============================================================================ report


def read_run(d: str) -> dict:
    """A run directory's curves and figures (its metrics.json when it has ended)."""
    train, evals, losses = [], [], []
    with open(os.path.join(d, "progress.csv"), newline="") as f:
        for r in csv.DictReader(f):
            if not r.get("env_steps"):
                continue
            steps = int(float(r["env_steps"]))
            wall = float(r["wall_seconds"]) if r.get("wall_seconds") else None
            if r["kind"] == "train":
                train.append((steps, wall, float(r["episode_return"])))
            elif r["kind"] == "eval":
                evals.append((steps, wall, float(r["episode_return"]), float(r["return_std"] or 0)))
            elif r["kind"] == "losses":
                losses.append((steps, wall, r.get("entropy"), r.get("sps")))
    m = {}
    mp = os.path.join(d, "metrics.json")
    if os.path.isfile(mp):
        with open(mp) as f:
            m = json.load(f)
    cfg = {}
    cp = os.path.join(d, "config.json")
    if os.path.isfile(cp):
        with open(cp) as f:
            cfg = json.load(f)
    return {"dir": d, "train": train, "evals": evals, "losses": losses, "metrics": m, "config": cfg,
            "finished": bool(m)}


def solved_at(evals, target, k=3):
    run = 0
    for e in evals:
        run = run + 1 if e[2] >= target else 0
        if run >= k:
            return e
    return None


def run_algorithm(run: dict) -> str:
    """The run's algorithm: its metrics' (a finished run), its config's command (a3c, sb3-a2c of
    ``benchmarks/sb3_pong.py``; a2c is HSA2C) or its directory name's (``<env>-<alg>-s<seed>``)."""
    cmd = {"a2c": "hsa2c", "a3c": "a3c", "sb3-a2c": "sb3-a2c"}.get(run["config"].get("command"))
    return run["metrics"].get("algorithm") or cmd or os.path.basename(run["dir"].rstrip("/")).split("-")[-2]


def summarize(run: dict, target: float) -> dict:
    m = run["metrics"]
    ev = run["evals"]
    hit = solved_at(ev, target)
    last_steps = max([t[0] for t in run["train"]] + [e[0] for e in ev] + [0])
    last_wall = max([t[1] or 0 for t in run["train"]] + [e[1] or 0 for e in ev] + [0])
    tail = [t[2] for t in run["train"][-20:]]
    return {
        "run": os.path.basename(run["dir"].rstrip("/")),
        "algorithm": run_algorithm(run),
        "finished": run["finished"],
        "solved": hit is not None,
        "seconds_to_target": hit[1] if hit else None,
        "agent_steps_to_target": hit[0] if hit else None,
        "frames_to_target": hit[0] * FRAMESKIP if hit else None,
        "agent_steps": m.get("env_steps", last_steps),
        # a run resumed with --resume: the whole run's clocks (metrics.json's plain figures are the last part's)
        "train_seconds": m.get("train_seconds_total", m.get("train_seconds", last_wall)),
        "eval_seconds": m.get("eval_seconds_total", m.get("eval_seconds")),
        "wall_seconds": (m["train_seconds_total"] + m["eval_seconds_total"] if m.get("train_seconds_total")
                         and m.get("eval_seconds_total") is not None else m.get("wall_seconds")),
        "resumed_at_agent_steps": m.get("resumed_at_env_steps"),
        "agent_steps_per_second": (m["env_steps"] / m["train_seconds_total"] if m.get("train_seconds_total")
                                   else m.get("env_steps_per_second", last_steps / last_wall if last_wall else None)),
        "best_eval": max((e[2] for e in ev), default=None),
        "last_eval": ev[-1][2] if ev else None,
        "final_eval": m.get("final_eval_return_mean"),
        "train_return_last20": statistics.mean(tail) if tail else None,
        "evaluations": len(ev),
        "argv": run["config"].get("argv"),
        "env": run["config"].get("env"),
        "stopped_by_signal": m.get("stopped_by_signal"),
        "note": m.get("note"),
    }


def _f(x, fmt):
    return "-" if x is None else format(x, fmt)


def plot(runs, png, target):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in runs:
        name = os.path.basename(run["dir"].rstrip("/"))
        tr = run["train"]
        ev = run["evals"]
        w = 20
        if tr:
            sm = [statistics.mean(x[2] for x in tr[max(0, i - w + 1):i + 1]) for i in range(len(tr))]
            axes[0].plot([x[1] / 3600 for x in tr], sm, lw=1, alpha=0.7, label=f"{name} train (mean of {w} ep.)")
            axes[1].plot([x[0] * FRAMESKIP / 1e6 for x in tr], sm, lw=1, alpha=0.7)
        if ev:
            axes[0].plot([e[1] / 3600 for e in ev], [e[2] for e in ev], "o-", ms=3, label=f"{name} eval")
            axes[1].plot([e[0] * FRAMESKIP / 1e6 for e in ev], [e[2] for e in ev], "o-", ms=3)
    for ax in axes:
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("training wall time (h, evaluation excluded)")
    axes[1].set_xlabel("frames (M; 4 per agent step)")
    axes[0].set_ylabel("episode return")
    axes[0].legend(fontsize=7, loc="lower right")
    envs = sorted({(r["config"].get("env") or "?") for r in runs})
    algos = sorted({run_algorithm(r).upper() for r in runs})
    fig.suptitle(f"{' and '.join(algos)} on {', '.join(envs)}, 2 cores")
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


def previous_runs(path: str, names) -> tuple[list, list]:
    """Runs kept only in an earlier report's JSON (their directories are gone): their summary rows
    and pseudo-runs with their curves (training episodes only in reports written since 2026-12-02 15:30)."""
    with open(path) as f:
        old = json.load(f)
    rows, runs = [], []
    for r in old["runs"]:
        if names and r["run"] not in names:
            continue
        src = f"from {os.path.basename(path)}"
        note = r.get("note") or ""
        if not re.search(r"\bfrom \S+\.json", note):  # a run kept through several reports names its first JSON once
            note = (note + "; " if note else "") + src
        rows.append(dict(r, note=note))
        curves = old["curves"].get(r["run"], {})
        runs.append({"dir": r["run"], "train": [tuple(x) for x in curves.get("train", [])], "evals": curves.get("evals", []),
                     "losses": [], "metrics": {"algorithm": r["algorithm"]}, "config": {"env": r["env"]},
                     "finished": r["finished"]})
    return rows, runs


def report(dirs, a) -> int:
    runs = [read_run(d) for d in dirs]
    rows = [summarize(r, a.target) for r in runs]
    if a.previous:
        old_rows, old_runs = previous_runs(a.previous, a.previous_runs)
        rows, runs = old_rows + rows, old_runs + runs
    os.makedirs(a.results_dir, exist_ok=True)
    png = plot(runs, os.path.join(a.results_dir, "pong.png"), a.target)
    lines = [f"Pong to a mean evaluation return >= {a.target:g} ({a.eval_episodes} episodes) three "
             "evaluations in a row; clock = training wall time, evaluation excluded. PongNoFrameskip-v4: no sticky "
             "actions; ALE/Pong-v5: sticky actions 0.25.", "",
             "| run | env | solved | s to target | agent steps to target | frames to target | agent steps | "
             "agent steps/s (whole run) | evaluation s | resumed at | best eval | last eval | final eval | "
             "train return (last 20 ep.) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']}{'' if r['finished'] else ' (running)'} | {r['env']} | {'yes' if r['solved'] else 'no'} | "
                     f"{_f(r['seconds_to_target'], '.0f')} | {_f(r['agent_steps_to_target'], ',')} | "
                     f"{_f(r['frames_to_target'], ',')} | {_f(r['agent_steps'], ',')} | "
                     f"{_f(r['agent_steps_per_second'], ',.0f')} | {_f(r['eval_seconds'], '.0f')} | "
                     f"{_f(r['resumed_at_agent_steps'], ',')} | {_f(r['best_eval'], '.1f')} | "
                     f"{_f(r['last_eval'], '.1f')} | {_f(r['final_eval'], '.1f')} | "
                     f"{_f(r['train_return_last20'], '.1f')} |")
    # the runs of one env side by side at the training time the shortest of them reached
    for env in sorted({r["env"] for r in rows}):
        # (runs kept from a JSON written before its "train" curves: steps from the evaluations)
        same = [(run, r["run"]) for run, r in zip(runs, rows) if r["env"] == env]
        if len(same) < 2:
            continue
        t = min(max([x[1] or 0 for x in run["train"] + run["evals"]] + [0]) for run, _ in same)
        lines += ["", f"{env} at equal training time ({t:.0f} s, evaluation excluded):", "",
                  "| run | agent steps by then | training return (last 20 ep.) | last evaluation |", "|---|---:|---:|---:|"]
        for run, name in same:
            tr = [x for x in run["train"] if (x[1] or 0) <= t]
            ev = [e for e in run["evals"] if (e[1] or 0) <= t]
            steps = max([x[0] for x in tr] + [e[0] for e in ev], default=None)
            tail = [x[2] for x in tr[-20:]]
            lines.append(f"| {name} | {_f(steps, ',')} | "
                         f"{_f(statistics.mean(tail) if tail else None, '.1f')} | {_f(ev[-1][2] if ev else None, '.1f')} |")
    for env, alg in sorted({(r["env"], r["algorithm"]) for r in rows if r["solved"]}):
        same = [r for r in rows if r["env"] == env and r["algorithm"] == alg]
        lines.append(f"\n{alg} on {env}: median over its {len(same)} run(s), unsolved counting as never: "
                     f"{_f(median_solved(same, 'seconds_to_target'), '.0f')} s to target.")
    for r in rows:
        if r.get("note"):
            lines.append(f"\n{r['run']}: {r['note']}.")
    if rows and rows[0]["argv"]:
        lines.append("\nCommand: `dpsgd " + shlex.join(rows[0]["argv"]) + "`")
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{available_cores()} cores, load average {os.getloadavg()[0]:.1f}")
    lines.append(f"\n(report written {head}.)")
    if png:
        lines.append(f"\n![Pong curves]({os.path.basename(png)})")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.results_dir, "pong.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results_dir, "pong.json"), "w") as f:
        json.dump({"runs": rows, "curves": {r["run"]: {"evals": run["evals"], "losses": run["losses"],
                                                       "train": run["train"]}
                                            for r, run in zip(rows, runs)}}, f, indent=1, default=float)
    return 0


# ============================================================================ MinAtar

MINATAR_GAMES = ("MinAtar/Breakout-v1", "MinAtar/SpaceInvaders-v1")
#: system -> (command, extra arguments): each system's own defaults otherwise
MINATAR_SYSTEMS = {
    "hsa2c": ("a2c", ["--n-envs", "16"]),
    "hsa2c-rmsprop_tf": ("a2c", ["--n-envs", "16", "--optimizer", "rmsprop_tf"]),
    "a3c": ("a3c", []),
}
#: the MinAtar paper's curves (Young & Tian 2019, github.com/kenjyoung/MinAtar img/learning_curves.gif:
#: moving average of training returns over 100 episodes, 30 seeds), read off the figure at 0.5M and
#: 1M frames (MinAtar frames = env steps): (DQN, AC(0.8))
MINATAR_PAPER = {"MinAtar/Breakout-v1": {500_000: (8.5, 6.5), 1_000_000: (9.5, 9.5)},
                 "MinAtar/SpaceInvaders-v1": {500_000: (25, 30), 1_000_000: (30, 50)}}


def moving_return(train, at_steps, window=100):
    """Mean return of the last ``window`` training episodes finished by ``at_steps`` env steps."""
    done = [r for s, _, r in train if s <= at_steps]
    return statistics.mean(done[-window:]) if done else None


def part_minatar(a) -> int:
    os.makedirs(a.runs_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_THREADING_LAYER="threadsafe")
    results = []
    for game in MINATAR_GAMES:
        for seed in a.seeds:
            for system in a.systems:
                cmd, extra = MINATAR_SYSTEMS[system]
                out = os.path.join(a.runs_dir, f"{game.split('/')[1].split('-')[0].lower()}-{system}-s{seed}")
                argv = [os.path.join(BIN, "dpsgd"), cmd, "--env", game, "--total-steps", str(a.steps), "--seed",
                        str(seed), "--eval-freq", str(max(10_000, a.steps // 10)), "--eval-episodes", "10",
                        "--no-progress", "--out", out] + extra
                print("$ " + shlex.join(argv), file=sys.stderr, flush=True)
                r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
                if r.returncode != 0:
                    results.append({"game": game, "system": system, "seed": seed, "error": r.stderr[-400:]})
                    continue
                run = read_run(out)
                m = run["metrics"]
                row = {"game": game, "system": system, "seed": seed, "steps_per_second": m["env_steps_per_second"],
                       "final_eval": m["final_eval_return_mean"], "env_steps": m["env_steps"],
                       "train_seconds": m["train_seconds"], "dir": out,
                       "train_return": {k: moving_return(run["train"], k) for k in (a.steps // 2, a.steps)},
                       "evals": [(e[0], e[2]) for e in run["evals"]],
                       "curve": [(s_, r_) for s_, _, r_ in run["train"]]}
                results.append(row)
                print(f"  {game} {system} seed {seed}: {row['steps_per_second']:.0f} steps/s, final eval "
                      f"{row['final_eval']:.1f}, train return (last 100 ep.) {row['train_return'][a.steps]}",
                      file=sys.stderr, flush=True)
    return minatar_report(results, a)


def minatar_report(results, a) -> int:
    ok = [r for r in results if "error" not in r]
    half, full = a.steps // 2, a.steps
    lines = [f"MinAtar, {a.steps:,} env steps per run, seeds {', '.join(map(str, a.seeds))}, one run at a time on the "
             "2 cores; medians over seeds. Training return = mean of the last 100 training episodes (the MinAtar "
             "paper's measure); final eval = 10 deterministic episodes of the final model.", "",
             f"| game | system | env steps/s | training return at {half:,} | at {full:,} | final eval | "
             f"paper DQN / AC(0.8) at {half:,} | at {min(full, 1_000_000):,} |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for game in MINATAR_GAMES:
        paper = MINATAR_PAPER.get(game, {})
        for system in a.systems:
            rs = [r for r in ok if r["game"] == game and r["system"] == system]
            if not rs:
                continue

            def med(f):
                xs = [f(r) for r in rs if f(r) is not None]
                return statistics.median(xs) if xs else None
            p1 = paper.get(half)
            p2 = paper.get(min(full, 1_000_000))
            lines.append(f"| {game} | {system} | {_f(med(lambda r: r['steps_per_second']), ',.0f')} | "
                         f"{_f(med(lambda r: r['train_return'][half]), '.1f')} | "
                         f"{_f(med(lambda r: r['train_return'][full]), '.1f')} | "
                         f"{_f(med(lambda r: r['final_eval']), '.1f')} | "
                         f"{'%g / %g' % p1 if p1 else '-'} | {'%g / %g' % p2 if p2 else '-'} |")
    errs = [r for r in results if "error" in r]
    if errs:
        lines.append(f"\nFailed runs: {len(errs)} ({'; '.join(r['system'] + ' ' + r['game'] for r in errs)}).")
    lines.append("\nThe paper's figures are read off its learning-curve figure (30 seeds, its own AC(lambda) with "
                 "one environment and eligibility traces, and DQN): orientation at equal frames, not a same-run peer.")
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{available_cores()} cores, load average {os.getloadavg()[0]:.1f}")
    lines.append(f"\n(written {head}.)\n\n![MinAtar curves](minatar.png)")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(a.results_dir, exist_ok=True)
    with open(os.path.join(a.results_dir, "minatar.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results_dir, "minatar.json"), "w") as f:
        json.dump([{k: v for k, v in r.items() if k != "curve"} for r in results], f, indent=1, default=float)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(MINATAR_GAMES), figsize=(11, 4))
        colors = {"hsa2c": "C0", "hsa2c-rmsprop_tf": "C2", "a3c": "C1"}
        for ax, game in zip(axes, MINATAR_GAMES):
            for r in ok:
                if r["game"] != game or not r["curve"]:
                    continue
                c = r["curve"]
                sm = [statistics.mean(x[1] for x in c[max(0, i - 99):i + 1]) for i in range(len(c))]
                ax.plot([x[0] / 1e6 for x in c], sm, color=colors[r["system"]], lw=1, alpha=0.8,
                        label=r["system"] if r["seed"] == a.seeds[0] else None)
            for steps, (dqn, ac) in MINATAR_PAPER.get(game, {}).items():
                if steps <= a.steps:
                    ax.plot([steps / 1e6], [ac], "k^", ms=6, label="paper AC(0.8)" if steps == half else None)
                    ax.plot([steps / 1e6], [dqn], "ks", ms=5, label="paper DQN" if steps == half else None)
            ax.set_title(game)
            ax.set_xlabel("env steps (M)")
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("training return (mean of 100 episodes)")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.results_dir, "minatar.png"), dpi=100)
    except ImportError:
        pass
    return 0


def median_solved(rows, key):
    xs = sorted(r[key] if r["solved"] else float("inf") for r in rows)
    m = statistics.median(xs) if xs else float("inf")
    return None if m == float("inf") else m


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("pong", "report", "minatar"))
    p.add_argument("dirs", nargs="*", help="report: run directories")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--env", default="PongNoFrameskip-v4",
                   help="pong: PongNoFrameskip-v4 (default: no sticky actions, as the published A2C curves) or "
                        "ALE/Pong-v5 (sticky actions 0.25)")
    p.add_argument("--target", type=float, default=18.0)
    p.add_argument("--eval-freq", type=int, default=200_000, help="agent steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--total-steps", type=int, default=20_000_000)
    p.add_argument("--max-seconds", type=float, default=7200.0)
    p.add_argument("--steps", type=int, default=300_000, help="minatar: env steps per run")
    p.add_argument("--systems", nargs="+", choices=sorted(MINATAR_SYSTEMS), default=list(MINATAR_SYSTEMS),
                   help="minatar: the systems to run (default: all)")
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "atari"))
    p.add_argument("--results-dir", default=RESULTS)
    p.add_argument("--previous", help="report: an earlier pong.json whose runs (directories gone) stay in the "
                                      "table and in the curves")
    p.add_argument("--previous-runs", nargs="*", default=None, help="report: only these runs of --previous")
    a = p.parse_args(argv)
    if a.part == "pong":
        return part_pong(a)
    if a.part == "minatar":
        return part_minatar(a)
    if not a.dirs:
        p.error("report needs run directories")
    return report(a.dirs, a)


if __name__ == "__main__":
    sys.exit(main())
