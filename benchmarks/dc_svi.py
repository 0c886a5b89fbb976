#!/usr/bin/env python
"""Delay compensation for stochastic variational inference: asgd, dc-asgd-a and dc-asgd-i on DPSVI.

DPSVI's step is ``lambda <- (1 - rho) lambda + rho lambda_hat(lambda)``; a worker pushes
``g = lambda_pulled - lambda_hat(lambda_pulled)`` and the server applies ``lambda -= rho * g``. Under
asynchrony (asgd) the server's model has moved by ``delta = lambda_now - lambda_pulled`` since the
pull, and the step it applies is

    lambda_now - rho (lambda_pulled - lambda_hat(lambda_pulled))
      = sequential step from lambda_now  +  rho [delta - (lambda_hat(lambda_now) - lambda_hat(lambda_pulled))]

so its error is ``rho (I - J) delta`` with ``J = d lambda_hat / d lambda``. DC-ASGD corrects a gradient
with ``g + lam * H * delta`` and approximates the Hessian-like ``dg/dlambda = I - J`` by ``g * g``:
for SVI that has the wrong units (``g`` is in counts, up to 1e4 here, so ``g * g * delta`` explodes
- DC-ASGD-a's normalisation by ``sqrt(MeanSquare)`` leaves ``lam * |g| * delta``, still growing with
the counts). ``dc-asgd-i`` uses ``lam * I`` instead: with lam 1 the ``-lambda`` part of the step is
taken from the current model (``lambda <- (1 - rho) lambda_now + rho lambda_hat(lambda_pulled)``),
and what is left of the error is ``rho J delta`` - the change of lambda_hat itself. For a word that one
topic owns, ``J ~ (1 - phi) ~ 0`` (a full correction); for words spread over topics J is larger and a
lam below 1 is the better fit. The lam grid tests that.

Protocol (``dpsgd.simulate``, the real plug-in's math): N virtual one-thread workers, each reading
its own contiguous shard (as DPSVI under mpiexec), compute times U(0.5, 1.5) (mean staleness N-1),
the same number of minibatches for every N and rule (``--passes`` over the training documents),
rho_t = lr * (tau0 + t)^-kappa with scikit-learn's tau0 = 11, kappa 0.7 and an lr grid (lr 1 is
scikit-learn's schedule), dense layout for every rule (for asgd the lazy layout is the same math).
Quality: held-out log-likelihood per word (document completion on 10 % held-out documents,
benchmarks/lda.py's split) after the run; median over ``--seeds`` seeds [min-max]; a run that
overflows counts as diverged. Sequential SVI is one worker (rule sgd).

    python -m benchmarks.dc_svi                       # bundled corpus, K 20, N 4/16/64, 3 seeds
    python -m benchmarks.dc_svi --synthetic-docs 20000 --words 20000 --topics 100 --workers 16 64
    python -m benchmarks.dc_svi --mpi 9 --seeds 0 1 2   # real mpiexec -n 9 (8 workers) runs, asgd vs dc-asgd-i

``--mpi N``: instead of the simulator, ``mpiexec -n N dpsgd lda`` (one server + N-1 one-thread
workers; oversubscribed beyond 2 ranks on this machine, which is what makes the staleness large)
on the same corpus, K, batch, passes and dense pushes, with asgd and dc-asgd-i (lam 0.5, 1), one run
at a time; the held-out log-likelihood and the staleness come from each run's ``metrics.json``
(the CLI's own 10 % held-out split, seeded by ``--seed``).

Outputs: benchmarks/results/dc_svi[_<tag>].{md,json,png}; ``--mpi``: dc_svi_mpi.{md,json}.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpsgd.rules import RuleConfig  # noqa: E402
from dpsgd.simulate import simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: (label, rule, lam): sequential SVI runs once per lr (N = 1)
METHODS = [("asgd", "asgd", None), ("dc-asgd-a (lam 2)", "dc-asgd-a", 2.0),
           ("dc-asgd-i, lam 0.5", "dc-asgd-i", 0.5), ("dc-asgd-i, lam 1", "dc-asgd-i", 1.0)]
MPI_METHODS = [("asgd", "asgd", None), ("dc-asgd-i, lam 0.5", "dc-asgd-i", 0.5), ("dc-asgd-i, lam 1", "dc-asgd-i", 1.0)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def problem(args):
    from algorithms.dpsvi.svi import SVIAlgorithm
    from algorithms.dpsvi.plan import make_plan
    from benchmarks.lda import load_data

    d = load_data(SimpleNamespace(synthetic=args.synthetic_docs > 0, corpus=args.corpus, seed=0,
                                  synthetic_docs=args.synthetic_docs, synthetic_words=args.words,
                                  synthetic_topics=args.true_topics, topics=[args.topics], doc_length=args.doc_length))
    X, K = d["Xtr"], args.topics
    plan = make_plan(X.shape[0], args.batch, args.passes, rule="asgd", sparse_push=False)
    alg = SVIAlgorithm(X, X.shape[1], K, alpha=1.0 / K, eta=1.0 / K, total_docs=X.shape[0], batch_size=args.batch,
                       heldout=(d["Xo"], d["Xt"]), sparse_push=False, local_shard=False)
    return alg, plan, d["name"], X


def run(alg, plan, rule, lam, n, lr, seed):
    alg.thread_counts = []  # the plug-in keeps every thread's counts: not across runs
    t0 = time.perf_counter()
    r = simulate(alg, RuleConfig(rule, lam=lam), n, lr=lr, total_updates=plan.total_updates, schedule="power",
                 tau0=plan.tau0, kappa=plan.kappa, delay="uniform", delay_param=0.5, seed=seed)
    q = r.final.get("heldout_loglik", float("nan")) if not r.diverged else float("nan")
    return {"rule": rule, "lam": lam, "M": n, "lr": lr, "seed": seed, "diverged": bool(r.diverged or not np.isfinite(q)),
            "heldout_loglik": q, "staleness_mean": float(r.staleness.mean()) if r.staleness.size else 0.0,
            "seconds": round(time.perf_counter() - t0, 2)}


def cell(runs):
    """A table cell: "median [min, max]" of the runs' held-out log-likelihood, and the median (None if any diverged)."""
    q = [r["heldout_loglik"] for r in runs if not r["diverged"]]
    dv = sum(r["diverged"] for r in runs)
    if not q:
        return f"diverged {dv}/{len(runs)}", None
    s = f"{np.median(q):.4f} [{min(q):.4f}, {max(q):.4f}]" + (f" ({dv} diverged)" if dv else "")
    return s, float(np.median(q)) if not dv else None


def table(runs, args, name, seconds):
    lines = [f"## Delay compensation for SVI in the simulator: {name}", "",
             f"K {args.topics}, batch {args.batch}, {args.passes} pass(es) = {runs[0]['updates']} minibatches for every "
             f"N and rule; rho_t = lr (11 + t)^-0.7; compute times U(0.5, 1.5); held-out log-likelihood per word, median "
             f"over {len(args.seeds)} seeds [min, max] (higher is better). Sequential SVI = 1 worker.", ""]
    lrs = args.lrs
    for n in args.workers:
        stale = [r["staleness_mean"] for r in runs if r["M"] == n]
        lines += [f"### N = {n} workers (mean staleness {np.mean(stale):.1f})", "",
                  "| method | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |", "|---|" + "---:|" * len(lrs)]
        rows = [("sequential SVI", "sgd", None, 1)] + [(lab, rule, lam, n) for lab, rule, lam in METHODS]
        best = {}
        for lab, rule, lam, m in rows:
            cells = []
            for lr in lrs:
                sel = [r for r in runs if r["rule"] == rule and r["lam"] == lam and r["M"] == m and r["lr"] == lr]
                s, v = cell(sel)
                cells.append(s)
                if v is not None:
                    best[lab] = max(best.get(lab, -np.inf), v)
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        lines += ["", "best over the lr grid: " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()), ""]
    lines += [f"{len(runs)} simulated runs in {seconds:.0f} s ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
              f"{platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}).", "",
              "    python -m benchmarks.dc_svi " + " ".join(sys.argv[1:]), ""]
    return "\n".join(lines)


def plot(runs, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.workers), figsize=(4.2 * len(args.workers), 3.6), squeeze=False)
    for ax, n in zip(axes[0], args.workers):
        for lab, rule, lam, m in [("sequential SVI", "sgd", None, 1)] + [(a, b, c, n) for a, b, c in METHODS]:
            ys = []
            for lr in args.lrs:
                q = [r["heldout_loglik"] for r in runs if r["rule"] == rule and r["lam"] == lam and r["M"] == m
                     and r["lr"] == lr and not r["diverged"]]
                ys.append(np.median(q) if q else np.nan)
            ax.plot(args.lrs, ys, "o-", label=lab)
        ax.set_xscale("log")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("lr (multiplies rho_t)")
        ax.set_ylabel("held-out log-likelihood / word")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def real_runs(args) -> int:
    import subprocess
    import tempfile

    bin_dir = Path(sys.executable).parent
    rows = []
    for seed in args.seeds:  # interleaved: both rules for a seed, then the next seed
        for label, rule, lam in MPI_METHODS:
            with tempfile.TemporaryDirectory() as out:
                cmd = [str(bin_dir / "mpiexec"), "-n", str(args.mpi), str(bin_dir / "dpsgd"), "lda", "--corpus", args.corpus,
                       "--topics", str(args.topics), "--batch-size", str(args.batch), "--passes", str(args.passes),
                       "--sparse-push", "off", "--threads", "1", "--rule", rule, "--seed", str(seed), "--quiet",
                       "--no-progress", "--out", out] + (["--lam", str(lam)] if lam is not None else [])
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                if r.returncode != 0:
                    log(r.stdout[-2000:] + r.stderr[-2000:])
                    raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}")
                m = json.loads((Path(out) / "metrics.json").read_text())
            f = m["framework"]
            row = {"rule": label, "seed": seed, "heldout_loglik": m["heldout_loglik"],
                   "staleness_mean": f["staleness_mean"], "staleness_max": f["staleness_max"],
                   "updates": f["total_updates"], "wall_seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            log(f"{label} seed {seed}: {row}")
    lines = [f"## asgd against dc-asgd-i under a real `mpiexec -n {args.mpi}` ({args.mpi - 1} one-thread workers + a server "
             f"on {os.cpu_count()} cores: oversubscribed)", "",
             f"`dpsgd lda --corpus {os.path.relpath(args.corpus, ROOT)} --topics {args.topics} --batch-size {args.batch} "
             f"--passes {args.passes:g} --sparse-push off --threads 1 --rule R --seed S`; held-out log-likelihood per word "
             "(the CLI's 10 % split), higher is better.", "",
             "| seed | " + " | ".join(lab for lab, _, _ in MPI_METHODS) + " | staleness mean / max |",
             "|---:|" + "---:|" * (len(MPI_METHODS) + 1)]
    by = {(r["rule"], r["seed"]): r for r in rows}
    for seed in args.seeds:
        rs = [by[(lab, seed)] for lab, _, _ in MPI_METHODS]
        lines.append(f"| {seed} | " + " | ".join(f"{r['heldout_loglik']:.4f}" for r in rs) + " | "
                     + ", ".join(f"{r['staleness_mean']:.1f} / {r['staleness_max']}" for r in rs) + " |")
    meds = [np.median([by[(lab, s)]["heldout_loglik"] for s in args.seeds]) for lab, _, _ in MPI_METHODS]
    lines += ["| median | " + " | ".join(f"{v:.4f}" for v in meds) + " | |", "",
              f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, load average "
              f"{os.getloadavg()[0]:.1f}.)", "", "    python -m benchmarks.dc_svi " + " ".join(sys.argv[1:]), ""]
    md = "\n".join(lines)
    print(md)
    (RESULTS / "dc_svi_mpi.md").write_text(md)
    (RESULTS / "dc_svi_mpi.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "benchmarks" / "data" / "pydoc.npz"))
    ap.add_argument("--synthetic-docs", type=int, default=0, help="> 0: a synthetic LDA corpus of this many documents")
    ap.add_argument("--words", type=int, default=20000, help="synthetic vocabulary")
    ap.add_argument("--true-topics", type=int, default=50, help="synthetic corpus: true topics")
    ap.add_argument("--doc-length", type=int, default=250, help="synthetic corpus: mean tokens per document")
    ap.add_argument("--topics", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--passes", type=float, default=2.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tag", default="")
    ap.add_argument("--mpi", type=int, default=0, help="> 0: real mpiexec -n MPI runs instead of the simulator")
    args = ap.parse_args(argv)
    if args.mpi:
        return real_runs(args)

    alg, plan, name, X = problem(args)
    log(f"{name}: {X.shape[0]} training docs, V {X.shape[1]}, K {args.topics}, {plan.total_updates} minibatches a run")
    runs, t0 = [], time.perf_counter()
    jobs = [("sgd", None, 1)] + [(rule, lam, n) for n in args.workers for _, rule, lam in METHODS]
    for i, (rule, lam, n) in enumerate(jobs):
        for lr in args.lrs:
            for seed in args.seeds:
                r = run(alg, plan, rule, lam, n, lr, seed)
                r["updates"] = plan.total_updates
                runs.append(r)
                log(f"[{i + 1}/{len(jobs)}] {rule} lam {lam} N {n} lr {lr:g} seed {seed}: "
                    f"{'diverged' if r['diverged'] else format(r['heldout_loglik'], '.4f')} ({r['seconds']} s)")
    seconds = time.perf_counter() - t0
    md = table(runs, args, name, seconds)
    print(md)
    stem = "dc_svi" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.md").write_text(md)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"args": vars(args), "corpus": name, "runs": runs}, indent=1))
    plot(runs, args, RESULTS / f"{stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
