"""Issue 5, item 1: `kill -9` of a worker in the middle of `mpiexec -n 3 dpsgd lda` / `dpsgd a2c`
ends the job with a non-zero exit within 30 s; the last checkpoint is intact, and `--resume`
continues from it (the counters start at the checkpoint's, not at zero: at most one checkpoint
interval of work is lost) and reaches the final quality of an uninterrupted reference run.

Each test runs three jobs: (a) the uninterrupted reference, (b) the same run with
``--checkpoint-every`` whose worker rank 2 is SIGKILLed once a checkpoint with some progress
exists, (c) ``--resume`` of (b)'s output directory to the end. The victim's PID is found in
/proc (no psutil): the processes under the launcher that run ``dpsgd.launch`` with
``PMI_RANK=2`` in their environment (the ranks' death-watch helpers run something else).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, clean_env, mpiexec_path, mpirun

PYDOC = ROOT / "benchmarks" / "data" / "pydoc.npz"
VICTIM = 2  # rank 2 = worker 1 (rank 0 serves)


# ---------------------------------------------------------------------------- /proc helpers


def _children():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command name may hold spaces
        kids.setdefault(ppid, []).append(int(d))
    return kids


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """{MPI rank: pid} of the ranks of the job started by ``launcher_pid`` (mpiexec), from /proc."""
    kids, todo, out = _children(), [launcher_pid], {}
    while todo:
        for pid in kids.get(todo.pop(), []):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if b"dpsgd.launch" not in cmd:  # hydra's proxy, the death watchers
                continue
            for kv in env:
                if kv.startswith(b"PMI_RANK="):
                    out[int(kv[len(b"PMI_RANK="):])] = pid
    return out


# ---------------------------------------------------------------------------- the three runs


def _latest_checkpoint(out):
    """(arrays, meta) of OUT/checkpoints/shard0.npz, or None while there is none (yet)."""
    from dpsgd import checkpoint as ckpt

    try:
        return ckpt.load_latest(str(out / "checkpoints"), 0, warn=lambda *_: None)
    except ckpt.CheckpointError:
        return None


def reference_run(args, out, timeout=300):
    r = mpirun(3, ["-m", "dpsgd.launch", *args, "--out", out], timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def kill_a_worker_mid_run(args, out, tmp_path, min_updates):
    """`mpiexec -n 3 dpsgd ARGS --out OUT`; SIGKILL rank 2 once a checkpoint of at least
    ``min_updates`` updates exists. Asserts a non-zero exit within 30 s and an intact
    checkpoint; returns the checkpoint's meta."""
    from dpsgd import checkpoint as ckpt

    err_path, out_path = tmp_path / "killed.stderr", tmp_path / "killed.stdout"
    cmd = [mpiexec_path(), "-n", "3", sys.executable, "-m", "mpi4py", "-m", "dpsgd.launch", *map(str, args),
           "--out", str(out)]
    with open(err_path, "w") as err, open(out_path, "w") as stdout:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, env=clean_env(), cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        pids, ck = {}, None
        while VICTIM not in pids or ck is None or ck[1]["total_updates"] < min_updates:
            assert proc.poll() is None, (f"the run ended (exit {proc.returncode}) before it was killed; "
                                         f"checkpoint: {ck and ck[1]['total_updates']}\n{err_path.read_text()}")
            assert time.monotonic() < deadline, "no checkpoint within 120 s:\n" + err_path.read_text()
            if VICTIM not in pids:
                pids = rank_pids(proc.pid)
            ck = _latest_checkpoint(out)
            time.sleep(0.02)
        pid = pids[VICTIM]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the job did not end within 30 s of the kill:\n" + err_path.read_text())
        assert time.monotonic() - t_kill < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    assert proc.returncode != 0, text
    # the PID found in /proc is the one rank 0 announced for worker 1
    assert f"rank {VICTIM} = worker {VICTIM - 1} (pid {pid} " in text, text
    # the dead rank's death watcher names it, and only it (not the ranks the launcher killed after
    # it; MPICH's own "BAD TERMINATION" line may name another PID). The server gives the watcher
    # 1 s when MPI_Testsome fails on the dead peer before it aborts the job.
    assert f"dpsgd: rank {VICTIM} (worker {VICTIM - 1}, pid {pid} on " in text, text
    assert text.count("ended without finishing") == 1, text
    # the newest checkpoint itself is intact (no fall-back to shard0.prev.npz): it loads and verifies
    _, meta = ckpt.load_npz(ckpt.shard_path(str(out / "checkpoints"), 0))
    assert meta["total_updates"] >= ck[1]["total_updates"]  # the one seen before the kill, or a newer one
    assert not (out / "metrics.json").exists()  # the killed run wrote no results
    return meta


def resumed_run(args, killed_out, out, timeout=300):
    r = mpirun(3, ["-m", "dpsgd.launch", *args, "--resume", killed_out, "--out", out], timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def assert_started_from(f, ck_meta, total):
    """The resumed run's framework metrics ``f`` continue the checkpoint ``ck_meta``."""
    done = int(ck_meta["total_updates"])
    # every worker's first pull got the checkpoint's model (version > 0), not a fresh one
    assert min(f["hello_versions"]) >= ck_meta["version"] > 0, (f["hello_versions"], ck_meta["version"])
    assert f["total_updates"] >= total
    # the server's count went on from the checkpoint: the resumed workers added only what was
    # left (+ at most one update per worker computed while the last pushes were in flight)
    own = sum(f["local_updates_per_worker"])
    assert f["total_updates"] - done <= own <= f["total_updates"] - done + f["n_workers"], (own, done, f)


# ---------------------------------------------------------------------------- dpsgd lda


# Held-out log-likelihood (nats/word) of the LDA run below, measured by hand while writing this
# test (the held-out documents depend on --seed; asynchrony makes runs of one seed differ too):
#   uninterrupted, seed 0 (9 runs): -7.4416 -7.4221 -7.4633 -7.4332 -7.4451 -7.4106 -7.4038
#                                   -7.4672 -7.4229: mean -7.434, sd 0.022, range 0.063
#   uninterrupted, seeds 1, 2, 3: -7.4428 -7.3564 -7.3776 (seeds 0-3: range 0.11)
#   killed at 128-156 of 489 updates and resumed, seed 0 (7 runs): -7.4079 -7.4731 -7.4247
#                                   -7.4179 -7.4290 -7.4385 -7.4540: mean -7.435
#   (before the fix of the threads' cursor, see the next test, 6 runs: -7.4308 -7.4079 -7.4141
#    -7.4204 -7.4203 -7.4283: at 8 passes re-reading the first documents hardly shows)
# The resumed run is compared with one uninterrupted run of the same seed: the difference of two
# such runs has sd ~0.03 (sqrt 2 x 0.022), and 0.1 is over 3 sd of it (and below the spread
# between seeds, which change the held-out documents).
LDA_TOLERANCE = 0.1


@pytest.mark.mpi
@pytest.mark.skipif(not PYDOC.exists(), reason="bundled corpus missing")
def test_lda_resume_after_kill_9_reaches_the_reference_quality(tmp_path):
    lda = ["lda", "--corpus", PYDOC, "--topics", 10, "--passes", 8, "--batch-size", 128, "--threads", 1,
           "--eval-every", 1000, "--seed", 0, "--no-progress", "--quiet"]
    ref = reference_run(lda, tmp_path / "ref")
    total = ref["framework"]["total_updates"]

    killed = tmp_path / "killed"
    ck = kill_a_worker_mid_run([*lda, "--checkpoint-every", 0.2], killed, tmp_path, min_updates=total // 5)
    done = int(ck["total_updates"])
    assert 0 < done < total

    m = resumed_run(lda, killed, tmp_path / "resumed")
    f = m["framework"]
    assert_started_from(f, ck, total)
    # the server's first evaluation (progress.csv) is of the checkpoint's model at its update count
    rows = list(csv.DictReader((tmp_path / "resumed" / "progress.csv").open()))
    assert int(rows[0]["updates"]) == done, rows[:2]
    print(f"lda: killed at checkpoint {done}/{total} updates; held-out ll resumed {m['heldout_loglik']:.4f}, "
          f"uninterrupted {ref['heldout_loglik']:.4f}")
    assert abs(m["heldout_loglik"] - ref["heldout_loglik"]) <= LDA_TOLERANCE, (m["heldout_loglik"], ref["heldout_loglik"])


def test_lda_resumed_threads_go_on_through_their_documents():
    """A resumed thread's cursor (the next minibatch of its documents) is where an uninterrupted
    thread's is after its share of the checkpoint's updates: not back at its first minibatch
    (which, with --passes <= 1, would revisit documents and never reach the others)."""
    import numpy as np
    import scipy.sparse as sp

    from algorithms.dpsvi.svi import SVIAlgorithm
    from dpsgd.plugin import ThreadContext

    X = sp.csr_matrix(np.random.default_rng(0).poisson(2.0, (37, 20)).astype(np.float32))

    def thread(start_updates):  # thread 1 of worker 1 of 2, 2 threads each: 4 threads in all
        alg = SVIAlgorithm(None, 20, 3, alpha=0.3, eta=0.3, total_docs=74, batch_size=4,
                           loader=lambda w, n: X)
        alg.start_updates = start_updates
        ctx = ThreadContext(worker=1, n_workers=2, thread=1, n_threads=2, seed=0)
        return alg, alg.make_thread_state(ctx), ctx

    alg, st, ctx = thread(0)
    assert (st.lo, st.hi) == (18, 37)  # 19 documents: 5 minibatches per pass, the last one short
    w = alg.init_params(np.random.default_rng(0))
    for k in range(12):  # more than two passes: the cursor wraps around
        assert thread(4 * k)[1].pos == st.pos, k
        alg.compute_update(w, st, ctx)


# ---------------------------------------------------------------------------- dpsgd a2c


@pytest.mark.mpi
def test_a2c_resume_after_kill_9_solves(tmp_path):
    # uninterrupted runs of this command solved CartPole (400 twice in a row) at 13.8k-73k env
    # steps (7 runs; 40 steps per update: 350-1800 updates, 1-6 s of training); the worker is
    # killed once a checkpoint holds >= 50 updates. Resumed runs solved at 14k-31k (6 runs).
    a2c = ["a2c", "--env", "CartPole-v1", "--total-steps", 400_000, "--target-return", 400, "--eval-seconds", 0.3,
           "--eval-episodes", 5, "--solve-evals", 2, "--seed", 0, "--no-progress"]
    ref = reference_run(a2c, tmp_path / "ref")
    assert ref["solved"] is True, ref.get("final_eval_return_mean")
    spu = ref["env_steps"] // ref["framework"]["total_updates"]  # env steps per update (n_envs * n_steps)

    killed = tmp_path / "killed"
    ck = kill_a_worker_mid_run([*a2c, "--checkpoint-every", 0.3], killed, tmp_path, min_updates=50)
    done = int(ck["total_updates"])

    m = resumed_run(a2c, killed, tmp_path / "resumed")
    print(f"a2c: killed at checkpoint {done} updates ({done * spu} env steps); resumed solved={m['solved']} at "
          f"{m['env_steps_to_target']} env steps (counted from the start of the first run), "
          f"uninterrupted at {ref['env_steps_to_target']}")
    assert m["solved"] is True, m.get("final_eval_return_mean")
    f = m["framework"]
    # a solved run stops early: its own target is the run's total, not --total-steps
    assert_started_from(f, ck, f["total_updates"])
    # the server's first evaluation is of the checkpoint's model, at its env-step count
    assert m["evaluations"][0]["env_steps"] == done * spu, m["evaluations"][:2]
    assert m["env_steps"] > done * spu
