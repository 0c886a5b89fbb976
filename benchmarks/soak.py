"""Soak test: a long MPI run with random worker slow-downs; RSS of every rank over time.

    python -m benchmarks.soak [--minutes 10] [--ranks 3] [--n-params 100000]

Shows that memory does not grow and nothing hangs: the parent samples the resident set size
of every rank (from /proc) every few seconds, prints a table (RSS after warm-up, at the end,
growth) and writes ``benchmarks/results/soak.md`` and ``soak.png``. The run itself stops by
``max_seconds``; the parent kills it (and reports a hang) if it overruns by 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import dpsgd

RESULTS = Path(__file__).resolve().parent / "results"


class SlowQuadratic(dpsgd.Algorithm):
    """A quadratic bowl whose workers randomly slow down (sleep) now and then."""

    def __init__(self, n_params: int, slow_prob: float, max_sleep: float):
        self.n, self.slow_prob, self.max_sleep = n_params, slow_prob, max_sleep
        self.target = np.random.default_rng(1).normal(size=n_params).astype(np.float32)

    def init_params(self, rng):
        return np.zeros(self.n, np.float32)

    def make_thread_state(self, ctx):
        return np.empty(self.n, np.float32)

    def compute_update(self, params, buf, ctx):
        if ctx.rng.random() < self.slow_prob:
            time.sleep(ctx.rng.uniform(0, self.max_sleep))
        np.subtract(params, self.target, out=buf)
        buf += ctx.rng.normal(scale=0.1, size=self.n).astype(np.float32)
        return buf

    def evaluate(self, params):
        return {"dist": float(np.linalg.norm(params - self.target) / np.sqrt(self.n))}


def child(args):
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig("dc-asgd-a"), lr=0.01, total_updates=10**12,
                            max_seconds=args.minutes * 60, threads=1, progress=False, worker_timeout=60,
                            checkpoint_dir=args.checkpoint_dir, checkpoint_every=30)
    res = dpsgd.train(SlowQuadratic(args.n_params, 0.05, 0.5), cfg)
    if res.is_root:
        m = res.metrics
        print("RESULT " + json.dumps({k: m[k] for k in ("pushes", "total_updates", "staleness_mean",
                                                        "staleness_max", "rejected_pushes", "wall_seconds",
                                                        "checkpoints_written", "final")}), flush=True)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def is_rank(pid: int) -> bool:
    try:
        return b"benchmarks.soak" in open(f"/proc/{pid}/cmdline", "rb").read() and \
            b"hydra" not in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--ranks", type=int, default=3)
    p.add_argument("--n-params", type=int, default=100_000)
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    import tempfile

    ck = tempfile.mkdtemp(prefix="dpsgd-soak-")
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    cmd = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "mpi4py", "-m", "benchmarks.soak", "--child",
           "--minutes", str(args.minutes), "--n-params", str(args.n_params), "--checkpoint-dir", ck]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    samples: list[tuple[float, dict[int, float]]] = []
    limit = args.minutes * 60 + 120
    hung = False
    while proc.poll() is None:
        if time.monotonic() - t0 > limit:
            hung = True
            proc.kill()
            break
        ranks = {pid: rss_mb(pid) for pid in descendants(proc.pid) if is_rank(pid)}
        ranks = {k: v for k, v in ranks.items() if v is not None}
        if ranks:
            samples.append((time.monotonic() - t0, ranks))
        time.sleep(args.sample_every)
    out, err = proc.communicate()
    result = next((json.loads(ln[7:]) for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    pids = sorted({pid for _, s in samples for pid in s})
    warm = [s for t, s in samples if t >= min(60.0, args.minutes * 60 / 4)]
    rows = []
    for i, pid in enumerate(pids):
        series = [s[pid] for s in warm if pid in s]
        if len(series) < 2:
            continue
        first, last, peak = series[0], series[-1], max(series)
        rows.append((i, first, last, peak, 100 * (last - first) / first))
    lines = [f"# soak: {args.minutes:g} min, mpiexec -n {args.ranks} (1 server + {args.ranks - 1} workers, "
             f"2 cores, oversubscribed if > 2), {args.n_params} float32 parameters, DC-ASGD-a, "
             "5 % of updates sleep U(0, 0.5) s", "",
             "| process | RSS after warm-up (MB) | RSS at end (MB) | peak (MB) | growth |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| rank process {i} | {a:.1f} | {b:.1f} | {c:.1f} | {g:+.2f} % |" for i, a, b, c, g in rows]
    lines += ["", f"exit code {proc.returncode}; hung: {hung}; wall {time.monotonic() - t0:.0f} s",
              f"run: {json.dumps(result)}"]
    if proc.returncode != 0:
        lines.append("stderr tail: " + err[-2000:])
    text = "\n".join(lines)
    print(text)
    (RESULTS / "soak.md").write_text(text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for i, pid in enumerate(pids):
            ts = [t for t, s in samples if pid in s]
            ax.plot(np.array(ts) / 60, [s[pid] for _, s in samples if pid in s], label=f"rank process {i}")
        ax.set_xlabel("minutes")
        ax.set_ylabel("RSS (MB)")
        ax.set_title("dpsgd soak: resident memory per rank")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "soak.png", dpi=100)
    except ImportError:
        print("matplotlib not installed (pip install -e .[bench]): no PNG")
    return 0 if proc.returncode == 0 and not hung else 1


if __name__ == "__main__":
    sys.exit(main())
