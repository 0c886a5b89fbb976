#!/usr/bin/env python
"""Predicted speed-up and statistical efficiency at 1..256 workers, for LDA and the digits MLP.

Everything in the tables is MODELLED except the three per-push costs of each problem, which are
MEASURED elsewhere (e.g. ``benchmarks/scaling.py``, ``benchmarks/ps_throughput.py``) and passed on
the command line; until they are, placeholder values are used and the output says so.

Protocol
* Statistical efficiency (simulated, the real algorithms' math): ``dpsgd.simulate`` with N virtual
  one-thread workers, compute times U(0.5, 1.5) (mean staleness about N-1), the same number T of
  gradient computations for every N, ``--seeds`` seeds (initialisation, minibatches, delays).
  - MLP: ``benchmarks.dc_asgd.Bench("mlp")`` (digits, hidden 64, batch 16, weight decay 1e-4,
    validation = 20 % of the training rows), T = 30 epochs, linear step-size decay; rules sgd
    (N = 1), asgd and dc-asgd-a (default lambda); lr per (rule, N) from ``--mlp-lrs`` (default
    0.4 - the sequential choice of benchmarks/dc_asgd.py - and 0.4/2, /4, /8: cheap, and large N
    needs smaller steps) by median validation error (``dc_asgd.select``). Quality: test error.
  - LDA: ``SVIAlgorithm`` on benchmarks/data/pydoc.npz (benchmarks/lda.py's split: 10 % held out,
    document completion), K 20, batch 64, 2 passes; T, the power schedule rho_t = (tau0 + t)^-kappa
    and the layout from ``algorithms.dpsvi.plan.make_plan`` as DPSVI under mpiexec does; rule asgd
    (DPSVI's default). Quality: held-out log-likelihood per word. Every worker reads its own
    contiguous shard (as DPSVI does): at N = 256 a shard has 30 documents, so an update sees 30.
    T = 242 < 256: at N = 256 most workers push once, from the initial model (staleness mean
    about T/2, not N-1). Memory: about 1.3 GB at N = 256 (each virtual worker's corpus arrays).
  - Efficiency(N) = min(1, U(q_N) / U(q_1)): U(q) = the fewest sequential updates whose quality
    reaches q (first crossing, linear interpolation, on the median over seeds of the sequential
    quality curve), q_N = median final quality of the N-worker runs, q_1 = the sequential run's.
    The MLP curve comes from separate sequential runs with budgets T/64 .. T (each with its own
    linear decay); LDA's from the sequential run's history (the power schedule does not depend on
    T, so the history is exactly the shorter runs).
* Hardware speed-up (modelled from the measured inputs): c = compute s per update, x = exchange s
  per push, s = server s per push; throughput(N) = min(N / (c + x), 1 / s) for blocking workers,
  min(N / max(c, x), 1 / s) for overlapped ones; speed-up = throughput * c (against one worker
  computing without exchanges).
* Predicted speed-up = hardware speed-up x efficiency (the better rule's). The overlapped figure
  uses the blocking workers' efficiency: the pipelined worker's extra staleness is not simulated.
* The DPSGD paper's bounds for T updates: workers <= T^(1/2) (marked per row), threads per worker
  <= T^(1/4) (the model has one thread per worker).

    python -m benchmarks.scaling_model --lda-compute C --lda-exchange X --lda-server S \
        --lda-source "scaling.py lda, 2026-12-02" --mlp-compute ... --mlp-source "..."
    python -m benchmarks.scaling_model --quick      # N = 1, 4, 16; 1 seed; MLP 10 epochs, LDA 1 pass

Costs not passed (all three per problem) keep their placeholder and are labelled so in the output.

The estimate is printed before the runs start: about 35 s of simulation for the full run (3 seeds)
on one core here (2026-12-02, the other core busy), so ``--seeds 10`` (about 2 minutes) is affordable.
Outputs: benchmarks/results/scaling/model.{md,json,png} (``--quick``: model_quick.*).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dc_asgd import Bench, run_one, select  # noqa: E402
from dpsgd.config import available_cores  # noqa: E402
from dpsgd.simulate import simulate  # noqa: E402

# placeholder per-push costs (s): NOT measured, replaced by --{lda,mlp}-{compute,exchange,server}
PLACEHOLDER = {"lda": dict(compute=2e-3, exchange=1e-3, server=3e-4),
               "mlp": dict(compute=1e-4, exchange=1e-4, server=1.5e-4)}
RULES = {"mlp": ["asgd", "dc-asgd-a"], "lda": ["asgd"]}
TITLE = {"mlp": "digits MLP (test error %, lower is better)",
         "lda": "LDA on {corpus}, K {K}, batch {batch} (held-out log-likelihood per word, higher is better)"}


# --------------------------------------------------------------------------- problems


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def lda_problem(args):
    from algorithms.dpsvi.svi import SVIAlgorithm
    from algorithms.dpsvi.plan import make_plan
    from benchmarks.lda import load_data

    d = load_data(SimpleNamespace(synthetic=False, corpus=args.corpus, seed=0))
    X, K = d["Xtr"], args.lda_topics
    plan = make_plan(X.shape[0], args.lda_batch, args.lda_passes, rule="asgd", distributed=True)
    alg = SVIAlgorithm(X, X.shape[1], K, alpha=1.0 / K, eta=1.0 / K, total_docs=X.shape[0],
                       batch_size=args.lda_batch, heldout=(d["Xo"], d["Xt"]), sparse_push=plan.sparse_push)
    return alg, plan


def run_lda(alg, plan, n, seed, eval_every=None):
    alg.thread_counts = []  # the plug-in keeps every thread's counts: not across runs
    t0 = time.perf_counter()
    r = simulate(alg, "sgd" if n == 1 else "asgd", n, lr=1.0, total_updates=plan.total_updates, schedule="power",
                 tau0=plan.tau0, kappa=plan.kappa, delay="uniform", delay_param=0.5, seed=seed, eval_every=eval_every)
    return {"problem": "lda", "method": "sgd" if n == 1 else "asgd", "M": n, "seed": seed, "diverged": r.diverged,
            "quality": r.final["heldout_loglik"], "staleness_mean": float(r.staleness.mean()),
            "curve": [(u, m["heldout_loglik"]) for u, m in r.history], "seconds": round(time.perf_counter() - t0, 3)}


def reach(curve, target):
    """First u at which the curve [(u, loss)] reaches loss <= target (interpolated); None: never."""
    for (u0, l0), (u1, l1) in zip([curve[0]] + curve[:-1], curve):
        if l1 <= target:
            return float(u1) if l0 <= target or u1 == u0 else u0 + (u1 - u0) * (l0 - target) / (l0 - l1)
    return None


def efficiency(seq_curve, q1, qn):
    """min(1, U(qn) / U(q1)) on the sequential curve (qualities as losses: lower is better)."""
    u1, un = reach(seq_curve, q1), reach(seq_curve, qn)
    return 1.0 if un is None or not u1 else min(1.0, un / u1)


def hardware(n, c, x, s):
    return min(n / (c + x), 1.0 / s) * c, min(n / max(c, x), 1.0 / s) * c


# --------------------------------------------------------------------------- the runs


def simulate_problem(name, args, workers, seeds, est):
    """Runs, the sequential curve and per-N summaries of one problem (qualities as losses)."""
    runs, done = [], [0.0]

    def note(r, extra=""):
        runs.append(r)
        done[0] += r["seconds"]
        log(f"#   {name} {r['method']:>9} N={r['M']:<3} seed {r['seed']}{extra}: {r['seconds']:.2f} s "
            f"(total {done[0]:.0f} s of ~{est:.0f} s)")

    if name == "mlp":
        bench = Bench("mlp", 16, 1e-4)
        T = args.mlp_epochs * bench.n_train // bench.batch_size
        for seed in range(seeds):
            for lr in args.mlp_lrs:
                for n in workers:
                    for rule in ["sgd"] if n == 1 else RULES["mlp"]:
                        r = run_one(bench, rule, None, lr, n, seed, T, T)
                        r["quality"] = r["test_error"]
                        note(r, f" lr {lr:g}")
        chosen = {(rule, n): select(runs, rule, n, "mlp") for n in workers for rule in (["sgd"] if n == 1 else RULES["mlp"])}
        (lr1, _), seq = chosen[("sgd", 1)]
        budgets = sorted({max(8, T >> k) for k in range(1, 7)})
        pts = {0: [r["curve"][0][1] for r in seq], T: [r["quality"] for r in seq]}
        for b in budgets:  # full sequential runs with smaller budgets (their own linear decay)
            for seed in range(seeds):
                r = run_one(bench, "sgd", None, lr1, 1, seed, b, b)
                r["quality"], r["budget_run"] = r["test_error"], True
                pts.setdefault(b, []).append(r["quality"])
                note(r, f" budget {b}")
        seq_curve = [(u, float(np.median(pts[u]))) for u in sorted(pts)]
    else:
        alg, plan = lda_problem(args)
        T = plan.total_updates
        chosen = {}
        for n in workers:
            rs = []
            for seed in range(seeds):
                r = run_lda(alg, plan, n, seed, max(1, T // 20) if n == 1 else None)
                r["quality"] = -r["quality"]  # as a loss
                rs.append(r)
                note(r)
            chosen[("sgd" if n == 1 else "asgd", n)] = ((1.0, None), rs)
        seq = chosen[("sgd", 1)][1]
        seq_curve = [(u, -float(np.median([r["curve"][i][1] for r in seq]))) for i, (u, _) in enumerate(seq[0]["curve"])]
    rows = []
    q1 = float(np.median([r["quality"] for r in chosen[("sgd", 1)][1]]))
    for n in workers:
        row = {"N": n, "rules": {}}
        for rule in ["sgd"] if n == 1 else RULES[name]:
            (lr, _), rs = chosen[(rule, n)]
            q = np.array([r["quality"] for r in rs])
            row["rules"][rule] = {"lr": lr, "median": float(np.median(q)), "min": float(q.min()), "max": float(q.max()),
                                  "diverged": int(sum(r["diverged"] for r in rs)),
                                  "efficiency": efficiency(seq_curve, q1, float(np.median(q))),
                                  "staleness_mean": float(np.mean([r["staleness_mean"] for r in rs]))}
        rows.append(row)
    info = {"T": T, "seq_curve": seq_curve, "quality_as_loss": "test error (mlp), -held-out ll (lda)"}
    if name == "lda":
        info.update(tau0=plan.tau0, kappa=plan.kappa, sparse_push=plan.sparse_push, updates_per_pass=plan.updates_per_pass)
    else:
        info.update(lrs=args.mlp_lrs, batch=16, weight_decay=1e-4, n_train=bench.n_train)
    return rows, info, runs


def estimate(args, workers, seeds, problems):
    """Seconds of the whole run, from short calibration runs (after a warm-up) of each problem."""
    est = {}
    if "mlp" in problems:
        bench = Bench("mlp", 16, 1e-4)
        T = args.mlp_epochs * bench.n_train // bench.batch_size
        run_one(bench, "dc-asgd-a", None, 0.1, 4, 0, 20, 20)
        t = time.perf_counter()
        run_one(bench, "dc-asgd-a", None, 0.1, 4, 0, 200, 200)
        per_update = (time.perf_counter() - t) / 200
        # the grid (sgd at N = 1, two rules at N > 1) and the sequential budget runs (< T in all)
        est["mlp"] = per_update * T * seeds * (len(args.mlp_lrs) * (1 + 2 * (len(workers) - 1)) + 1)
    if "lda" in problems:
        alg, plan = lda_problem(args)
        kw = dict(lr=1.0, schedule="power", tau0=plan.tau0, kappa=plan.kappa, delay="uniform", final_eval=False)
        simulate(alg, "asgd", 4, total_updates=4, **kw)
        t = time.perf_counter()
        simulate(alg, "asgd", 4, total_updates=20, **kw)
        per_update = (time.perf_counter() - t) / 20
        t = time.perf_counter()
        alg.evaluate(alg.init_params(np.random.default_rng(0)))
        per_eval = time.perf_counter() - t
        T = plan.total_updates
        est["lda"] = seeds * (len(workers) * (T * per_update + per_eval) + 21 * per_eval)
    return est


# --------------------------------------------------------------------------- report


def fmt_q(name, d):
    f = (lambda v: f"{v * 100:.2f}") if name == "mlp" else (lambda v: f"{-v:.4f}")
    lo, hi = (d["min"], d["max"]) if name == "mlp" else (d["max"], d["min"])
    lr = f" lr {d['lr']:g}" if name == "mlp" else ""
    div = f", {d['diverged']} diverged" if d["diverged"] else ""
    return f"{f(d['median'])} [{f(lo)}, {f(hi)}]{lr}{div}"


def report(results, inputs, args, seeds, stamp):
    cores = available_cores()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    out = ["# Scaling model: predicted speed-up and statistical efficiency (simulator)", "",
           f"{stamp} UTC on {platform.node()} ({cores} cores); dpsgd at commit {commit or '?'}; "
           f"command: `python -m benchmarks.scaling_model {' '.join(sys.argv[1:])}`; {seeds} seed(s).", "",
           "**Modelled** (nothing here was timed on a cluster): statistical efficiency (dpsgd.simulate: the real "
           "update rules and gradients, N virtual one-thread workers, compute times U(0.5, 1.5)); hardware "
           "speed-up (formula below); predicted speed-up = hardware speed-up x efficiency. "
           "**Measured** inputs: only the per-push costs below (from where the source says)."]
    for name, (c, x, s, src) in inputs.items():
        out.append(f"* {name}: compute c = {c:.3g} s/update, exchange x = {x:.3g} s/push, server s = {s:.3g} s/push "
                   f"- {src}")
    out += ["", "Hardware speed-up = c x min(N / (c + x), 1 / s) blocking, c x min(N / max(c, x), 1 / s) overlapped. "
            "Efficiency = min(1, U(q_N) / U(q_1)), U(q) = sequential updates to first reach quality q "
            "(median curve over seeds). Predicted uses the better rule's efficiency; overlapped uses the "
            "blocking efficiency (the pipelined worker's extra staleness is not simulated)."]
    for name, (rows, info, _) in results.items():
        T = info["T"]
        c, x, s, _ = inputs[name]
        rules = RULES[name]
        out += ["", f"## {TITLE[name].format(corpus=Path(args.corpus).name, K=args.lda_topics, batch=args.lda_batch)}", "",
                f"T = {T} updates for every N; T^(1/2) = {T ** 0.5:.1f} workers, T^(1/4) = {T ** 0.25:.1f} threads "
                f"(the model: 1 thread per worker). " + (
                    f"Power schedule rho = ({info['tau0']:g} + t)^-{info['kappa']:g}, "
                    f"{info['updates_per_pass']} updates a pass, {'lazy (sparse)' if info['sparse_push'] else 'dense'} "
                    "layout." if name == "lda" else f"Linear decay; lr per (rule, N) from {info['lrs']} on validation."),
                ""]
        head = (["N", "staleness mean"] + [f"{r} quality" for r in rules] + [f"efficiency {r}" for r in rules]
                + ["hw speed-up blocking / overlapped", "predicted blocking / overlapped", "N > T^(1/2)?"])
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            n, rr = row["N"], row["rules"]
            cells = [str(n), f"{rr.get('asgd', rr.get('sgd'))['staleness_mean']:.1f}"]
            cells += [fmt_q(name, rr[r]) if r in rr else (f"{fmt_q(name, rr['sgd'])} (sgd)" if i == 0 else "(same)")
                      for i, r in enumerate(rules)]
            cells += [f"{rr[r]['efficiency']:.3f}" if r in rr else "1" for r in rules]
            hb, ho = hardware(n, c, x, s)
            best = max(rr, key=lambda r: rr[r]["efficiency"])
            e = rr[best]["efficiency"]
            row.update(hw_blocking=hb, hw_overlapped=ho, pred_blocking=hb * e, pred_overlapped=ho * e, best_rule=best,
                       beyond_sqrt_T=n > T ** 0.5)
            tag = f" ({best})" if len(rr) > 1 else ""
            cells += [f"{hb:.2f} / {ho:.2f}", f"{hb * e:.2f} / {ho * e:.2f}{tag}",
                      f"**yes** (> {T ** 0.5:.1f})" if n > T ** 0.5 else "no"]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(results, path, placeholder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ns = sorted({row["N"] for rows, _, _ in results.values() for row in rows})
    ax.plot(ns, ns, color="k", lw=1, label="ideal (N)")
    for (name, (rows, info, _)), col in zip(results.items(), ("tab:blue", "tab:red")):
        n = [r["N"] for r in rows]
        ax.plot(n, [r["pred_blocking"] for r in rows], "o-", color=col, label=f"{name}, blocking")
        ax.plot(n, [r["pred_overlapped"] for r in rows], "s--", color=col, label=f"{name}, overlapped")
        ax.axvline(info["T"] ** 0.5, color=col, ls=":", label=f"{name}: T^(1/2) = {info['T'] ** 0.5:.1f}")
    ax.set(xscale="log", yscale="log", xlabel="workers N", ylabel="predicted speed-up (modelled)",
           title="hardware model x simulated statistical efficiency" + ("\n(PLACEHOLDER per-push costs)" if placeholder else ""))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1, 4, 16; 1 seed; fewer updates")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--workers", default=None, help="comma-separated (default 1,4,16,64,256)")
    p.add_argument("--problems", default="lda,mlp")
    p.add_argument("--mlp-epochs", type=int, default=None, help="default 30 (quick: 10)")
    p.add_argument("--mlp-lrs", default="0.4,0.2,0.1,0.05")
    p.add_argument("--corpus", default=str(ROOT / "benchmarks" / "data" / "pydoc.npz"))
    p.add_argument("--lda-topics", type=int, default=20)
    p.add_argument("--lda-batch", type=int, default=64)
    p.add_argument("--lda-passes", type=float, default=None, help="default 2 (quick: 1)")
    for prob in ("lda", "mlp"):
        for k in ("compute", "exchange", "server"):
            p.add_argument(f"--{prob}-{k}", type=float, default=None,
                           help=f"measured {k} seconds per {'update' if k == 'compute' else 'push'} "
                                f"(default: placeholder {PLACEHOLDER[prob][k]:g})")
        p.add_argument(f"--{prob}-source", default=None, help="where the measured costs come from")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scaling"))
    args = p.parse_args(argv)
    workers = [int(v) for v in args.workers.split(",")] if args.workers else ([1, 4, 16] if args.quick else [1, 4, 16, 64, 256])
    if 1 not in workers:
        workers = [1] + workers  # the sequential reference
    seeds = args.seeds or (1 if args.quick else 3)
    args.mlp_epochs = args.mlp_epochs or (10 if args.quick else 30)
    args.lda_passes = args.lda_passes or (1.0 if args.quick else 2.0)
    args.mlp_lrs = [float(v) for v in args.mlp_lrs.split(",")]
    problems = [v for v in args.problems.split(",") if v]
    inputs = {}
    for prob in problems:
        given = {k: getattr(args, f"{prob}_{k}") for k in PLACEHOLDER[prob]}
        missing = [k for k, v in given.items() if v is None]
        src = (f"**PLACEHOLDER, not measured: {', '.join(missing)}** (pass --{prob}-{missing[0]} ...)" if missing
               else f"measured: {getattr(args, prob + '_source') or 'source not given (--%s-source)' % prob}")
        inputs[prob] = (*(PLACEHOLDER[prob][k] if v is None else v for k, v in given.items()), src)

    est = estimate(args, workers, seeds, problems)
    log(f"# estimated simulation time: {sum(est[q] for q in problems):.0f} s "
        f"({', '.join(f'{q} {est[q]:.0f} s' for q in problems)}); workers {workers}, {seeds} seed(s)")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    t0 = time.perf_counter()
    results = {}
    with np.errstate(all="ignore"):
        for prob in problems:
            results[prob] = simulate_problem(prob, args, workers, seeds, est[prob])
    text = report(results, inputs, args, seeds, stamp)
    text += f"\nSimulations: {time.perf_counter() - t0:.0f} s wall (estimated {sum(est[q] for q in problems):.0f} s).\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "model_quick" if args.quick else "model"
    (out / f"{stem}.md").write_text(text)
    blob = {"date_utc": stamp, "machine": platform.node(), "cores": available_cores(), "seeds": seeds, "workers": workers,
            "inputs": {k: dict(zip(("compute", "exchange", "server", "source"), v)) for k, v in inputs.items()},
            "problems": {k: {"info": info, "rows": rows, "runs": runs} for k, (rows, info, runs) in results.items()}}
    (out / f"{stem}.json").write_text(json.dumps(blob, indent=1, default=float))
    plot(results, out / f"{stem}.png", any("PLACEHOLDER" in v[3] for v in inputs.values()))
    log(f"# wrote {out / stem}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
