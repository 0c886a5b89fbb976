#!/usr/bin/env python
"""The distributed level against the threaded one, measured: ranks x threads for LDA and Pong.

Parts:

``lda``   ``dpsgd lda`` on a synthetic corpus of the scale users bring (``--docs`` documents drawn
          from the LDA model: 50 true topics ~ Dirichlet(0.01) over V = ``--words``, mixtures ~
          Dirichlet(0.1), Poisson(250) tokens; built once into ``--cache``), K = ``--topics``, one
          pass, in every layout this machine can run: one process with 1 and 2 threads, and
          ``mpiexec -n N`` (one server rank + N-1 one-thread workers) with blocking and with
          overlapped exchange (``--overlap``), N = 2, 3 and - oversubscribed - 5 and 9. Reports the
          training rate (documents / training seconds, from ``metrics.json``), the ratio to one
          process with 2 threads, the whole run's wall time (the ``dpsgd lda`` command from start
          to exit) split into corpus reading, training, and the rest (interpreter, imports, MPI
          start-up, kernel loading, the final gather, writing the outputs), held-out
          log-likelihood, staleness and the seconds the workers' computing threads waited for
          their exchanges.
``pong``  ``dpsgd a2c`` on PongNoFrameskip-v4 (16 envs per thread, the Atari settings of
          ``benchmarks/atari.py``) for ``--steps`` agent steps: one process with 2 threads against
          ``mpiexec -n 3`` (2 workers x 1 thread), blocking and overlapped.

Every configuration runs ``--reps`` times, interleaved (rep 1 of all, then rep 2, ...), one at a
time; tables give medians. Runs with more ranks than the 2 cores are marked oversubscribed.

    python -m benchmarks.scaling lda --docs 100000 --reps 2     # ~25 min on 2 cores
    python -m benchmarks.scaling pong --steps 40000 --reps 3    # ~15 min

Outputs: ``benchmarks/results/scaling/{lda,pong}.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.stats import med
from dpsgd.config import available_cores

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
BIN = os.path.dirname(sys.executable)
CORES = available_cores()


def layouts(kind: str) -> list[dict]:
    """(name, ranks, threads per rank, overlap[, LDA thread mode]) of each configuration. The
    reference of the ratios is "1 process x 2 threads": for LDA its Hogwild threads (asynchronous,
    as the MPI workers are); the threads that share minibatches (sequential SVI) have a row too."""
    one = [dict(name="1 process x 1 thread", ranks=1, threads=1, overlap=False),
           dict(name="1 process x 2 threads", ranks=1, threads=2, overlap=False, mode="hogwild")]
    if kind == "pong":
        return one[1:] + [dict(name="mpiexec -n 3: 2 workers x 1 thread", ranks=3, threads=1, overlap=False),
                          dict(name="mpiexec -n 3: 2 workers x 1 thread, overlap", ranks=3, threads=1, overlap=True)]
    out = one + [dict(name="1 process x 2 threads sharing minibatches", ranks=1, threads=2, overlap=False,
                      mode="minibatch")]
    for n in (2, 3, 5, 9):
        for ov in (False, True):
            if n == 9 and not ov:
                continue
            w = n - 1
            out.append(dict(name=f"mpiexec -n {n}: {w} worker{'s' if w > 1 else ''} x 1 thread"
                            + (", overlap" if ov else ""), ranks=n, threads=1, overlap=ov))
    return out


def command(kind: str, lay: dict, a, out: str) -> list[str]:
    if kind == "lda":
        cmd = [os.path.join(BIN, "dpsgd"), "lda", "--corpus", a.corpus_path, "--topics", str(a.topics),
               "--passes", "1", "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--quiet",
               "--eval-every", "1e6",  # the final held-out evaluation only: no evaluation thread beside training
               "--no-progress", "--out", out, "--threads", str(lay["threads"])]
    else:
        from benchmarks.atari import PONG_ARGS

        cmd = [os.path.join(BIN, "dpsgd"), "a2c", "--env", "PongNoFrameskip-v4", *PONG_ARGS, "--total-steps",
               str(a.steps), "--eval-episodes", "0", "--seed", str(a.seed), "--no-progress", "--out", out,
               "--threads", str(lay["threads"])]
    if kind == "lda" and lay.get("mode"):
        cmd += ["--thread-mode", lay["mode"]]
    if lay["overlap"]:
        cmd.append("--overlap")
    if lay["ranks"] > 1:
        cmd = [os.path.join(BIN, "mpiexec"), "-n", str(lay["ranks"])] + cmd
    return cmd


def run_one(kind: str, lay: dict, a) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpsgd-scaling-") as d:
        out = os.path.join(d, "out")
        cmd = command(kind, lay, a, out)
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_THREADING_LAYER="threadsafe")
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            return {"error": r.stderr[-800:], "command": shlex.join(cmd)}
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
    fw = m.get("framework", m)
    row = {"command": shlex.join(cmd), "process_seconds": wall, "load_avg": os.getloadavg()[0],
           "staleness_mean": fw.get("staleness_mean"),
           "exchange_wait_seconds": fw.get("exchange_wait_seconds_per_worker"),
           "framework_seconds": fw.get("wall_seconds"), "peak_rss_mb_per_rank": fw.get("peak_rss_mb_per_rank"),
           "cpu_seconds_per_rank": fw.get("cpu_seconds_per_rank")}
    if kind == "lda":
        row.update(train_seconds=m["train_seconds"], rate=m["docs_per_second"], load_seconds=m["load_seconds"],
                   heldout_loglik=m["heldout_loglik"], documents=m["documents_seen"],
                   phase_seconds=m.get("phase_seconds"))
    else:
        row.update(train_seconds=m.get("train_seconds"), rate=m.get("env_steps_per_second"),
                   load_seconds=None, documents=m.get("env_steps"))
    return row


def ensure_corpus(a) -> None:
    """The synthetic corpus as ``.npz`` + ``.vocab.txt`` (built once, O(tokens))."""
    a.corpus_path = os.path.join(a.cache, f"synthetic_{a.docs // 1000}k_v{a.words // 1000}k.npz")
    if os.path.exists(a.corpus_path):
        return
    import scipy.sparse as sp

    from algorithms.dpsvi.corpus import synthetic_lda

    os.makedirs(a.cache, exist_ok=True)
    t = time.perf_counter()
    X, _ = synthetic_lda(a.docs, a.words, 50, doc_length=250, alpha=0.1, eta=0.01, seed=a.seed)
    sp.save_npz(a.corpus_path, X)
    with open(a.corpus_path[:-4] + ".vocab.txt", "w") as f:
        f.write("\n".join(f"w{i}" for i in range(a.words)) + "\n")
    print(f"corpus {a.corpus_path}: {X.shape[0]} docs, {X.shape[1]} words, {int(X.sum())} tokens, "
          f"{X.nnz} non-zeros, built in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


def report(kind: str, results: dict, a) -> str:
    unit = "docs/s" if kind == "lda" else "agent steps/s"
    ref_name = "1 process x 2 threads"
    ref = med([r["rate"] for r in results.get(ref_name, []) if "error" not in r])
    lines = [f"| layout | ranks on {CORES} cores | training {unit} | x 1 process x 2 threads | whole run s | "
             f"of it: reading s | training s | rest s | whole / training | " + ("held-out ll | " if kind == "lda" else "")
             + "staleness | exchange wait s/worker | CPU s per 1k " + unit.split("/")[0] + ", all ranks | cores busy in "
             "training | peak RSS MB, largest rank / all ranks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if kind == "lda" else "") + "---:|---:|---:|---:|---:|"]
    for name, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        if not ok:
            lines.append(f"| {name} | FAILED: {rows[0]['error'][-200:]!r} |")
            continue
        lay = next(x for x in layouts(kind) if x["name"] == name)
        over = "oversubscribed" if lay["ranks"] > CORES or lay["ranks"] * lay["threads"] > CORES else "fits"
        rate = med([r["rate"] for r in ok])
        whole = med([r["process_seconds"] for r in ok])
        train = med([r["train_seconds"] for r in ok])
        load = med([r["load_seconds"] for r in ok])
        rest = med([r["process_seconds"] - r["train_seconds"] - (r["load_seconds"] or 0.0) for r in ok])
        waits = [statistics.mean(r["exchange_wait_seconds"]) for r in ok if r.get("exchange_wait_seconds")]
        cells = [name, f"{lay['ranks']} ({over})", f"{rate:,.0f}", f"{rate / ref:.2f}" if ref else "-",
                 f"{whole:.1f}", "-" if load is None else f"{load:.1f}", f"{train:.1f}", f"{rest:.1f}",
                 f"{med([r['process_seconds'] / r['train_seconds'] for r in ok]):.2f}"]
        if kind == "lda":
            cells.append(f"{med([r['heldout_loglik'] for r in ok]):.4f}")
        st = med([r["staleness_mean"] for r in ok])
        cells += ["-" if st is None else f"{st:.2f}", f"{med(waits):.2f}" if waits else "-"]
        # CPU seconds of every rank's training (all threads; the server's evaluation thread included)
        cpu = [(sum(r["cpu_seconds_per_rank"]), r) for r in ok if r.get("cpu_seconds_per_rank")]
        cells += ([f"{med([c / r['documents'] * 1000 for c, r in cpu]):.2f}",
                   f"{med([c / r['train_seconds'] for c, r in cpu]):.2f}"] if cpu else ["-", "-"])
        rss = [r["peak_rss_mb_per_rank"] for r in ok if r.get("peak_rss_mb_per_rank")]
        cells.append(f"{med([max(x) for x in rss]):,.0f} / {med([sum(x) for x in rss]):,.0f}" if rss else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: columns of the phase table: metrics.json's ``phase_seconds`` (the root rank's clock)
PHASES = (("start_up", "interpreter + imports"), ("reading", "reading"),
          ("before_training", "first update (MPI, server, kernels, initial eval)"),
          ("initial_evaluation", "of it: initial eval"), ("training", "training"),
          ("final_evaluation", "final eval"), ("npmi", "NPMI"), ("outputs", "outputs"), ("other", "other"))


def phase_report(results: dict) -> str:
    """Where the whole run of each layout goes (medians, seconds; the root rank's clock, then exit =
    the command's wall time after metrics.json was written: MPI finalize, interpreter teardown)."""
    lines = ["| layout | " + " | ".join(label for _, label in PHASES) + " | exit | whole run | whole / training |",
             "|---|" + "---:|" * (len(PHASES) + 3)]
    for name, rows in results.items():
        ok = [r for r in rows if "error" not in r and r.get("phase_seconds")]
        if not ok:
            continue
        cells = [name] + [f"{med([r['phase_seconds'][k] for r in ok]):.2f}" for k, _ in PHASES]
        cells += [f"{med([r['process_seconds'] - r['phase_seconds']['total'] for r in ok]):.2f}",
                  f"{med([r['process_seconds'] for r in ok]):.2f}",
                  f"{med([r['process_seconds'] / r['phase_seconds']['training'] for r in ok]):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(kind: str, results: dict, png: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = [n for n, rows in results.items() if any("error" not in r for r in rows)]
    rates = [med([r["rate"] for r in results[n] if "error" not in r]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    ax.barh(range(len(names)), rates, color=["tab:blue" if "overlap" not in n else "tab:orange" for n in names])
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training docs/s" if kind == "lda" else "agent steps/s")
    ax.set_title(f"dpsgd {kind}: ranks x threads on {CORES} cores (median over reps)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("lda", "pong"))
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--words", type=int, default=50_000)
    p.add_argument("--topics", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=40_000, help="pong: agent steps per run")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="run only the layouts whose name contains one of these")
    p.add_argument("--cache", default=os.path.join(ROOT, "runs", "scaling"))
    p.add_argument("--results-dir", default=RESULTS)
    p.add_argument("--tag", default=None, help="output name under results/scaling/ (default: the part)")
    a = p.parse_args(argv)
    kind = a.part
    lays = [x for x in layouts(kind) if not a.only or any(s in x["name"] for s in a.only)]
    if kind == "lda":
        ensure_corpus(a)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict = {x["name"]: [] for x in lays}
    for rep in range(a.reps):
        for lay in lays:
            r = run_one(kind, lay, a)
            results[lay["name"]].append(r)
            msg = r.get("error", "")[-300:] or (f"{r['rate']:,.0f}/s training, whole run {r['process_seconds']:.1f} s, "
                                                 f"load avg {r['load_avg']:.1f}")
            print(f"  rep {rep} {lay['name']}: {msg}", file=sys.stderr, flush=True)
    what = (f"`dpsgd lda`, synthetic corpus {os.path.basename(a.corpus_path)} ({a.docs:,} documents, 10 % held out, "
            f"V {a.words:,}), K {a.topics}, batch {a.batch_size}, one pass" if kind == "lda" else
            f"`dpsgd a2c` PongNoFrameskip-v4, 16 envs per thread, {a.steps:,} agent steps, no evaluation")
    head = (f"{what}; {a.reps} repetition(s) interleaved, medians; {started} - "
            f"{time.strftime('%H:%M UTC', time.gmtime())}; {platform.node()}, {CORES} cores; "
            f"command: `python -m benchmarks.scaling {' '.join(argv if argv is not None else sys.argv[1:])}`. "
            "whole run = the command from start to exit; reading = the corpus (`load_seconds`); rest = whole run - "
            "reading - training (interpreter, imports, MPI start-up, kernel loading, hello, the final gather and "
            "evaluation, outputs). exchange wait = seconds a worker's computing thread spent in push/pull or "
            "waiting for an answer (mean over workers).")
    table = report(kind, results, a)
    if kind == "lda":
        import scipy.sparse as sp

        X = sp.load_npz(a.corpus_path)
        csr = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
        model = 4 * X.shape[1] * a.topics / 2**20
        table += (f"\n\nThe corpus as CSR (float32 counts, int32 indices): {csr:,.0f} MB; the model (V x K float32): "
                  f"{model:,.0f} MB; 2 x (CSR + model) = {2 * (csr + model):,.0f} MB.")
        phases = phase_report(results)
        if phases:
            table += ("\n\nWhere the whole run goes (seconds, medians; `phase_seconds` of metrics.json, the root "
                      "rank's clock - under MPI the workers read their shards during its 'first update' phase; "
                      "whole / training here divides by the training window, evaluations that paused it "
                      "included):\n\n" + phases)
    text = head + "\n\n" + table + "\n"
    print(text)
    os.makedirs(a.results_dir, exist_ok=True)
    base = os.path.join(a.results_dir, "scaling", a.tag or kind)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    with open(base + ".md", "w") as f:
        f.write(text)
    with open(base + ".json", "w") as f:
        json.dump({"args": vars(a), "results": results}, f, indent=1, default=str)
    plot(kind, results, base + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
