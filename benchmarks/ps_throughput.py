#!/usr/bin/env python
"""Parameter-server throughput against raw mpi4py, idle server CPU and update-rule cost.

Measures, on this machine:

1. ``ps``: pushes per second through the real framework path (``dpsgd.train`` with a trivial
   algorithm whose ``compute_update`` returns a preallocated constant gradient) for P float32
   parameters and 2, 3, 4 workers (``mpiexec -n 3, 4, 5``: one server rank).
2. ``raw``: round trips per second of plain mpi4py moving the same bytes (each worker
   ``Send``s P floats to rank 0 and ``Recv``s P floats back; rank 0 ``Recv``s from any source
   and answers), interleaved with (1): ps rep, raw rep, ps rep, raw rep, ...
3. the ratio raw / ps (server overhead; the goal is <= 1.5x), the server's own work per push
   (``server_push_seconds``: checking and applying it) and, with one worker, the floor that work
   sets: 1 / (1/raw + work) pushes/s.
4. ``idle``: CPU used by a server rank (``ServerCore`` + ``serve``) whose only worker says
   HELLO and then sends nothing, against a rank blocked in a plain ``comm.Recv`` (and a rank
   waiting with ``dpsgd.transport.wait``, as a worker waiting for its answer does).
5. in-process cost of ``UpdateRule.apply`` per rule and P, plus plain-numpy DC-ASGD-a.

Outputs: markdown tables on stdout and in ``benchmarks/results/ps_throughput.md`` (``--quick``:
``ps_throughput_quick.md``), the raw numbers (``ps_throughput.json``) and a log-log plot of
pushes/s against P (``ps_throughput.png``).

    python -m benchmarks.ps_throughput            # full, about 15-20 minutes on 2 cores
    python -m benchmarks.ps_throughput --quick    # about 1 minute

The children are ``mpiexec -n N python -m mpi4py -m benchmarks.ps_throughput --child
{ps,raw,idle} --n-params P --seconds S``; every one runs under a timeout.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARK = "PSBENCH "  # prefix of the JSON line a child's root prints

FULL_PARAMS = (10**4, 10**5, 10**6, 10**7)
QUICK_PARAMS = (10**4, 10**6)
FULL_RANKS = (2, 3, 4, 5)  # 2: one worker and the server, each on a core of its own
QUICK_RANKS = (3,)
RULE_NAMES = ("asgd", "dc-asgd-c", "dc-asgd-a")


def n_cores() -> int:
    from dpsgd.config import available_cores

    return available_cores()


def fmt_p(p: int) -> str:
    e = int(round(np.log10(p)))
    return f"1e{e}" if 10**e == p else str(p)


# =============================================================================== children


def child_ps(n_params: int, seconds: float) -> None:
    import dpsgd
    from dpsgd import RuleConfig, TrainConfig

    class Constant(dpsgd.Algorithm):
        """No work: the same preallocated small gradient every update."""

        def __init__(self, n):
            self.n = n
            self.g = np.full(n, 1e-3, np.float32)

        def init_params(self, rng):
            return np.zeros(self.n, np.float32)

        def compute_update(self, params, state, ctx):
            return self.g

    config = TrainConfig(rule=RuleConfig("dc-asgd-a"), lr=1e-3, threads=1, local_steps=1,
                         total_updates=10**9, max_seconds=seconds, progress=False)
    res = dpsgd.train(Constant(n_params), config)
    if res.is_root:
        m = res.metrics
        out = {"pushes": m["pushes"], "server_seconds": m["server_seconds"],
               "pushes_per_s": m["pushes"] / m["server_seconds"],
               "staleness_mean": m["staleness_mean"], "wall_seconds": m["wall_seconds"],
               "pushes_per_worker": m["pushes_per_worker"], "rejected": m["rejected_pushes"],
               "push_ms": 1e3 * m["server_push_seconds"] / max(m["pushes"], 1)}
        print(MARK + json.dumps(out), flush=True)


def child_raw(n_params: int, seconds: float) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    TAG_DATA, TAG_STOP = 1, 2
    buf = np.zeros(n_params, np.float32)
    comm.Barrier()
    t0 = time.perf_counter()
    if rank == 0:
        status = MPI.Status()
        stopped = 0
        count = np.zeros(size, np.int64)
        while stopped < size - 1:
            comm.Recv(buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
            src = status.Get_source()
            if status.Get_tag() == TAG_STOP:
                stopped += 1
                continue
            comm.Send(buf, dest=src, tag=TAG_DATA)
            count[src] += 1
        elapsed = time.perf_counter() - t0
        n = int(count.sum())
        print(MARK + json.dumps({"round_trips": n, "seconds": elapsed, "round_trips_per_s": n / elapsed,
                                 "per_worker": count[1:].tolist()}), flush=True)
    else:
        empty = np.zeros(0, np.float32)
        while time.perf_counter() - t0 < seconds:
            comm.Send(buf, dest=0, tag=TAG_DATA)
            comm.Recv(buf, source=0, tag=TAG_DATA)
        comm.Send(empty, dest=0, tag=TAG_STOP)


def _cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child_idle(n_params: int, seconds: float) -> None:
    """Rank 0: CPU% of (a) serve() with one silent worker, (b) a plain blocking Recv,
    (c) dpsgd.transport.wait on an Irecv. Rank 1 stays silent for ``seconds`` in each phase."""
    from mpi4py import MPI

    from dpsgd import RuleConfig, TrainConfig
    from dpsgd import transport as T
    from dpsgd.server import ServerCore, serve
    from dpsgd.worker import MPIChannel

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    assert comm.Get_size() == 2, "idle child needs mpiexec -n 2"
    out = {}
    # (a) the parameter server with one worker that says HELLO and then nothing
    if rank == 0:
        config = TrainConfig(rule=RuleConfig("dc-asgd-a"), lr=1e-3, total_updates=10**9,
                             max_seconds=None, progress=False)
        core = ServerCore(np.zeros(n_params, np.float32), config, 1)
        comm.Barrier()
        w0, c0 = time.perf_counter(), _cpu()
        serve(comm, core, [1])
        w1, c1 = time.perf_counter(), _cpu()
        out["serve"] = {"wall": w1 - w0, "cpu": c1 - c0, "cpu_pct": 100 * (c1 - c0) / (w1 - w0)}
    else:
        ch = MPIChannel(comm, 1, n_params)
        w_new = np.empty(n_params, np.float32)
        comm.Barrier()
        ch.exchange(T.KIND_HELLO, 0, 0, 0.0, w_new)
        time.sleep(seconds)
        ch.done()
    # (b) a plain blocking Recv
    tiny = np.zeros(1, np.float32)
    comm.Barrier()
    if rank == 0:
        w0, c0 = time.perf_counter(), _cpu()
        comm.Recv(tiny, source=1, tag=77)
        w1, c1 = time.perf_counter(), _cpu()
        out["recv"] = {"wall": w1 - w0, "cpu": c1 - c0, "cpu_pct": 100 * (c1 - c0) / (w1 - w0)}
    else:
        time.sleep(seconds)
        comm.Send(tiny, dest=0, tag=77)
    # (c) the worker's wait for an answer: Irecv + transport.wait (Test with backing-off sleep)
    comm.Barrier()
    if rank == 0:
        w0, c0 = time.perf_counter(), _cpu()
        T.wait(comm.Irecv(tiny, source=1, tag=78))
        w1, c1 = time.perf_counter(), _cpu()
        out["wait"] = {"wall": w1 - w0, "cpu": c1 - c0, "cpu_pct": 100 * (c1 - c0) / (w1 - w0)}
        print(MARK + json.dumps(out), flush=True)
    else:
        time.sleep(seconds)
        comm.Send(tiny, dest=0, tag=78)


# =============================================================================== parent


def run_child(kind: str, n_ranks: int, n_params: int, seconds: float, timeout: float) -> dict | None:
    """Run one mpiexec child; its root's JSON line, or None (stderr printed) when it fails."""
    mpiexec = Path(sys.executable).with_name("mpiexec")
    cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(n_ranks), sys.executable, "-m", "mpi4py",
           "-m", "benchmarks.ps_throughput", "--child", kind, "--n-params", str(n_params),
           "--seconds", str(seconds)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PMI_SIZE", None)  # a child never thinks it is already inside mpiexec
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        print(f"  FAILED (timeout {timeout:.0f} s): {' '.join(cmd)}\n{err[-3000:]}", flush=True)
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        print(f"  FAILED (exit {proc.returncode}): {' '.join(cmd)}\n--- stdout\n{proc.stdout[-2000:]}"
              f"\n--- stderr\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][len(MARK):])


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, digits=0):
    if not xs:
        return "failed"
    f = f"{{:,.{digits}f}}"
    s = f.format(med(xs))
    if len(xs) > 1:
        s += f" [{f.format(min(xs))}-{f.format(max(xs))}]"
    return s


def bench_throughput(params, ranks, reps, seconds, log) -> dict:
    """Interleaved ps/raw reps for every (P, N)."""
    cores = n_cores()
    out = {}
    for p in params:
        for n in ranks:
            timeout = 3 * seconds + 90 + p / 1e6 * 3
            cell = {"ps": [], "raw": [], "staleness": [], "ps_failed": 0, "raw_failed": 0, "pairs": [],
                    "load": [], "push_ms": []}
            for r in range(reps):
                cell["load"].append(os.getloadavg()[0])
                res_ps = run_child("ps", n, p, seconds, timeout)
                if res_ps is None:
                    cell["ps_failed"] += 1
                else:
                    cell["ps"].append(res_ps["pushes_per_s"])
                    cell["staleness"].append(res_ps["staleness_mean"])
                    cell["push_ms"].append(res_ps["push_ms"])
                res_raw = run_child("raw", n, p, seconds, timeout)
                if res_raw is None:
                    cell["raw_failed"] += 1
                else:
                    cell["raw"].append(res_raw["round_trips_per_s"])
                if res_ps is not None and res_raw is not None:
                    cell["pairs"].append(res_raw["round_trips_per_s"] / res_ps["pushes_per_s"])
                ps_s = (f"ps {res_ps['pushes_per_s']:.1f}/s (staleness {res_ps['staleness_mean']:.2f})"
                        if res_ps else "ps FAILED")
                raw_s = f"raw {res_raw['round_trips_per_s']:.1f}/s" if res_raw else "raw FAILED"
                log(f"  P={fmt_p(p)} N={n} rep {r + 1}/{reps}: {ps_s}, {raw_s}")
            cell["oversubscribed"] = n > cores
            out[(p, n)] = cell
    return out


def table_throughput(res, seconds, reps) -> str:
    cores = n_cores()
    lines = [
        f"### Push throughput: framework (ps) vs raw mpi4py, {seconds:g} s per run, {reps} rep(s), "
        f"{cores} cores",
        "",
        "ps = pushes / server_seconds of `dpsgd.train` (dc-asgd-a, 1 thread per worker, local_steps=1); "
        "raw = round trips/s of Send(P floats) + Recv(P floats) per worker against a rank-0 echo. "
        "Median [min-max] over reps; ratio = median raw / median ps; paired = median over reps of "
        "raw/ps of the back-to-back pair. check+apply = the server's ms per push in "
        "`ServerCore.receive` (decoding, the finite check, the rule's update: work raw does not do); "
        "floor (one worker, where nothing overlaps it) = pushes/s of a server that adds only that work "
        "to the median raw round trip, 1 / (1/raw + check+apply); raw/floor = the lowest ratio raw/ps "
        "such a server can reach (the goal 1.5 is out of reach where it is above); ps/floor = how much of "
        "that floor the framework reaches.",
        "",
        "| P | workers | ranks | cores | ps pushes/s | raw round trips/s | ratio raw/ps | paired ratio | "
        "check+apply ms/push | floor pushes/s | raw/floor | ps/floor | ps MB/s (push+pull) | staleness mean | "
        "load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (p, n), c in res.items():
        ranks = f"{n} (oversubscribed)" if c["oversubscribed"] else str(n)
        ps = spread(c["ps"], 1 if c["ps"] and med(c["ps"]) < 100 else 0)
        raw = spread(c["raw"], 1 if c["raw"] and med(c["raw"]) < 100 else 0)
        if c["ps_failed"]:
            ps += f" ({c['ps_failed']} failed)"
        if c["raw_failed"]:
            raw += f" ({c['raw_failed']} failed)"
        ratio = f"{med(c['raw']) / med(c['ps']):.2f}" if c["ps"] and c["raw"] else "failed"
        paired = f"{med(c['pairs']):.2f}" if c["pairs"] else "failed"
        mbs = f"{med(c['ps']) * 2 * 4 * p / 1e6:,.0f}" if c["ps"] else "-"
        st = f"{med(c['staleness']):.2f}" if c["staleness"] else "-"
        load = f"{med(c['load']):.1f}"
        work = med(c["push_ms"]) if c.get("push_ms") else None
        floor = 1 / (1 / med(c["raw"]) + work / 1e3) if work is not None and c["raw"] and n == 2 else None
        work_s = f"{work:.3f}" if work is not None else "-"
        floor_s = f"{floor:,.{1 if floor < 100 else 0}f}" if floor else "-"
        of_floor = f"{med(c['ps']) / floor:.2f}" if floor and c["ps"] else "-"
        best = f"{med(c['raw']) / floor:.2f}" if floor else "-"
        lines.append(f"| {fmt_p(p)} | {n - 1} | {ranks} | {cores} | {ps} | {raw} | {ratio} | {paired} | {work_s} "
                     f"| {floor_s} | {best} | {of_floor} | {mbs} | {st} | {load} |")
    lines += ["", "load avg: the machine's 1-minute load average before each ps/raw pair (median): "
              f"above {cores}, other jobs compete for the cores, and a rank that waits for a message is "
              "often not scheduled when it arrives."]
    return "\n".join(lines) + "\n"


def bench_idle(reps, seconds, log) -> list[dict]:
    out = []
    for r in range(reps):
        load = os.getloadavg()[0]
        res = run_child("idle", 2, 1000, seconds, timeout=3 * seconds + 90)
        if res is not None:
            res["load"] = load
        if res is None:
            log(f"  idle rep {r + 1}: FAILED")
            continue
        log(f"  idle rep {r + 1}: serve {res['serve']['cpu_pct']:.2f} %, blocking Recv "
            f"{res['recv']['cpu_pct']:.1f} %, transport.wait {res['wait']['cpu_pct']:.2f} %")
        out.append(res)
    return out


def table_idle(res, seconds, reps) -> str:
    lines = [
        f"### Idle CPU of rank 0 while its peer is silent for {seconds:g} s ({len(res)}/{reps} reps ok)",
        "",
        "CPU% of one core = (user+sys CPU seconds from getrusage) / wall seconds, median [min-max].",
        "",
        "| rank 0 is in | CPU % of one core | wall s (median) | goal |",
        "|---|---|---|---|",
    ]
    names = {"serve": ("`dpsgd.server.serve` (ServerCore, 1 worker after HELLO)", "< 5 %"),
             "recv": ("plain blocking `comm.Recv`", "(reference)"),
             "wait": ("`comm.Irecv` + `dpsgd.transport.wait` (a worker awaiting its answer)", "")}
    for key, (label, goal) in names.items():
        pct = [x[key]["cpu_pct"] for x in res]
        wall = [x[key]["wall"] for x in res]
        lines.append(f"| {label} | {spread(pct, 2) if pct else 'failed'} | {med(wall):.2f} | {goal} |")
    if res:
        load = med([x["load"] for x in res])
        lines += ["", f"Load average before the runs (median): {load:.1f} on {n_cores()} cores. A rank that "
                  "busy-waits gets at most its scheduler share of a core (about cores / runnable tasks, "
                  f"~{min(100, 100 * n_cores() / max(load, 1)):.0f} % here), so on a loaded machine the blocking "
                  "Recv's figure is that share, not 100 %; a rank that sleeps uses what it needs."]
    return "\n".join(lines) + "\n"


def _timeit(fn, budget=0.4, min_reps=7, max_reps=2000) -> list[float]:
    fn()  # warm-up (compilation, page faults)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_updates(params, log) -> dict:
    from dpsgd import RuleConfig, UpdateRule
    from dpsgd.hogwild import merge_pull, sgd_step, snapshot_delta
    from dpsgd.rules import all_finite

    rng = np.random.default_rng(0)
    out = {}
    for p in params:
        w = (rng.standard_normal(p) * 0.1).astype(np.float32)
        g = (rng.standard_normal(p) * 0.01).astype(np.float32)
        lr = 1e-3
        row = {}
        for name in RULE_NAMES:
            rule = UpdateRule(RuleConfig(name), p, 4)
            for m in range(4):
                rule.reset_worker(m, w)
            ww = w.copy()
            row[name] = _timeit(lambda: rule.apply(ww, g, 1, lr))
        # as in the server: the 4 workers' pushes (4 receive buffers, 4 rows of state) in turn,
        # so the working set (9 P-vectors) exceeds the cache from P ~ 1e6 on
        rule = UpdateRule(RuleConfig("dc-asgd-a"), p, 4)
        for m in range(4):
            rule.reset_worker(m, w)
        gs = [g.copy() for _ in range(4)]
        ww = w.copy()
        turn = [0]

        def in_turn():
            m = turn[0] = (turn[0] + 1) % 4
            rule.apply(ww, gs[m], m, lr)

        row["dc-asgd-a, 4 workers in turn"] = _timeit(in_turn)
        del rule, gs
        # plain numpy DC-ASGD-a, float32: the textbook expression (allocates temporaries) ...
        ms = np.zeros(p, np.float32)
        wbak = w.copy()
        ww = w.copy()
        lam, decay, eps, lr32 = np.float32(2.0), np.float32(0.95), np.float32(1e-7), np.float32(lr)

        def numpy_expr():
            g2 = g * g
            ms[:] = decay * ms + (np.float32(1) - decay) * g2
            ww[:] = ww - lr32 * (g + lam / (np.sqrt(ms) + eps) * g2 * (ww - wbak))
            wbak[:] = ww

        # ... and in place with preallocated buffers (no allocation)
        t1, t2 = np.empty(p, np.float32), np.empty(p, np.float32)

        def numpy_inplace():
            one_m = np.float32(1) - decay
            np.multiply(g, g, out=t1)                # t1 = g2
            np.multiply(ms, decay, out=ms)
            np.multiply(t1, one_m, out=t2)
            np.add(ms, t2, out=ms)                   # ms = decay*ms + (1-decay)*g2
            np.sqrt(ms, out=t2)
            np.add(t2, eps, out=t2)
            np.divide(t1, t2, out=t1)                # g2 / (sqrt(ms)+eps)
            np.subtract(ww, wbak, out=t2)
            np.multiply(t1, t2, out=t1)
            np.multiply(t1, lam, out=t1)
            np.add(t1, g, out=t1)                    # g + lam * g2/(sqrt(ms)+eps) * (w - wbak)
            np.multiply(t1, lr32, out=t1)
            np.subtract(ww, t1, out=ww)
            np.copyto(wbak, ww)

        row["numpy-a (expression)"] = _timeit(numpy_expr)
        row["numpy-a (in place)"] = _timeit(numpy_inplace)
        # the other per-push passes of the framework path, for reference
        snap, wstart, wnew, buf = w.copy(), w.copy(), w.copy(), np.empty(p, np.float32)
        row["server: all_finite"] = _timeit(lambda: all_finite(g))
        row["worker: sgd_step"] = _timeit(lambda: sgd_step(ww, g, np.float32(lr)))
        row["worker: snapshot_delta"] = _timeit(lambda: snapshot_delta(buf, wstart, ww, snap, np.float32(1 / lr)))
        row["worker: merge_pull"] = _timeit(lambda: merge_pull(ww, wstart, wnew, snap))
        row["memcpy (np.copyto)"] = _timeit(lambda: np.copyto(buf, g))
        out[p] = row
        log(f"  P={fmt_p(p)}: " + ", ".join(f"{k} {1e3 * med(v):.3f} ms" for k, v in row.items()))
    return out


def table_updates(res) -> str:
    params = list(res)
    keys = list(next(iter(res.values())))
    lines = [
        "### In-process cost per call (ms, median over repeated calls; 4 workers' state, worker 1)",
        "",
        "`UpdateRule(RuleConfig(name), P, 4).apply(w, g, 1, lr)` (the same worker and arrays every call: "
        "warm cache up to P ~ 1e6 on this 32 MB L3); \"4 workers in turn\": apply(w, g_m, m, lr) for m = 0, 1, 2, 3, "
        "... with 4 receive buffers, as the server does (working set 9 P-vectors); numpy-a = plain-numpy float32 DC-ASGD-a "
        "(expression: allocating temporaries; in place: preallocated `out=` buffers). Goal: dc-asgd-a "
        "at P = 1e6 <= 1 ms. The rows below the line are the other per-push passes of the framework path: "
        "a one-thread worker with plain SGD steps and local_steps 1 (the `ps` runs above) copies its gradient "
        "into the message (memcpy) when it is at most 1 MB (a larger one is sent from the gradient itself) and "
        "does none of the worker passes; sgd_step, snapshot_delta and merge_pull "
        "are the passes of workers with several threads, --overlap, local_steps > 1 or a local RMSprop/Adam.",
        "",
        "| operation | " + " | ".join(f"P={fmt_p(p)}" for p in params) + " |",
        "|---|" + "---|" * len(params),
    ]
    for k in keys:
        if k == "server: all_finite":
            lines.append("| *other passes* |" + " |" * len(params))
        cells = []
        for p in params:
            t = res[p][k]
            cells.append(f"{1e3 * med(t):.3f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if any(p >= 10**6 for p in params):
        p = 10**6 if 10**6 in res else max(params)
        a = med(res[p]["dc-asgd-a"])
        lines += ["", f"dc-asgd-a at P={fmt_p(p)}: {1e3 * a:.3f} ms; effective bandwidth "
                  f"{7 * 4 * p / a / 1e9:.1f} GB/s (7 float32 streams: read w, g, w_bak, ms; write w, w_bak, ms; "
                  "the same arrays every call, so they may be in cache up to a few MB)."]
    return "\n".join(lines) + "\n"


def plot(res, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    ranks = sorted({n for _, n in res})
    params = sorted({p for p, _ in res})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(ranks):
        for kind, style in (("ps", "-o"), ("raw", "--s")):
            xs, ys, lo, hi = [], [], [], []
            for p in params:
                v = res[(p, n)][kind]
                if v:
                    xs.append(p)
                    ys.append(med(v))
                    lo.append(med(v) - min(v))
                    hi.append(max(v) - med(v))
            if xs:
                label = f"{'dpsgd ps' if kind == 'ps' else 'raw mpi4py'}, {n - 1} workers"
                ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, color=colors[i % len(colors)], capsize=3,
                            label=label, alpha=0.9 if kind == "ps" else 0.6)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters P (float32)")
    ax.set_ylabel("pushes/s (ps) or round trips/s (raw)")
    ax.set_title(f"Parameter-server throughput, 1 server rank, {n_cores()} cores (median, min-max)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="P in {1e4, 1e6}, 2 workers, 1 rep, S=2")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per run (default 5; quick 2)")
    ap.add_argument("--reps", type=int, default=None, help="reps per cell (default 3; quick 1)")
    ap.add_argument("--child", choices=("ps", "raw", "idle"), help=argparse.SUPPRESS)
    ap.add_argument("--n-params", type=int, default=10**6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        seconds = args.seconds if args.seconds is not None else 5.0
        {"ps": child_ps, "raw": child_raw, "idle": child_idle}[args.child](args.n_params, seconds)
        return 0

    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 5.0)
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    params = QUICK_PARAMS if args.quick else FULL_PARAMS
    ranks = QUICK_RANKS if args.quick else FULL_RANKS
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "ps_throughput_quick" if args.quick else "ps_throughput"
    t_start = time.perf_counter()
    version = _git_version()  # at the start: the code measured

    def log(msg):
        print(msg, flush=True)

    log(f"# ps_throughput: P={[fmt_p(p) for p in params]} ranks={list(ranks)} reps={reps} S={seconds:g}s "
        f"cores={n_cores()} ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})")
    log("## update cost (in process)")
    upd = bench_updates(params, log)
    log("## throughput (interleaved ps / raw)")
    thr = bench_throughput(params, ranks, reps, seconds, log)
    log("## idle CPU")
    idle_s = seconds if args.quick else max(seconds, 5.0)
    idle = bench_idle(reps, idle_s, log)

    header = [
        f"# Parameter-server throughput ({'quick' if args.quick else 'full'} run)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {n_cores()} cores shared with other jobs "
        f"(noisy: medians); dpsgd at {version}; MPICH {_mpich_version()}; Python {sys.version.split()[0]}, "
        f"numpy {np.__version__}. "
        f"Command: `python -m benchmarks.ps_throughput{' --quick' if args.quick else ''}"
        f"{'' if args.seconds is None else f' --seconds {args.seconds:g}'}"
        f"{'' if args.reps is None else f' --reps {args.reps}'}`; total {time.perf_counter() - t_start:.0f} s.",
        "",
    ]
    md = "\n".join(header) + "\n" + table_throughput(thr, seconds, reps) + "\n" + table_idle(idle, idle_s, reps) \
        + "\n" + table_updates(upd)
    print("\n" + md)
    (RESULTS / f"{stem}.md").write_text(md)
    raw = {"seconds": seconds, "reps": reps, "cores": n_cores(),
           "throughput": [{"n_params": p, "ranks": n, **c} for (p, n), c in thr.items()],
           "idle": idle, "updates_ms": {str(p): {k: {"median": 1e3 * med(v), "min": 1e3 * min(v), "calls": len(v)}
                                                 for k, v in row.items()} for p, row in upd.items()}}
    (RESULTS / f"{stem}.json").write_text(json.dumps(raw, indent=1))
    plot(thr, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / (stem + '.md')}, {stem}.json, {stem}.png "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 0


def _git_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "dpsgd"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"commit {head}" + (" (dpsgd/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"


def _mpich_version() -> str:
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # the parent never initialises MPI
        from mpi4py import MPI

        v = MPI.Get_library_version().split("\n")[0]
        return v.replace("MPICH Version:", "").strip()
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    sys.exit(main())
