#!/usr/bin/env python
"""Reproduce the DC-ASGD paper's comparison (Zheng et al., Table 1) in the simulator.

Sequential SGD, SSGD, ASGD, DC-ASGD-c and DC-ASGD-a train SoftmaxRegression and an MLP on
scikit-learn's digits with M = 4, 8, 16 virtual workers (``dpsgd.simulate``), every method
with the same number of gradient computations (epochs) and a linearly decaying step size.

Protocol
* Data: ``load_digits_split(0)`` (75 % train / 25 % test); a stratified 20 % of the training
  rows is held out as the validation split. Every run trains on the remaining training rows.
* Tuning: the same step-size grid for every method; the DC rules also get a lambda grid
  (so they see |lambda grid| times more configurations: the rows "@ default lambda" are the
  DC rules with the a-priori default lambda, i.e. the same budget as ASGD). For each method
  and worker count the configuration with the lowest median *validation* error over the
  seeds (ties: lowest mean validation loss) is selected; its *test* error is reported
  (median over seeds, [min-max]). The seeds change initialisation, minibatches and delays.
* Delays: each worker's gradient takes U(0.5, 1.5) time units (mean staleness M-1, spread).

Outputs: a markdown table (stdout and ``benchmarks/results/dc_asgd.md``), every run's numbers
(``dc_asgd_runs.json``) and learning curves (``dc_asgd.png``: test error vs gradient
computations of the selected configurations, median over seeds). ``--quick`` writes
``dc_asgd_quick.*`` instead; ``--mpi-only`` writes ``dc_asgd_mpi.md``.

``--mpi`` also runs real ``mpiexec -n N`` jobs (N = 3..5: one server, N-1 workers, one thread
each) through ``dpsgd.train`` and replays each run's logged push order in the simulator.

    python benchmarks/dc_asgd.py            # full (about 5-10 minutes on 2 cores)
    python benchmarks/dc_asgd.py --quick    # reduced, < 2 minutes
    python benchmarks/dc_asgd.py --mpi      # real MPI runs + replay
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # one thread per process: the peers share 2 cores fairly

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dpsgd.problems import MLP, SoftmaxRegression, load_digits_split  # noqa: E402
from dpsgd.rules import DEFAULT_LAM, RuleConfig  # noqa: E402
from dpsgd.simulate import ReplayLog, simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

METHODS = ["sgd", "ssgd", "asgd", "dc-asgd-c", "dc-asgd-a"]
LABEL = {"sgd": "Sequential SGD", "ssgd": "SSGD", "asgd": "ASGD", "dc-asgd-c": "DC-ASGD-c",
         "dc-asgd-a": "DC-ASGD-a", "dc-asgd-c@default": "DC-ASGD-c @ default lambda",
         "dc-asgd-a@default": "DC-ASGD-a @ default lambda"}
# Zheng et al., Table 1: CIFAR-10 test error (%) of ResNet-20, M workers.
PAPER = {4: {"sgd": 8.65, "asgd": 9.27, "ssgd": 9.17, "dc-asgd-c": 8.67, "dc-asgd-a": 8.19},
         8: {"sgd": 8.65, "asgd": 10.26, "ssgd": 10.10, "dc-asgd-c": 9.27, "dc-asgd-a": 8.57}}

FULL = dict(seeds=5, epochs=30, workers=[4, 8, 16], lrs=[0.05, 0.1, 0.2, 0.4, 0.8, 1.6],
            lams={"dc-asgd-c": [0.04, 1.0, 25.0], "dc-asgd-a": [0.5, 2.0, 8.0]}, n_curve=30)
QUICK = dict(seeds=3, epochs=15, workers=[4, 8, 16], lrs=[0.1, 0.2, 0.4],
             lams={"dc-asgd-c": [0.04, 1.0], "dc-asgd-a": [0.5, 2.0]}, n_curve=15)


# --------------------------------------------------------------------------- problems


class Bench:
    """One problem: the training algorithm (test split attached) and a validation scorer."""

    def __init__(self, name: str, batch_size: int, weight_decay: float):
        split = load_digits_split(0)
        tune = split.validation(0.2, seed=0)  # tune.X_test = validation rows
        cls, kw = {"softmax": (SoftmaxRegression, {}), "mlp": (MLP, {"hidden": 64})}[name]
        kw = dict(kw, batch_size=batch_size, weight_decay=weight_decay)
        self.name = name
        self.alg = cls(tune.X_train, tune.y_train, split.X_test, split.y_test, **kw)
        self.val = cls(tune.X_test, tune.y_test, **kw)  # its "train" metrics = validation metrics
        self.n_train = len(tune.y_train)
        self.batch_size = batch_size


def run_one(bench: Bench, method: str, lam, lr: float, n_workers: int, seed: int, total: int, eval_every: int,
            delay="uniform") -> dict:
    rule = RuleConfig(method, lam=lam)
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        r = simulate(bench.alg, rule, n_workers, lr=lr, total_updates=total, schedule="linear", delay=delay,
                     delay_param=0.5, seed=seed, eval_every=eval_every)
        v = bench.val.evaluate(r.params)
    val_loss = v["train_loss"]
    return {
        "problem": bench.name, "method": method, "M": n_workers, "lr": lr, "lam": lam, "seed": seed,
        "val_error": v["train_error"], "val_loss": val_loss if np.isfinite(val_loss) else float("inf"),
        "test_error": r.final["test_error"], "diverged": r.diverged,
        "staleness_mean": float(r.staleness.mean()) if r.staleness.size else 0.0,
        "curve": [(u, round(m["test_error"], 5)) for u, m in r.history],
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --------------------------------------------------------------------------- selection


def select(runs: list[dict], method: str, M: int, problem: str, lam_filter=None):
    """The (lr, lam) with the lowest median validation error; its runs (one per seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["problem"] == problem and r["method"] == method and r["M"] == M:
            if lam_filter is not None and r["lam"] != lam_filter:
                continue
            groups.setdefault((r["lr"], r["lam"]), []).append(r)
    if not groups:
        return None, []

    def score(key):
        rs = groups[key]
        return (float(np.median([r["val_error"] for r in rs])), float(np.mean([r["val_loss"] for r in rs])))

    best = min(groups, key=score)
    return best, sorted(groups[best], key=lambda r: r["seed"])


def fmt_cell(runs: list[dict], key) -> str:
    if not runs:
        return "—"
    e = np.array([r["test_error"] for r in runs]) * 100
    lr, lam = key
    hp = f"lr {lr:g}" + (f", λ {lam:g}" if lam is not None else "")
    div = sum(r["diverged"] for r in runs)
    return f"{np.median(e):.2f} [{e.min():.2f}–{e.max():.2f}] ({hp}{', %d diverged' % div if div else ''})"


# --------------------------------------------------------------------------- simulator benchmark


def run_grid(args, cfg) -> list[dict]:
    runs = []
    t_start = time.perf_counter()
    for pname in args.problems:
        bench = Bench(pname, args.batch_size, args.weight_decay)
        total = cfg["epochs"] * bench.n_train // args.batch_size
        eval_every = max(1, total // cfg["n_curve"])
        jobs = []
        for seed in range(cfg["seeds"]):
            for lr in cfg["lrs"]:
                jobs.append(("sgd", None, lr, 1, seed))
                for M in cfg["workers"]:
                    jobs.append(("ssgd", None, lr, M, seed))
                    jobs.append(("asgd", None, lr, M, seed))
                    for method in ("dc-asgd-c", "dc-asgd-a"):
                        for lam in cfg["lams"][method]:
                            jobs.append((method, lam, lr, M, seed))
        print(f"# {pname}: {len(jobs)} runs of {total} gradient computations "
              f"({cfg['epochs']} epochs of {bench.n_train} rows, batch {args.batch_size})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        for i, (method, lam, lr, M, seed) in enumerate(jobs):
            runs.append(run_one(bench, method, lam, lr, M, seed, total, eval_every))
            if (i + 1) % 100 == 0:
                print(f"#   {i + 1}/{len(jobs)} runs, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"# simulator grid done in {time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    return runs


def make_table(runs, cfg, args) -> tuple[str, dict]:
    lines = []
    chosen = {}
    workers = cfg["workers"]
    paper_ms = [m for m in workers if m in PAPER]
    for pname in args.problems:
        lines.append(f"\n### {pname} on digits: test error % (median over {cfg['seeds']} seeds [min–max]; "
                     f"selected by validation error)\n")
        head = ["method"] + [f"M = {m}" for m in workers] + [f"paper CIFAR-10, M = {m}" for m in paper_ms]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        rows = METHODS + ["dc-asgd-c@default", "dc-asgd-a@default"]
        for row in rows:
            method, _, dflt = row.partition("@")
            lam_filter = DEFAULT_LAM[method] if dflt else None
            cells = [LABEL[row]]
            for M in workers:
                key, rs = select(runs, method, 1 if method == "sgd" else M, pname, lam_filter)
                chosen[(pname, row, M)] = (key, rs)
                cells.append(fmt_cell(rs, key))
            for M in paper_ms:
                cells.append(f"{PAPER[M][method]:.2f}" if not dflt else "")
            lines.append("| " + " | ".join(cells) + " |")
        stal = []
        for M in workers:
            s = [r["staleness_mean"] for r in runs if r["problem"] == pname and r["method"] == "asgd" and r["M"] == M]
            stal.append(f"M = {M}: {np.mean(s):.2f}")
        lines.append(f"\nMean staleness of the asynchronous runs: {', '.join(stal)}.")
    return "\n".join(lines), chosen


def plot(chosen, cfg, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = cfg["workers"]
    fig, axes = plt.subplots(len(args.problems), len(workers), figsize=(4.2 * len(workers), 3.4 * len(args.problems)),
                             squeeze=False, sharey="row")
    styles = {"sgd": ("k", "--"), "ssgd": ("tab:green", "-"), "asgd": ("tab:red", "-"),
              "dc-asgd-c": ("tab:orange", "-"), "dc-asgd-a": ("tab:blue", "-")}
    for i, pname in enumerate(args.problems):
        for j, M in enumerate(workers):
            ax = axes[i][j]
            for method in METHODS:
                key, rs = chosen[(pname, method, M)]
                if not rs:
                    continue
                n = min(len(r["curve"]) for r in rs)
                x = np.array([u for u, _ in rs[0]["curve"][:n]])
                y = np.median(np.array([[e for _, e in r["curve"][:n]] for r in rs]), axis=0) * 100
                c, ls = styles[method]
                hp = f"lr {key[0]:g}" + (f", λ {key[1]:g}" if key[1] is not None else "")
                ax.plot(x, y, color=c, ls=ls, lw=1.5, label=f"{LABEL[method]} ({hp})")
            ax.set_ylim(0, 15)
            ax.grid(alpha=0.3)
            ax.set_title(f"{pname}, M = {M} workers")
            if i == len(args.problems) - 1:
                ax.set_xlabel("gradient computations (all workers)")
            if j == 0:
                ax.set_ylabel("test error (%)")
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"digits, simulator, median over {cfg['seeds']} seeds, {cfg['epochs']} epochs, linear lr decay",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- real MPI runs


def mpi_child(args):
    """Run under mpiexec: one dpsgd.train run; the root rank writes metrics.json + params."""
    import dpsgd
    from dpsgd.runner import write_metrics

    bench = Bench(args.problem_one, args.batch_size, args.weight_decay)
    cfg = dpsgd.TrainConfig(rule=RuleConfig(args.rule, lam=args.lam), lr=args.lr, schedule="linear",
                            total_updates=args.updates, threads=1, local_steps=1, seed=args.seed, progress=False)
    res = dpsgd.train(bench.alg, cfg)
    if res.is_root:
        m = dict(res.metrics)
        m["test_error"] = bench.alg.evaluate(res.params)["test_error"]
        write_metrics(os.path.join(args.out, "metrics.json"), m)
        np.save(os.path.join(args.out, "params.npy"), res.params)


def mpi_mode(args):
    """mpiexec -n N (N = 3..5) real runs; compare with the simulator replaying their push order."""
    exe = Path(sys.executable).parent / "mpiexec"
    exe = str(exe) if exe.exists() else "mpiexec"
    pname = "softmax"
    bench = Bench(pname, args.batch_size, args.weight_decay)
    total = args.mpi_epochs * bench.n_train // args.batch_size
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDRA_", "MPI_LOCAL"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    rules = [("asgd", None), ("dc-asgd-c", None), ("dc-asgd-a", None), ("ssgd", None)]
    lines = [f"\n### Real MPI runs (softmax, {total} gradient computations, lr {args.mpi_lr:g} linear decay, "
             "1 thread per worker) vs the simulator replaying each run's push order\n",
             "| ranks | workers | rule | wall s | first-pull versions | real test error % | replay test error % | "
             "staleness mean real / replay | staleness hist equal | max abs param diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n_ranks in (3, 4, 5):
        for rule, lam in rules:
            with tempfile.TemporaryDirectory() as out:
                cmd = [exe, "-n", str(n_ranks), sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()),
                       "--mpi-child", "--problem-one", pname, "--rule", rule, "--lr", str(args.mpi_lr),
                       "--updates", str(total), "--seed", "0", "--out", out,
                       "--batch-size", str(args.batch_size), "--weight-decay", str(args.weight_decay)]
                if lam is not None:
                    cmd += ["--lam", str(lam)]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
                wall = time.perf_counter() - t0
                if p.returncode != 0:
                    lines.append(f"| {n_ranks} | {n_ranks - 1} | {rule} | {wall:.1f} | FAILED (exit {p.returncode}) "
                                 f"| | | | | |")
                    print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
                    continue
                with open(os.path.join(out, "metrics.json")) as f:
                    m = json.load(f)
                real_params = np.load(os.path.join(out, "params.npy"))
            n_workers = n_ranks - 1
            real_hist = {int(k): int(v) for k, v in m.get("staleness_hist", {}).items()}
            # the server version at each worker's first pull, when the server logs it (without
            # it the replay assumes 0; a worker that joined late then gets other minibatches)
            hello = np.asarray(m["hello_versions"], np.int64) if m.get("hello_versions") is not None else None
            if rule == "ssgd":
                with np.errstate(all="ignore"):
                    sim = simulate(bench.alg, RuleConfig(rule, lam=lam), n_workers, lr=args.mpi_lr, schedule="linear",
                                   total_updates=total, seed=0)
            else:
                with np.errstate(all="ignore"):
                    sim = simulate(bench.alg, RuleConfig(rule, lam=lam), n_workers, lr=args.mpi_lr, schedule="linear",
                                   total_updates=total, delay=ReplayLog(np.asarray(m["push_workers"], np.int64), hello),
                                   seed=0)
            sim_err = bench.alg.evaluate(sim.params)["test_error"]
            sim_hist = sim.staleness_stats()["staleness_hist"]
            diff = float(np.abs(sim.params - real_params).max())
            hv = "?" if hello is None else ",".join(map(str, hello.tolist()))
            lines.append(f"| {n_ranks} | {n_workers} | {rule} | {wall:.1f} | {hv} | {m['test_error'] * 100:.2f} | "
                         f"{sim_err * 100:.2f} | {m['staleness_mean']:.2f} / {sim.staleness_stats()['staleness_mean']:.2f} | "
                         f"{'yes' if real_hist == sim_hist else 'no'} | {diff:.2e} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced grid, seeds and epochs (< 2 minutes)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default 4,8,16)")
    p.add_argument("--problems", default="softmax,mlp")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--mpi", action="store_true", help="also run real mpiexec -n 3..5 jobs through dpsgd.train")
    p.add_argument("--mpi-only", action="store_true", help="only the real MPI runs")
    p.add_argument("--mpi-epochs", type=int, default=10)
    p.add_argument("--mpi-lr", type=float, default=0.2)
    # internal: one rank of an MPI run
    p.add_argument("--mpi-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--problem-one", default="softmax", help=argparse.SUPPRESS)
    p.add_argument("--rule", default="asgd", help=argparse.SUPPRESS)
    p.add_argument("--lam", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--updates", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mpi_child:
        return mpi_child(args)

    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds is not None:
        cfg["seeds"] = args.seeds
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.workers:
        cfg["workers"] = [int(x) for x in args.workers.split(",")]
    args.problems = [x.strip() for x in args.problems.split(",") if x.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "dc_asgd_quick" if args.quick else "dc_asgd"  # a quick run never overwrites the full results

    text = ["## DC-ASGD comparison in the simulator (digits)", ""] if not args.mpi_only else []
    text += [] if args.mpi_only else [
            f"{'Quick' if args.quick else 'Full'} run: {cfg['seeds']} seeds, {cfg['epochs']} epochs for every method "
            f"(equal gradient computations), batch {args.batch_size}, weight decay {args.weight_decay:g}, "
            f"linear step-size decay to 0, worker compute times U(0.5, 1.5). "
            f"Grid: lr {cfg['lrs']}; DC-ASGD-c λ {cfg['lams']['dc-asgd-c']}; DC-ASGD-a λ {cfg['lams']['dc-asgd-a']} "
            "(MeanSquare decay 0.95). Selection by median validation error (20 % of the training rows); "
            "test error of the selected configuration. Sequential SGD is one worker (same in every column). "
            "The paper's numbers are CIFAR-10 / ResNet-20 (Zheng et al. 2017, Table 1), for orientation only: "
            "different data, model and scale."]
    if not args.mpi_only:
        t0 = time.perf_counter()
        runs = run_grid(args, cfg)
        table, chosen = make_table(runs, cfg, args)
        text.append(table)
        text.append(f"\nSimulator grid: {len(runs)} runs in {time.perf_counter() - t0:.0f} s.")
        with open(out / f"{stem}_runs.json", "w") as f:
            json.dump(runs, f)
        plot(chosen, cfg, args, out / f"{stem}.png")
    if args.mpi or args.mpi_only:
        text.append(mpi_mode(args))
    report = "\n".join(text) + "\n"
    print(report)
    (out / (f"{stem}_mpi.md" if args.mpi_only else f"{stem}.md")).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
