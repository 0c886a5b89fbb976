"""DPSVI's dpsgd plug-in: :class:`SVIAlgorithm` and the layout of its parameters.

The flat parameter vector is lambda (word-major, V*K float32); ``compute_update`` returns
``g = lambda - lambda_hat`` of one minibatch, and the framework's ``lambda -= rho_t * g`` with the
``power`` schedule ``(tau0 + t)^-kappa`` is the SVI step ``lambda <- (1 - rho_t) lambda + rho_t
lambda_hat``. A rank's threads either run their own minibatches and write into the rank's lambda
without locks (thread mode "hogwild", the default) or share each minibatch ("minibatch": the nogil
kernels of :mod:`.estep` split between a :class:`MinibatchTeam`, so the update is sequential
SVI's); under ``mpiexec`` every worker rank works on its own shard of the corpus and the
parameter server merges the pushes with the chosen rule.

This module does not import scikit-learn (``dpsgd lda`` runs without it: ~86 MB less per rank);
the estimator is :class:`.model.DPSVI`.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dpsgd.plugin import Algorithm
from dpsgd.transport import SparseBlocks

from . import estep as E
from .evaluate import heldout_loglik_wk, normalized_word_major


class _ThreadState:
    __slots__ = ("lo", "hi", "pos", "mark", "local", "touched", "ebeta", "sstats", "sums", "g", "X",
                 "counts", "prev_touched", "prev_u", "team", "msum", "theta", "jptr", "jdoc", "jcnt",
                 "blocks", "out", "rows")


class ThreadCounts:
    """What a thread did (documents, E-step iterations, distinct words summed over its minibatches):
    kept by the algorithm after the thread ends, unlike its model-sized buffers."""

    __slots__ = ("docs", "iters", "words")

    def __init__(self):
        self.docs = self.iters = self.words = 0


#: thread modes: "minibatch" (the default) - a rank's threads share each minibatch (sequential
#: SVI, its E-step in parallel); "hogwild" - each thread runs its own minibatches into the rank's
#: lambda, lock-free
THREAD_MODES = ("hogwild", "minibatch")
#: documents a thread of a minibatch team takes at a time (round-robin: deterministic, balanced)
TEAM_CHUNK = 8


def _without_denormals(fn, *args):
    """``fn(*args)`` with this thread's subnormal floats flushed to zero (:func:`.estep.flush_denormals_begin`),
    the thread's previous mode restored afterwards."""
    old = E.flush_denormals_begin()
    try:
        return fn(*args)
    finally:
        E.flush_denormals_end(old)


def _initial_gamma(rng, n_docs: int, K: int) -> np.ndarray:
    """The E-step's starting document-topic values, as scikit-learn draws them: Gamma(100, 1/100)."""
    return rng.gamma(100.0, 0.01, (n_docs, K))


class MinibatchTeam:
    """``n`` threads that work on one minibatch: the caller's thread and n - 1 pool threads run
    ``fn(t)`` for t = 0..n-1 and :meth:`run` returns when all have (the kernels they call release
    the GIL, so the threads really run at once)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.pool = ThreadPoolExecutor(self.n - 1, thread_name_prefix="dpsvi-team") if self.n > 1 else None

    def run(self, fn) -> list:
        futures = [self.pool.submit(_without_denormals, fn, t) for t in range(1, self.n)] if self.pool else []
        out = [fn(0)]  # the caller's thread: already in compute_update's flush-to-zero mode
        return out + [f.result() for f in futures]

    def ranges(self, n_items: int) -> np.ndarray:
        """Bounds of n contiguous, balanced ranges of 0..n_items."""
        return np.linspace(0, n_items, self.n + 1).astype(np.int64)


#: rules under which the lazy-decay layout is exact (they add the pushed increments linearly)
LINEAR_RULES = ("sgd", "asgd", "ssgd")
#: the lazy-decay layout is used only while exp(-s) stays below exp(LAZY_MAX_DECAY) (float32 range)
LAZY_MAX_DECAY = 60.0


def choose_sparse_push(setting, rule: str, rhos, distributed: bool = True) -> bool:
    """Resolve sparse_push True/False/'auto' (see :class:`SVIAlgorithm`); ``rhos``: the run's step sizes.

    'auto' uses the lazy layout only where pushes go over MPI (``distributed``), with a linear
    rule and a decay that fits float32. In one process nothing is sent and the dense layout is
    sequential SVI exactly (benchmarks/lda.py: no consistent speed difference in one process;
    under mpiexec -n 3 the lazy layout sends 1.7x fewer bytes per push at batch 512, 3.5x at
    batch 128, with a held-out log-likelihood 0.02-0.03 nats/word lower than dense pushes).
    """
    if setting == "auto":
        return distributed and rule in LINEAR_RULES and lazy_decay_fits(rhos)
    if setting and rule not in LINEAR_RULES:
        raise ValueError(f"sparse_push needs a linear server rule ({', '.join(LINEAR_RULES)}), got {rule!r}: "
                         "delay compensation is not defined on the lazy-decay layout")
    if setting and not lazy_decay_fits(rhos):
        raise ValueError("sparse_push: the run's total decay exp(-sum log(1 - rho_t)) exceeds the float32 range "
                         "of the lazy-decay layout; use fewer updates, a faster-decaying step size or sparse_push off")
    return bool(setting)


def lazy_decay_fits(rhos) -> bool:
    """True when sum_t -log(1 - rho_t) over the run's step sizes stays below LAZY_MAX_DECAY."""
    rho = np.minimum(np.asarray(rhos, np.float64), 1 - 1e-6)
    return float(-np.log1p(-rho).sum()) < LAZY_MAX_DECAY


class SVIAlgorithm(Algorithm):
    """Online LDA as a dpsgd algorithm.

    X: CSR counts of the documents this process trains on (float32, or uint16 as
    :func:`.corpus.compact_counts` stores them: each minibatch's converted when it is used). With ``local_shard`` False
    (the default) every process holds the whole training corpus and each global thread takes
    its contiguous share (``ctx.shard``); with ``local_shard`` True, X is already this worker
    rank's shard and its threads split it. ``total_docs`` is D in lambda_hat = eta + D/|B| sstats.
    ``loader``: optional callable ``(worker, n_workers) -> CSR`` that loads a worker's shard the
    first time a thread of that worker needs it (so a server rank never loads training data).
    ``heldout``: optional (X_obs, X_test) for :meth:`evaluate` (held-out log-likelihood).
    ``sparse_push``: the lazy-decay layout (see :mod:`.estep`): parameters (V+2) x K,
    ``lambda = eta + exp(s) M``; an update changes only the minibatch's words, so pushes are
    sparse (``push_block = K``) and no step touches all V words; one thread returns its update as
    the sparse push itself (``dpsgd.SparseBlocks``: the words in increasing order, then the two
    bookkeeping rows), a team a V x K one. Exact for the linear rules
    (sgd, asgd, ssgd); use :meth:`lambda_of` to read lambda from the parameters.
    ``local_steps``: the run's local updates per push (see :meth:`stale_updates`).
    ``team_threads``: threads that share each minibatch of a framework thread: the E-step's
    documents and the per-word work are split between them and their sufficient statistics summed,
    so the update is the one thread's update (thread mode "minibatch"; the framework then runs one
    thread per rank). The run's layout and schedule come from :func:`.plan.make_plan` (estimator and CLI alike).
    """

    def __init__(self, X, n_words: int, n_topics: int, *, alpha: float, eta: float, total_docs: float,
                 batch_size: int = 128, max_doc_update_iter: int = 100, mean_change_tol: float = 1e-3,
                 init: np.ndarray | None = None, local_shard: bool = False, loader=None, heldout=None,
                 eval_threads: int = 1, gamma_rng=None, sparse_push: bool = False, local_steps: int = 1,
                 team_threads: int = 1):
        self.X = X
        #: threads that share each minibatch of a framework thread (:class:`MinibatchTeam`)
        self.team_threads = max(1, int(team_threads))
        self.local_steps = int(local_steps)
        self.sparse_push = bool(sparse_push)
        if self.sparse_push:
            self.push_block = int(n_topics)
        self.V = int(n_words)
        self.K = int(n_topics)
        self.alpha = float(alpha)
        self.eta = float(eta)
        self.total_docs = float(total_docs)
        self.batch_size = int(batch_size)
        self.samples_per_update = self.batch_size
        self.max_doc_update_iter = int(max_doc_update_iter)
        self.mean_change_tol = float(mean_change_tol)
        self.init = init
        self.local_shard = local_shard or loader is not None
        self.loader = loader
        self.heldout = heldout
        self.eval_threads = eval_threads
        #: a numpy RandomState for the E-step's initial gamma instead of each thread's stream
        #: (one thread only): DPSVI then draws exactly what scikit-learn draws
        self.gamma_rng = gamma_rng
        self._load_lock = threading.Lock()
        #: one per thread state made (for statistics); the states themselves, with their model-sized
        #: buffers, are freed when their threads end
        self.thread_counts: list[ThreadCounts] = []

    # -- plug-in interface --------------------------------------------------------------
    def init_params(self, rng):
        if self.init is not None:
            w = np.ascontiguousarray(self.init, np.float32).ravel().copy()
            if w.size != self.V * self.K:
                raise ValueError(f"initial lambda has {w.size} values, expected {self.V} x {self.K}")
        else:
            # scikit-learn's initialisation: Gamma(100, 1/100) for every topic-word entry
            w = rng.gamma(100.0, 0.01, self.V * self.K).astype(np.float32)
        if not self.sparse_push:
            return w
        VK = self.V * self.K
        p = np.zeros(VK + 2 * self.K, np.float32)  # M, then Msum, then s (= 0: exp(s) = 1)
        p[:VK] = w - np.float32(self.eta)
        p[VK:VK + self.K] = p[:VK].reshape(self.V, self.K).sum(axis=0, dtype=np.float64)
        return p

    #: updates of the run done before this one (``--resume``: the checkpoint's count): every
    #: thread continues its pass over its documents where it would be after its share of them,
    #: instead of starting again at its first minibatch
    start_updates: int = 0
    #: correct the lazy layout's increments for the expected staleness (see estep.lazy_minibatch_blocks)
    staleness_correction: bool = True

    def stale_updates(self, ctx) -> float:
        """Updates of the other workers expected between a pull and the push that follows it:
        with pushes arriving in turn, each of the other n_workers - 1 workers pushes once."""
        return (ctx.n_workers - 1) * self.local_steps if self.staleness_correction else 0.0

    def lambda_of(self, params) -> np.ndarray:
        """The word-major V*K lambda held by a parameter vector of this algorithm."""
        if not self.sparse_push:
            return params
        out = np.empty(self.V * self.K, np.float32)
        E.lazy_to_lambda(np.asarray(params, np.float32), self.K, self.V, np.float32(self.eta), out)
        return out

    def _data(self, ctx):
        if self.loader is not None:
            with self._load_lock:
                if self.X is None:
                    self.X = self.loader(ctx.worker, ctx.n_workers)
        return self.X

    def make_thread_state(self, ctx):
        X = self._data(ctx)
        n = X.shape[0]
        if self.local_shard:
            b = np.linspace(0, n, ctx.n_threads + 1).astype(np.int64)
            lo, hi = int(b[ctx.thread]), int(b[ctx.thread + 1])
        else:
            rows = ctx.shard(n)
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if rows.size else (0, 0)
        st = _ThreadState()
        # the corpus arrays themselves, not a copy per thread (dtype already right: CSR float32 / int32;
        # counts kept as uint16 by corpus.compact_counts stay so, converted a minibatch at a time)
        st.X = (X.indptr.astype(np.int64, copy=False), X.indices.astype(np.int32, copy=False),
                X.data if X.data.dtype == np.uint16 else X.data.astype(np.float32, copy=False))
        st.lo, st.hi, st.pos = lo, hi, lo
        if self.start_updates > 0 and hi > lo:
            # compute_update's cursor after this thread's share of the earlier updates
            per_pass = -(-(hi - lo) // self.batch_size)
            st.pos = lo + (int(self.start_updates) // ctx.n_global_threads) % per_pass * self.batch_size
        # the largest minibatch of this shard bounds the buffers: its non-zeros the word labels,
        # its distinct words the K-wide rows (at K 1000 a row of both buffers is 8 kB)
        ip = st.X[0]
        starts = np.arange(lo, hi, self.batch_size)
        ends = np.minimum(starts + self.batch_size, hi)
        max_nnz = int((ip[ends] - ip[starts]).max()) if starts.size else 1
        st.local = np.empty(max(max_nnz, 1), np.int32)
        st.touched = np.empty(max(max_nnz, 1), np.int32)
        stamp = np.empty(self.V, np.int64)
        u = E.max_distinct_words(ip, st.X[1], starts, ends, stamp) if starts.size else 0
        u = u or 1
        del stamp
        st.mark = np.full(self.V, -1, np.int32)
        kp = E.padded_topics(self.K)
        st.ebeta = np.empty((u, kp), np.float32)
        # one thread accumulates the sufficient statistics in the E-step; a team computes them word by word
        st.sstats = np.empty((u if self.team_threads == 1 else 0, kp), np.float32)
        st.sums = np.empty(self.K, np.float64)
        #: one thread in the lazy layout writes its update as the sparse push itself (u words and the
        #: two bookkeeping rows: ids, then values); otherwise a model-sized g
        st.blocks = self.sparse_push and self.team_threads == 1
        if st.blocks:
            st.out = np.empty((u + 2) * (self.K + 1), np.float32)
            st.rows = np.empty(u, np.int32)
        else:
            st.g = np.zeros(self.V * self.K + (2 * self.K if self.sparse_push else 0), np.float32)
        st.prev_touched = np.empty(max(max_nnz, 1), np.int32)
        st.prev_u = 0
        st.team = None
        if self.team_threads > 1:
            st.team = MinibatchTeam(self.team_threads)
            st.msum = np.zeros((self.team_threads, self.K))
            st.theta = np.empty((self.batch_size, kp), np.float32)  # the documents' exp(E[log theta])
            st.jptr = np.empty(u + 1, np.int64)  # the minibatch by word
            st.jdoc = np.empty(max(max_nnz, 1), np.int32)
            st.jcnt = np.empty(max(max_nnz, 1), np.float32)
        st.counts = ThreadCounts()
        self.thread_counts.append(st.counts)
        return st

    def compute_update(self, params, st, ctx):
        # float32 subnormals (products of tiny topic and word weights) cost ~100x on x86: the
        # update runs with them flushed to zero (V 50k, K 100: 6.5 instead of 0.6 minibatches/s
        # once lambda has mostly decayed to near eta); the thread's mode is restored afterwards
        return _without_denormals(self._compute_update, params, st, ctx)

    def _compute_update(self, params, st, ctx):
        if st.hi <= st.lo:  # no documents for this thread (more threads than documents)
            if st.blocks:
                return SparseBlocks(st.out, 0, self.K)
            st.g[:] = 0
            return st.g
        lo = st.pos
        hi = min(lo + self.batch_size, st.hi)
        st.pos = hi if hi < st.hi else st.lo
        rng = self.gamma_rng if self.gamma_rng is not None else ctx.rng
        indptr, indices, data = st.X
        if data.dtype != np.float32:  # compact counts: this minibatch's as the kernels take them
            a, b = int(indptr[lo]), int(indptr[hi])
            indptr, indices, data = indptr[lo:hi + 1] - a, indices[a:b], data[a:b].astype(np.float32)
            lo, hi = 0, hi - lo
        rho = min(float(ctx.lr), 1.0 - 1e-6)
        if st.team is not None:
            u, iters = self._team_update(params, st, ctx, (indptr, indices, data), lo, hi, rng, rho)
        elif st.blocks:
            u, iters = E.lazy_minibatch_blocks(
                params, self.K, self.V, indptr, indices, data, lo, hi, self.alpha, np.float32(self.eta),
                self.total_docs / (hi - lo), rho, float(self.stale_updates(ctx)), self.max_doc_update_iter,
                self.mean_change_tol, _initial_gamma(rng, hi - lo, self.K),
                st.mark, st.local, st.touched, st.rows, st.ebeta, st.sstats, st.sums, st.out)
        else:
            u, iters = E.minibatch_gradient(
                params, self.K, indptr, indices, data, lo, hi, self.alpha, np.float32(self.eta),
                np.float32(self.total_docs / (hi - lo)), self.max_doc_update_iter, self.mean_change_tol,
                _initial_gamma(rng, hi - lo, self.K), st.mark, st.local, st.touched, st.ebeta, st.sstats, st.sums, st.g)
        if self.sparse_push and not st.blocks:
            st.prev_u = u  # the rows of g the team's next lazy step clears
        c = st.counts
        c.docs += hi - lo
        c.iters += iters
        c.words += u
        return SparseBlocks(st.out, u + 2, self.K) if st.blocks else st.g

    def _team_update(self, params, st, ctx, X, lo, hi, rng, rho):
        """The update of documents lo:hi of ``X`` (indptr, indices, float32 counts) by the thread's
        :class:`MinibatchTeam`: the steps of
        :func:`.estep.minibatch_gradient` (or the lazy one), each split between the threads with a
        barrier between steps - (1) the word labels, the minibatch by word and, beside them, the
        initial gamma (drawn from ``rng`` as one thread draws it) and the topic sums by word
        ranges; (2) exp(E[log beta]) by word rows (with, in the dense layout, ``g = lam - eta`` on
        the other words, by word ranges); (3) the E-step by documents (round-robin chunks of
        TEAM_CHUNK: the same split every run); (4) the sufficient statistics and the direction by
        words (round-robin chunks of :data:`.estep.WORD_CHUNK`). No shared write, no per-thread
        V x K buffer. Returns (u, E-step iterations)."""
        K, V, team = self.K, self.V, st.team
        indptr, indices, data = X
        a, b = int(indptr[lo]), int(indptr[hi])
        n = hi - lo
        eta32 = np.float32(self.eta)
        ip = indptr[lo:hi + 1] - a
        cols, cnts = st.local[: b - a], data[a:b]
        words = team.ranges(V)
        labels = [0]
        drawn = []

        def start(t):
            if t == 0:
                labels[0] = E.relabel(indices, a, b, st.mark, st.local, st.touched)
                E.minibatch_columns(ip, cols, cnts, labels[0], st.jptr, st.jdoc, st.jcnt)
                if not self.sparse_push:
                    E.mark_words(st.mark, st.touched, labels[0], True)
            if t == team.n - 1:
                drawn.append(_initial_gamma(rng, n, K))
            if not self.sparse_push:
                E.topic_sums(params[words[t] * K:words[t + 1] * K], K, st.msum[t])

        if self.sparse_push:
            es = E.lazy_begin(params, K, V, eta32, st.g, st.prev_touched, st.prev_u, st.sums)
            off, mul = float(self.eta), es
            team.run(start)
        else:
            team.run(start)
            st.sums[:] = st.msum.sum(axis=0)
            off, mul = 0.0, 1.0
        u, gamma = labels[0], drawn[0]
        psum = E.psi_of(st.sums, K)
        eb = st.ebeta[:u]
        rows = team.ranges(u)

        def prepare(t):
            E.exp_elog_beta_rows(params, K, st.touched, rows[t], rows[t + 1], off, mul, psum, eb)
            if not self.sparse_push:
                E.svi_base(params, K, eta32, st.g, words[t], words[t + 1], st.mark)

        team.run(prepare)
        theta = st.theta[:n]
        alpha, it_max, tol = self.alpha, self.max_doc_update_iter, self.mean_change_tol
        iters = sum(team.run(lambda t: E.estep_doc_chunks(ip, cols, cnts, eb, alpha, it_max, tol, gamma, theta,
                                                          st.sstats, t, team.n, TEAM_CHUNK)))
        jp, jd, jc = st.jptr, st.jdoc, st.jcnt
        scale = self.total_docs / n
        if self.sparse_push:
            f = E.lazy_factor(scale, rho, float(self.stale_updates(ctx)), es)
            st.msum[:] = 0.0
            team.run(lambda t: E.lazy_direction(K, V, st.touched, u, st.sstats, jp, jd, jc, theta, eb, f, st.g,
                                                st.prev_touched, st.msum[t], t, team.n))
            E.lazy_end(K, V, rho, st.msum.sum(axis=0), st.g)
        else:
            s32 = np.float32(scale)
            team.run(lambda t: E.svi_direction(params, K, eta32, st.touched, u, st.sstats, jp, jd, jc, theta, eb, s32,
                                               st.g, t, team.n))
            E.mark_words(st.mark, st.touched, u, False)
        return u, iters

    def evaluate(self, params, threads: int | None = None):
        if self.heldout is None:
            return {}
        Xo, Xt = self.heldout
        ll = heldout_loglik_wk(word_major_topics(self.lambda_of(params), self.V, self.K), Xo, Xt,
                               alpha=self.alpha, max_iter=self.max_doc_update_iter, tol=self.mean_change_tol,
                               threads=self.eval_threads if threads is None else threads)
        return {"heldout_loglik": ll, "perplexity": math.exp(-ll)}

    def evaluate_final(self, params):
        """After training the cores are free (under MPI too): every one of them."""
        from dpsgd.config import available_cores

        return self.evaluate(params, max(self.eval_threads, available_cores()))


def topic_word_from_lambda(params, V, K) -> np.ndarray:
    """K x V components (lambda) from the word-major flat vector (entries floored at 1e-6)."""
    return _clamped(np.asarray(params, np.float32).reshape(V, K).T)  # the one copy (word-major memory)


def _clamped(lam) -> np.ndarray:
    """A float32 copy of lambda's entries with NaN and values below 1e-6 at 1e-6, at most 1e30."""
    out = np.nan_to_num(lam, nan=E.LAMBDA_FLOOR, posinf=1e30)
    return np.clip(out, E.LAMBDA_FLOOR, 1e30, out=out)


def word_major_topics(params, V, K) -> np.ndarray:
    """The topics of the word-major flat lambda as the evaluator wants them (V x K, each column
    normalised; :func:`evaluate.normalized_word_major`) from :func:`topic_word_from_lambda`'s
    entries - without that K x V copy (at K 1000, V 50k: 200 MB at the evaluation's peak)."""
    return normalized_word_major(np.asarray(params, np.float32).reshape(V, K), clamp=_clamped)


def lambda_from_topic_word(components) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(components, np.float32).T).ravel()
