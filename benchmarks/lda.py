"""DPSVI against scikit-learn's online LDA (and gensim, Vowpal Wabbit and tomotopy when installed).

Same run, same data, same evaluator: the corpus is shuffled once, 10 % of the documents are
held out and split into observed/test halves (document completion, see
``algorithms.dpsvi.evaluate``); every system trains on the other 90 % with the same K, batch
size and number of passes, and its normalised topic-word matrix is scored by the same code.
Systems are interleaved within each repetition; the table shows medians over ``--reps``.

Columns: ``train docs/s`` = documents processed per second of training (evaluations
excluded); ``fit docs/s`` = documents x passes / wall time of the call a user makes
(scikit-learn's ``fit`` ends with an extra E-step over every document; the MPI run includes
starting the 3 processes); ``docs per CPU-s`` = documents per second of CPU time the process
used while training (all its threads; robust to other jobs on a shared machine); ``heldout ll`` = per-word held-out log-likelihood after the last
pass; ``NPMI`` over the top-10 words with the whole corpus as reference; ``t(sk ll)`` = training
seconds until the system first reached the final held-out log-likelihood of scikit-learn's run
with the same seed (from the per-pass curve, linear interpolation; '-' when a run never did);
``kB/push`` = bytes a worker sends per push under mpiexec (measured, headers included). "2
threads": the default thread mode (Hogwild: each thread its own minibatches); "sharing
minibatches" (``--minibatch-threads``): ``thread_mode='minibatch'``; "lazy
layout": DPSVI with ``sparse_push=True`` in one process (the default there is the dense layout);
"dense pushes": ``mpiexec`` with ``--sparse-push off`` (every push carries all V x K values; the
default under mpiexec is the lazy-decay layout, whose pushes carry the minibatch's words).

    python -m benchmarks.lda [--corpus benchmarks/data/pydoc.npz] [--topics 50] [--passes 2]
                             [--reps 3] [--mpi] [--synthetic] [--out benchmarks/results]
    # the scale of issue 12: 100k synthetic documents, V 50k, K 100, one pass (~25 min on 2 cores)
    python -m benchmarks.lda --synthetic --synthetic-docs 100000 --synthetic-words 50000 \
        --synthetic-topics 50 --doc-length 250 --topics 100 --passes 1 --reps 3 --mpi \
        --minibatch-threads --roofline --no-whole-fit --peers vowpalwabbit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_THREADING_LAYER", "threadsafe")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from algorithms.dpsvi.corpus import load_corpus, synthetic_lda  # noqa: E402
from algorithms.dpsvi.evaluate import heldout_loglik, npmi, split_documents, topic_recovery  # noqa: E402
from dpsgd.config import available_cores  # noqa: E402


def parallel_capacity() -> float:
    """Cores this process really gets now: two nogil spin threads vs one (2.0 on an idle
    2-core machine; ~1.0 when another job keeps a core busy)."""
    import threading

    from numba import njit

    @njit(nogil=True)
    def spin(n):
        s = 0.0
        for i in range(n):
            s += np.sqrt(float(i))
        return s

    spin(10)
    walls = []
    for nt in (1, 2):
        ths = [threading.Thread(target=spin, args=(30_000_000,)) for _ in range(nt)]
        t = time.perf_counter()
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        walls.append(time.perf_counter() - t)
    return 2 * walls[0] / walls[1]


def evaluate(beta, data, K):
    return heldout_loglik(beta, data["Xo"], data["Xt"], alpha=1.0 / K)


# ---------------------------------------------------------------------------- systems
# each returns {"curve": [(train_seconds, documents, ll)], "train_s", "fit_s", "beta"}


def run_sklearn(data, K, passes, batch, seed, whole_fit=True):
    from sklearn.decomposition import LatentDirichletAllocation

    # float64, as scikit-learn gets counts from CountVectorizer (integers -> float64): given float32
    # it computes in float32 since 1.2, and its exp(E[log beta]) of words near the prior (~e^-100)
    # are then float32 subnormals, which made it ~2.7x slower on the V 50k corpus
    X = data["Xtr"].astype(np.float64)
    n = X.shape[0]
    # training as fit() does it, pass by pass (partial_fit with total_samples = n is fit's loop)
    m = LatentDirichletAllocation(n_components=K, learning_method="online", batch_size=batch,
                                  total_samples=n, random_state=seed, n_jobs=1)
    curve, train, cpu = [], 0.0, 0.0
    for p in range(passes):
        t, c = time.perf_counter(), time.process_time()
        m.partial_fit(X)
        train += time.perf_counter() - t
        cpu += time.process_time() - c
        curve.append((train, (p + 1) * n, evaluate(m.components_, data, K)))
    # the whole fit() as a user calls it (ends with an E-step over every document)
    fit_s = None
    if whole_fit:
        t = time.perf_counter()
        LatentDirichletAllocation(n_components=K, learning_method="online", batch_size=batch, max_iter=passes,
                                  random_state=seed, n_jobs=1).fit(X)
        fit_s = time.perf_counter() - t
    return {"curve": curve, "train_s": train, "cpu_s": cpu, "fit_s": fit_s, "beta": m.components_}


def run_dpsvi(data, K, passes, batch, seed, threads, sparse="auto", mode="hogwild", whole_fit=True):
    from algorithms.dpsvi import DPSVI

    X = data["Xtr"]
    n = X.shape[0]
    kw = dict(n_components=K, batch_size=batch, max_iter=passes, random_state=seed, n_threads=threads,
              sparse_push=sparse, thread_mode=mode)
    # as scikit-learn's above: partial_fit with total_samples = n is fit()'s loop, pass by pass
    m = DPSVI(**kw, total_samples=n)
    curve, train, cpu = [], 0.0, 0.0
    for p in range(passes):
        t, c = time.perf_counter(), time.process_time()
        m.partial_fit(X)
        train += time.perf_counter() - t
        cpu += time.process_time() - c
        curve.append((train, (p + 1) * n, evaluate(m.components_, data, K)))
    fit_s = None
    if whole_fit:
        t = time.perf_counter()
        DPSVI(**kw).fit(X)
        fit_s = time.perf_counter() - t
    return {"curve": curve, "train_s": train, "cpu_s": cpu, "fit_s": fit_s, "beta": m.components_}


def run_dpsvi_mpi(data, K, passes, batch, seed, ranks=3, rule="asgd", sparse="auto"):
    """`mpiexec -n 3 dpsgd lda` (1 server + 2 workers x 1 thread) on the training documents."""
    from algorithms.dpsvi import DPSVI

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "train.npz")
        sp.save_npz(path, data["Xtr"])
        with open(os.path.join(d, "train.vocab.txt"), "w") as f:
            f.write("\n".join(data["vocab"]))
        out = os.path.join(d, "out")
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "dpsgd.launch", "lda",
               "--corpus", path, "--topics", str(K), "--passes", str(passes), "--batch-size", str(batch),
               "--holdout", "0", "--out", out, "--threads", "1", "--rule", rule, "--seed", str(seed),
               "--sparse-push", sparse,
               "--no-progress", "--quiet"]
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
        fit_s = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"mpiexec run failed:\n{r.stderr[-2000:]}")
        metrics = json.load(open(os.path.join(out, "metrics.json")))
        beta = DPSVI.load(os.path.join(out, "model.npz")).components_
    train = metrics["train_seconds"]
    ll = evaluate(beta, data, K)
    return {"curve": [(train, passes * data["Xtr"].shape[0], ll)], "train_s": train, "fit_s": fit_s, "beta": beta,
            "staleness_mean": metrics["framework"]["staleness_mean"], "bytes_per_push": metrics["bytes_per_push"]}


def run_gensim(data, K, passes, batch, seed, multicore=False):
    import gensim

    X = data["Xtr"]
    corpus = gensim.matutils.Sparse2Corpus(X, documents_columns=False)
    id2word = dict(enumerate(data["vocab"]))
    cls = gensim.models.LdaMulticore if multicore else gensim.models.LdaModel
    kw = dict(workers=2) if multicore else {}
    t = time.perf_counter()
    m = cls(corpus, num_topics=K, id2word=id2word, chunksize=batch, passes=passes, random_state=seed,
            eval_every=None, **kw)
    train = time.perf_counter() - t
    beta = m.get_topics()
    return {"curve": [(train, passes * X.shape[0], evaluate(beta, data, K))], "train_s": train, "fit_s": train,
            "beta": beta}


def _vw_corpus_file(X, path):
    """The documents in Vowpal Wabbit's text format, one per line: ``| word_id:count ...``."""
    with open(path, "w") as f:
        for d in range(X.shape[0]):
            lo, hi = X.indptr[d], X.indptr[d + 1]
            f.write("| " + " ".join(f"{w}:{int(c)}" for w, c in zip(X.indices[lo:hi], X.data[lo:hi])) + "\n")


def _vw_lambda(path, K, V):
    """K x V topic-word parameters from VW's --readable_model (header lines, then one
    ``index t_1 .. t_K`` line per hashed feature; integer feature names hash to themselves)."""
    lam = np.zeros((K, V))
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) != K + 1 or ":" in line or not fields[0].isdigit():
                continue
            w = int(fields[0])
            if w < V:
                lam[:, w] = np.asarray(fields[1:], float)
    return lam


def run_vw(data, K, passes, batch, seed):
    """Vowpal Wabbit's online LDA (C++, one thread; Hoffman et al.'s algorithm) with the same priors
    (alpha = eta = 1/K) and minibatch; VW's own parser reads the corpus file (its parsing is part of
    the timed training, writing the file is not). One fresh run per number of passes gives the
    per-pass curve. VW counts its step t in documents, not minibatches, so scikit-learn's
    rho = (10 + t)^-0.7 does not carry over: of four settings tried on the bundled corpus (K = 50,
    2 passes; held-out ll) - power_t 0.7 / initial_t 10 (-7.68), 0.5 / 1 (-7.32), 0.5 / 1 with
    minibatch 256 (-7.21), 0.5 / 1 with learning rate 1 (-7.09) - the best is used.
    ``--ring_size`` >= the minibatch: vowpalwabbit 9.11.9 segfaults with a minibatch larger than
    its example ring (256 by default)."""
    from vowpalwabbit import Workspace

    X = data["Xtr"]
    n, V = X.shape
    tmp = tempfile.mkdtemp(prefix="lda-vw-")
    try:
        corpus = os.path.join(tmp, "corpus.vw")
        _vw_corpus_file(X, corpus)
        curve, lam, train = [], None, 0.0
        for p in range(1, passes + 1):
            readable = os.path.join(tmp, f"topics{p}.txt")
            args = (f"--lda {K} --lda_alpha {1.0 / K} --lda_rho {1.0 / K} --lda_D {n} --minibatch {batch} "
                    f"--ring_size {max(256, 2 * batch)} --power_t 0.5 --initial_t 1 -l 1 --lda_epsilon 0.001 "
                    f"-b {max(int(V - 1).bit_length(), 1)} --passes {p} -c -k "
                    f"--cache_file {os.path.join(tmp, 'cache')} --holdout_off --random_seed {seed} --quiet -d {corpus}")
            t = time.perf_counter()
            ws = Workspace(args + f" --readable_model {readable}")
            ws.finish()  # writes the readable model
            train = time.perf_counter() - t
            lam = _vw_lambda(readable, K, V)
            curve.append((train, p * n, evaluate(lam, data, K)))
    finally:  # the corpus copy and cache go even when VW fails
        shutil.rmtree(tmp, ignore_errors=True)
    return {"curve": curve, "train_s": train, "fit_s": train, "beta": lam}


def run_tomotopy(data, K, passes, batch, seed, iters=None):
    import tomotopy as tp

    X = data["Xtr"]
    m = tp.LDAModel(k=K, alpha=1.0 / K, eta=1.0 / K, seed=seed)
    for d in range(X.shape[0]):
        lo, hi = X.indptr[d], X.indptr[d + 1]
        words = np.repeat(X.indices[lo:hi], X.data[lo:hi].astype(int))
        m.add_doc([data["vocab"][w] for w in words])
    vocab_index = {w: i for i, w in enumerate(data["vocab"])}
    curve, train, done = [], 0.0, 0
    steps = iters or [25] * 8
    for it in steps:
        t = time.perf_counter()
        m.train(it, workers=2)
        train += time.perf_counter() - t
        done += it
        beta = np.full((K, len(data["vocab"])), 1e-12)
        for k in range(K):
            dist = m.get_topic_word_dist(k)
            for j, w in enumerate(m.used_vocabs):
                beta[k, vocab_index[w]] = dist[j]
        # "documents processed": one Gibbs sweep visits every document once
        curve.append((train, done * X.shape[0], evaluate(beta, data, K)))
    return {"curve": curve, "train_s": train, "fit_s": train, "beta": beta}


# ---------------------------------------------------------------------------- E-step roofline


def _matmul_gflops(rng, dt, n: int = 2000) -> float:
    """GFLOP/s of an n x n matrix product in dtype ``dt`` (median of 5): the practical peak."""
    A = rng.random((n, n)).astype(dt)
    B = rng.random((n, n)).astype(dt)
    A @ B
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        A @ B
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / np.median(ts) / 1e9


def estep_roofline(data, K, batch, seed, n_batches=4):
    """The E-step kernel alone, one thread, against what the machine's float32/float64 matrix
    product reaches on one thread in the same run. lambda comes from one pass of DPSVI over (up to
    20k of) the training documents, so the fixed-point iterations per document are those of training.
    Useful flops per document: iterations x its distinct words x 4K (a K-dot product and a K-axpy
    per word); the kernel works on rows padded to a multiple of 16, which the count leaves out.
    The kernel is timed as training calls it, once a minibatch; each document's iterations (for
    its flops) come from untimed calls of one document each with the same initial gamma (a call
    a document also timed the ~3-5 us of Python dispatch per call: 26.6-29.1 against 30.2-31.9
    GFLOP/s on 2026-12-07). (The sufficient statistics are computed word by word after the
    E-step, not timed here.)"""
    from algorithms.dpsvi import DPSVI
    from algorithms.dpsvi import estep as E

    X = data["Xtr"]
    m = DPSVI(n_components=K, batch_size=batch, max_iter=1, random_state=seed).fit(X[:20000])
    lam = np.asarray(m.components_, np.float64)
    from scipy.special import psi

    eb_all = np.exp(psi(lam) - psi(lam.sum(axis=1, keepdims=True))).T.astype(np.float32)  # V x K
    kp = E.padded_topics(K)
    flops, seconds, docs = 0.0, 0.0, 0
    rng = np.random.default_rng(seed)
    # float32 subnormals flushed to zero, as in training (SVIAlgorithm.compute_update): without it a
    # fitted lambda's tiny exp(E[log beta]) entries slow the kernel many times over
    old_mxcsr = E.flush_denormals_begin()
    for b in range(n_batches):
        lo, hi = b * batch, min((b + 1) * batch, X.shape[0])
        if hi <= lo:
            break
        Xb = X[lo:hi]
        words = np.unique(Xb.indices)
        eb = np.zeros((words.size, kp), np.float32)
        eb[:, :K] = eb_all[words]
        local = np.searchsorted(words, Xb.indices).astype(np.int32)
        ip = Xb.indptr.astype(np.int64)
        cnts = Xb.data.astype(np.float32)
        theta = np.zeros((hi - lo, kp), np.float32)
        gamma0 = rng.gamma(100.0, 0.01, (hi - lo, K))
        counted = 0
        for d in range(hi - lo):  # untimed: each document's iterations, hence its flops
            a, z = ip[d], ip[d + 1]
            it = E.estep_docs(ip[d:d + 2] - a, local[a:z], cnts[a:z], eb, 1.0 / K, 100, 1e-3, gamma0[d:d + 1].copy(),
                              theta[d:d + 1], theta[:0])
            flops += it * (z - a) * 4.0 * K
            counted += it
        times = []
        for _ in range(3):  # the median of 3 calls (a shared machine)
            gamma = gamma0.copy()
            t = time.perf_counter()
            it = E.estep_docs(ip, local, cnts, eb, 1.0 / K, 100, 1e-3, gamma, theta, theta[:0])
            times.append(time.perf_counter() - t)
            assert it == counted, (it, counted)  # the same documents, the same fixed-point iterations
        seconds += float(np.median(times))
        docs += hi - lo
    E.flush_denormals_end(old_mxcsr)
    from threadpoolctl import threadpool_limits

    peaks = {}
    with threadpool_limits(1):  # one thread, as the E-step here (without: as many as the BLAS likes)
        for dt in (np.float32, np.float64):
            peaks[np.dtype(dt).name] = _matmul_gflops(rng, dt)
    g = flops / seconds / 1e9
    return {"estep_gflops": g, "matmul_gflops_float32": peaks["float32"], "matmul_gflops_float64": peaks["float64"],
            "fraction_of_float32_matmul": g / peaks["float32"], "documents": docs,
            "estep_docs_per_second_one_thread": docs / seconds}


# ---------------------------------------------------------------------------- driver


def load_data(args):
    if args.synthetic:
        true_k = args.synthetic_topics or args.topics[0]
        X, beta = synthetic_lda(args.synthetic_docs, args.synthetic_words, true_k, doc_length=args.doc_length,
                                alpha=0.1, eta=0.01, seed=args.seed)
        vocab = [f"w{i}" for i in range(X.shape[1])]
        name = (f"synthetic LDA ({X.shape[0]} docs, {X.shape[1]} words, {true_k} true topics ~ Dirichlet(0.01), "
                f"mixtures ~ Dirichlet(0.1), Poisson({args.doc_length}) tokens)")
    else:
        c = load_corpus(args.corpus)
        X, vocab, beta = c.X, c.vocab, None
        name = os.path.relpath(args.corpus, ROOT)
    rng = np.random.default_rng(args.seed)
    X = X[rng.permutation(X.shape[0])]
    nh = int(round(0.1 * X.shape[0]))
    Xo, Xt = split_documents(X[:nh], 0.5, seed=args.seed)
    return {"Xtr": X[nh:], "Xo": Xo, "Xt": Xt, "X": X, "vocab": vocab, "beta_true": beta, "name": name}


def time_to(curve, target):
    """Training seconds at which the per-pass curve first reaches ``target`` (interpolated)."""
    prev_t, prev_ll = 0.0, -np.inf
    target = target - 1e-4  # ties (DPSVI with 1 thread reproduces scikit-learn to float32 precision)
    for t, _, ll in curve:
        if ll >= target:
            if not np.isfinite(prev_ll):
                return t
            return prev_t + (t - prev_t) * (target - prev_ll) / (ll - prev_ll)
        prev_t, prev_ll = t, ll
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=os.path.join(ROOT, "benchmarks", "data", "pydoc.npz"))
    ap.add_argument("--synthetic", action="store_true", help="a synthetic LDA corpus instead of --corpus")
    ap.add_argument("--synthetic-docs", type=int, default=20000)
    ap.add_argument("--synthetic-words", type=int, default=2000, help="vocabulary of the synthetic corpus")
    ap.add_argument("--synthetic-topics", type=int, default=None, help="true topics (default: the first --topics)")
    ap.add_argument("--doc-length", type=int, default=80, help="mean tokens per synthetic document")
    ap.add_argument("--no-whole-fit", action="store_true",
                    help="skip the second, whole-fit() run of scikit-learn and DPSVI (fit docs/s '-')")
    ap.add_argument("--minibatch-threads", action="store_true",
                    help="also DPSVI with 2 threads that share each minibatch (thread_mode minibatch)")
    ap.add_argument("--roofline", action="store_true",
                    help="also the E-step's arithmetic rate against a float32 matrix product (1 thread)")
    ap.add_argument("--topics", type=int, nargs="+", default=[50])
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mpi", action="store_true", help="also `mpiexec -n 3 dpsgd lda` (1 server + 2 workers)")
    ap.add_argument("--peers", nargs="*", default=["gensim", "gensim-multicore", "vowpalwabbit", "tomotopy"],
                    help="optional peers, run when installed")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = ap.parse_args(argv)
    data = load_data(args)
    Xtr = data["Xtr"]
    header = (f"corpus: {data['name']}: {Xtr.shape[0]} training documents, {data['Xo'].shape[0]} held out, "
              f"{Xtr.shape[1]} words, {int(Xtr.sum())} training tokens; batch {args.batch_size}, "
              f"{args.passes} pass(es), {args.reps} repetitions; cores: {available_cores()}, "
              f"effectively free at the start: {parallel_capacity():.2f} (2 nogil spin threads vs 1), "
              f"load average {os.getloadavg()[0]:.1f}")
    if data["beta_true"] is not None:
        K0 = data["beta_true"].shape[0]
        header += (f"; the true topics score held-out ll {evaluate(data['beta_true'], data, K0):.4f}, "
                   f"NPMI {npmi(data['beta_true'], data['X'], 10):.3f}")
    print(header)
    wf = not args.no_whole_fit
    systems = [("scikit-learn online", lambda K, s: run_sklearn(data, K, args.passes, args.batch_size, s, wf)),
               ("DPSVI 1 thread", lambda K, s: run_dpsvi(data, K, args.passes, args.batch_size, s, 1, whole_fit=wf)),
               ("DPSVI 2 threads", lambda K, s: run_dpsvi(data, K, args.passes, args.batch_size, s, 2, whole_fit=wf)),
               ("DPSVI 2 threads, lazy layout",
                lambda K, s: run_dpsvi(data, K, args.passes, args.batch_size, s, 2, sparse=True, whole_fit=wf))]
    if args.minibatch_threads:
        systems.append(("DPSVI 2 threads sharing minibatches",
                        lambda K, s: run_dpsvi(data, K, args.passes, args.batch_size, s, 2, mode="minibatch",
                                               whole_fit=wf)))
    if args.mpi:
        systems.append(("DPSVI mpiexec -n 3", lambda K, s: run_dpsvi_mpi(data, K, args.passes, args.batch_size, s)))
        systems.append(("DPSVI mpiexec -n 3, dense pushes",
                        lambda K, s: run_dpsvi_mpi(data, K, args.passes, args.batch_size, s, sparse="off")))
    for peer in args.peers:
        mod = "gensim" if peer.startswith("gensim") else peer
        try:
            __import__(mod)
        except ImportError:
            print(f"({peer} not installed: skipped; pip install -e '.[bench]')")
            continue
        if peer == "gensim":
            systems.append(("gensim LdaModel", lambda K, s: run_gensim(data, K, args.passes, args.batch_size, s)))
        elif peer == "gensim-multicore":
            systems.append(("gensim LdaMulticore", lambda K, s: run_gensim(data, K, args.passes, args.batch_size, s,
                                                                          multicore=True)))
        elif peer == "vowpalwabbit":
            systems.append(("Vowpal Wabbit LDA", lambda K, s: run_vw(data, K, args.passes, args.batch_size, s)))
        elif peer == "tomotopy":
            systems.append(("tomotopy (Gibbs)", lambda K, s: run_tomotopy(data, K, args.passes, args.batch_size, s)))
    # load the Numba kernels once (from the on-disk cache, or compile them) before any timing: a
    # fresh process pays this ~0.5-1 s once, in its first fit
    from algorithms.dpsvi import DPSVI

    DPSVI(n_components=3, max_iter=1, n_threads=2, random_state=0).fit(Xtr[:64]).transform(Xtr[:8])
    evaluate(np.ones((3, Xtr.shape[1])), data, 3)
    results = {}
    for K in args.topics:
        for rep in range(args.reps):
            for name, fn in systems:
                r = fn(K, args.seed + rep)
                r["npmi"] = npmi(r["beta"], data["X"], 10)
                if data["beta_true"] is not None and r["beta"].shape[0] == data["beta_true"].shape[0]:
                    r["recovery_l1"] = topic_recovery(data["beta_true"], r["beta"])
                r.pop("beta")
                results.setdefault((K, name), []).append(r)
                fit = f"{r['fit_s']:.2f} s" if r.get("fit_s") else "-"
                print(f"  K={K} rep {rep} {name}: train {r['train_s']:.2f} s, fit {fit}, "
                      f"ll {r['curve'][-1][2]:.4f}", flush=True)
    table = report(results, args, Xtr.shape[0])
    if args.roofline:
        roof = [estep_roofline(data, K, args.batch_size, args.seed) for K in args.topics]
        for K, r in zip(args.topics, roof):
            table += (f"\n\nE-step arithmetic rate, K = {K}, 1 thread: {r['estep_gflops']:.1f} GFLOP/s useful "
                      f"(4K flops per word and iteration) = {100 * r['fraction_of_float32_matmul']:.0f} % of a "
                      f"float32 matrix product on one thread in this run ({r['matmul_gflops_float32']:.1f} GFLOP/s; "
                      f"float64 {r['matmul_gflops_float64']:.1f}); {r['estep_docs_per_second_one_thread']:,.0f} "
                      f"documents/s in the E-step alone")
            results[(K, "E-step roofline")] = [r]
        print(table[table.index("E-step arithmetic"):])
    footer = (f"effectively free cores at the end: {parallel_capacity():.2f}, "
              f"load average {os.getloadavg()[0]:.1f}")
    print(footer)
    table = header + "\n" + table + "\n\n" + footer
    os.makedirs(args.out, exist_ok=True)
    tag = "synthetic" if args.synthetic else os.path.splitext(os.path.basename(args.corpus))[0]
    if args.synthetic and (args.synthetic_docs, args.synthetic_words) != (20000, 2000):
        tag += f"_{args.synthetic_docs // 1000}k_v{args.synthetic_words // 1000}k_k{args.topics[0]}"
    if not args.synthetic and args.topics != [50]:  # e.g. lda_pydoc_k20_k100.md beside lda_pydoc.md
        tag += "".join(f"_k{k}" for k in args.topics)
    with open(os.path.join(args.out, f"lda_{tag}.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, f"lda_{tag}.json"), "w") as f:
        json.dump({f"K={K} {name}": v for (K, name), v in results.items()}, f, indent=1, default=float)
    plot(results, os.path.join(args.out, f"lda_{tag}.png"), data["name"])
    return 0


def report(results, args, n_train) -> str:
    lines = []
    for K in args.topics:
        sk = results[(K, "scikit-learn online")]
        sk_train = np.median([n_train * args.passes / r["train_s"] for r in sk])
        lines += [f"\nK = {K}, {args.passes} pass(es), batch {args.batch_size}, median of {args.reps}:",
                  "",
                  "| system | train docs/s | x sklearn | fit docs/s | docs per CPU-s | heldout ll | NPMI | t(sk ll) s |"
                  " kB/push |" + (" recovery L1 |" if args.synthetic else ""),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if args.synthetic else "")]
        for (k, name), rs in results.items():
            if k != K:
                continue
            tr = np.median([r["curve"][-1][1] / r["train_s"] for r in rs])
            fits = [n_train * args.passes / r["fit_s"] for r in rs if r.get("fit_s")]
            fit = f"{np.median(fits):,.0f}" if fits else "-"
            ll = np.median([r["curve"][-1][2] for r in rs])
            nm = np.median([r["npmi"] for r in rs])
            cpu = [r["curve"][-1][1] / r["cpu_s"] for r in rs if r.get("cpu_s")]
            cpu = f"{np.median(cpu):,.0f}" if cpu else "-"
            # against the scikit-learn run of the same repetition (same seed)
            tt = [time_to(r["curve"], s["curve"][-1][2]) for r, s in zip(rs, sk)]
            tt = np.median([t for t in tt if t is not None]) if all(t is not None for t in tt) else None
            kb = [r["bytes_per_push"] / 1000 for r in rs if r.get("bytes_per_push")]
            kb = f"{np.median(kb):,.0f}" if kb else "-"
            if name.startswith("tomotopy"):  # Gibbs sweeps are not passes of online inference
                row = (f"| {name} | ({tr:,.0f} doc-sweeps/s) | - | - | - | {ll:.4f} | {nm:.3f} | "
                       + (f"{tt:.2f}" if tt is not None else "-") + " | - |")
            else:
                row = (f"| {name} | {tr:,.0f} | {tr / sk_train:.2f} | {fit} | {cpu} | {ll:.4f} | {nm:.3f} | "
                       + (f"{tt:.2f}" if tt is not None else "-") + f" | {kb} |")
            if args.synthetic:
                rec = [r.get("recovery_l1") for r in rs if r.get("recovery_l1") is not None]
                row += f" {np.median(rec):.3f} |" if rec else " - |"
            lines.append(row)
    text = "\n".join(lines)
    print(text)
    return text


def plot(results, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (K, name), rs in results.items():
        r = rs[0]
        if "curve" not in r:  # the E-step roofline
            continue
        t = [0] + [c[0] for c in r["curve"]]
        ll = [np.nan] + [c[2] for c in r["curve"]]
        ax.plot(t[1:], ll[1:], marker="o", label=f"{name} (K={K})")
    ax.set_xlabel("training seconds (evaluations excluded)")
    ax.set_ylabel("held-out log-likelihood per word")
    ax.set_title(f"LDA on {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
