#!/usr/bin/env python
"""Atari for real: HSA2C trained on Pong to a winning score, timed; curves you can compare.

Parts:

``pong``     trains HSA2C on ``ALE/Pong-v5`` (sticky actions 0.25, the v5 default; full action
             space off; the A2C/A3C preprocessing of ``algorithms/hsa2c/envs.py``) with the standard
             A2C Atari settings - 16 envs per thread, n_steps 5, RMSprop *TF-style* (``rmsprop_tf``)
             lr 7e-4 alpha 0.99 eps 1e-5, entropy 0.01, value 0.25, gradient clip 0.5, gamma 0.99 -
             on 2 Hogwild threads (the default for images on 2 cores), until the mean return of
             ``--eval-episodes`` deterministic evaluation episodes (separate seeds 1e6 + i, time
             excluded from the clock) reaches ``--target`` three evaluations in a row, or
             ``--max-seconds``. One run per seed, one after another (never two at once on 2 cores).
             Each run is a plain ``dpsgd a2c`` command (printed), writing its live ``progress.csv``,
             TensorBoard events, model and checkpoints into ``--runs-dir``/pong-hsa2c-s<seed>;
             an interrupted run continues with ``--resume`` (the command is printed too).
``report``   the table, the JSON and the curves (PNG: evaluation return and training episode return
             against wall time and against frames) from run directories, finished or still running.

    python -m benchmarks.atari pong --seeds 0 --max-seconds 7200     # ~2 h a seed on 2 cores
    python -m benchmarks.atari report runs/atari/pong-hsa2c-s0       # any time, also mid-run

Outputs: ``benchmarks/results/atari/pong.{md,json,png}`` (``--results-dir``). The run directories
(models of 7 MB, checkpoints) stay out of git.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results", "atari")
BIN = os.path.dirname(sys.executable)
FRAMESKIP = 4  # emulator frames per agent step

#: the HSA2C Pong settings (A2C's Atari settings; rmsprop_tf: see algorithms/hsa2c/README.md)
PONG_ARGS = ["--env", "ALE/Pong-v5", "--n-envs", "16", "--n-steps", "5", "--lr", "7e-4", "--optimizer", "rmsprop_tf",
             "--ent-coef", "0.01", "--vf-coef", "0.25", "--max-grad-norm", "0.5"]


def pong_command(seed: int, out: str, a) -> list[str]:
    return ([os.path.join(BIN, "dpsgd"), "a2c"] + PONG_ARGS +
            ["--total-steps", str(a.total_steps), "--eval-freq", str(a.eval_freq), "--eval-episodes",
             str(a.eval_episodes), "--target-return", str(a.target), "--checkpoint-every", "300",
             "--max-seconds", str(a.max_seconds), "--no-progress", "--seed", str(seed), "--out", out])


def part_pong(a) -> int:
    os.makedirs(a.runs_dir, exist_ok=True)
    dirs = []
    for seed in a.seeds:
        out = os.path.join(a.runs_dir, f"pong-hsa2c-s{seed}")
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


def summarize(run: dict, target: float) -> dict:
    m = run["metrics"]
    ev = run["evals"]
    hit = solved_at(ev, target)
    last_steps = max([t[0] for t in run["train"]] + [e[0] for e in ev] + [0])
    last_wall = max([t[1] or 0 for t in run["train"]] + [e[1] or 0 for e in ev] + [0])
    tail = [t[2] for t in run["train"][-20:]]
    return {
        "run": os.path.basename(run["dir"].rstrip("/")),
        "finished": run["finished"],
        "solved": hit is not None,
        "seconds_to_target": hit[1] if hit else None,
        "agent_steps_to_target": hit[0] if hit else None,
        "frames_to_target": hit[0] * FRAMESKIP if hit else None,
        "agent_steps": m.get("env_steps", last_steps),
        "train_seconds": m.get("train_seconds", last_wall),
        "eval_seconds": m.get("eval_seconds"),
        "wall_seconds": m.get("wall_seconds"),
        "agent_steps_per_second": m.get("env_steps_per_second",
                                        last_steps / last_wall if last_wall else None),
        "best_eval": max((e[2] for e in ev), default=None),
        "last_eval": ev[-1][2] if ev else None,
        "final_eval": m.get("final_eval_return_mean"),
        "train_return_last20": statistics.mean(tail) if tail else None,
        "evaluations": len(ev),
        "argv": run["config"].get("argv"),
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
    fig.suptitle("HSA2C on ALE/Pong-v5 (sticky actions), 2 threads x 16 envs, 2 cores")
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png, dpi=100)
    return png


def report(dirs, a) -> int:
    runs = [read_run(d) for d in dirs]
    rows = [summarize(r, a.target) for r in runs]
    os.makedirs(a.results_dir, exist_ok=True)
    png = plot(runs, os.path.join(a.results_dir, "pong.png"), a.target)
    lines = [f"HSA2C on ALE/Pong-v5 to a mean evaluation return >= {a.target:g} ({a.eval_episodes} episodes) three "
             "evaluations in a row; clock = training wall time, evaluation excluded.", "",
             "| run | solved | s to target | agent steps to target | frames to target | agent steps | "
             "agent steps/s (whole run) | best eval | last eval | final eval | train return (last 20 ep.) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['run']}{'' if r['finished'] else ' (running)'} | {'yes' if r['solved'] else 'no'} | "
                     f"{_f(r['seconds_to_target'], '.0f')} | {_f(r['agent_steps_to_target'], ',')} | "
                     f"{_f(r['frames_to_target'], ',')} | {_f(r['agent_steps'], ',')} | "
                     f"{_f(r['agent_steps_per_second'], ',.0f')} | {_f(r['best_eval'], '.1f')} | "
                     f"{_f(r['last_eval'], '.1f')} | {_f(r['final_eval'], '.1f')} | "
                     f"{_f(r['train_return_last20'], '.1f')} |")
    solved = [r for r in rows if r["solved"]]
    if solved:
        lines.append(f"\nMedian over the {len(rows)} run(s), unsolved counting as never: "
                     f"{_f(median_solved(rows, 'seconds_to_target'), '.0f')} s to target.")
    if rows and rows[0]["argv"]:
        lines.append("\nCommand: `dpsgd " + shlex.join(rows[0]["argv"]) + "`")
    head = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
            f"{len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f}")
    lines.append(f"\n(report written {head}.)")
    if png:
        lines.append(f"\n![Pong curves]({os.path.basename(png)})")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(a.results_dir, "pong.md"), "w") as f:
        f.write(text)
    with open(os.path.join(a.results_dir, "pong.json"), "w") as f:
        json.dump({"runs": rows, "curves": {r["run"]: {"evals": run["evals"], "losses": run["losses"]}
                                            for r, run in zip(rows, runs)}}, f, indent=1, default=float)
    return 0


def median_solved(rows, key):
    xs = sorted(r[key] if r["solved"] else float("inf") for r in rows)
    m = statistics.median(xs) if xs else float("inf")
    return None if m == float("inf") else m


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("pong", "report"))
    p.add_argument("dirs", nargs="*", help="report: run directories")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--target", type=float, default=18.0)
    p.add_argument("--eval-freq", type=int, default=200_000, help="agent steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=5)
    p.add_argument("--total-steps", type=int, default=20_000_000)
    p.add_argument("--max-seconds", type=float, default=7200.0)
    p.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", "atari"))
    p.add_argument("--results-dir", default=RESULTS)
    a = p.parse_args(argv)
    if a.part == "pong":
        return part_pong(a)
    if not a.dirs:
        p.error("report needs run directories")
    return report(a.dirs, a)


if __name__ == "__main__":
    sys.exit(main())
