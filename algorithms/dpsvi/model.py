"""DPSVI: LDA by stochastic variational inference on top of the dpsgd framework.

* :class:`SVIAlgorithm` is the dpsgd plug-in: the flat parameter vector is lambda (word-major,
  V*K float32); ``compute_update`` returns ``g = lambda - lambda_hat`` of one minibatch, and the
  framework's ``lambda -= rho_t * g`` with the ``power`` schedule ``(tau0 + t)^-kappa`` is the SVI
  step ``lambda <- (1 - rho_t) lambda + rho_t lambda_hat``. A rank's threads either run their own
  minibatches and write into the rank's lambda without locks (thread mode "hogwild", the default)
  or share each minibatch ("minibatch": the nogil kernels of :mod:`.estep` split between a
  :class:`MinibatchTeam`, so the update is sequential SVI's); under ``mpiexec`` every worker rank works on its own shard of the corpus and the
  parameter server merges the pushes with the chosen rule.
* :class:`DPSVI` is a scikit-learn estimator with the parameter names of
  ``sklearn.decomposition.LatentDirichletAllocation``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from numba import njit

from scipy.special import gammaln, psi
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from dpsgd.checks import check_number
from dpsgd.plugin import Algorithm

from . import estep as E
from .estep import FASTMATH
from .evaluate import heldout_loglik, infer_theta  # noqa: F401 (re-exported for users)


# ============================================================================ the plug-in


class _ThreadState:
    __slots__ = ("lo", "hi", "pos", "mark", "local", "touched", "ebeta", "sstats", "sums", "g", "X",
                 "counts", "prev_touched", "prev_u", "team", "msum", "theta", "jptr", "jdoc", "jcnt")


class ThreadCounts:
    """What a thread did (documents, E-step iterations, distinct words summed over its minibatches):
    kept by the algorithm after the thread ends, unlike its model-sized buffers."""

    __slots__ = ("docs", "iters", "words")

    def __init__(self):
        self.docs = self.iters = self.words = 0


#: thread modes: "hogwild" (the default) - each thread runs its own minibatches into the rank's
#: lambda, lock-free; "minibatch" - a rank's threads share each minibatch (sequential SVI, its
#: E-step in parallel)
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

    X: CSR float32 counts of the documents this process trains on. With ``local_shard`` False
    (the default) every process holds the whole training corpus and each global thread takes
    its contiguous share (``ctx.shard``); with ``local_shard`` True, X is already this worker
    rank's shard and its threads split it. ``total_docs`` is D in lambda_hat = eta + D/|B| sstats.
    ``loader``: optional callable ``(worker, n_workers) -> CSR`` that loads a worker's shard the
    first time a thread of that worker needs it (so a server rank never loads training data).
    ``heldout``: optional (X_obs, X_test) for :meth:`evaluate` (held-out log-likelihood).
    ``sparse_push``: the lazy-decay layout (see :mod:`.estep`): parameters (V+2) x K,
    ``lambda = eta + exp(s) M``; an update changes only the minibatch's words, so pushes are
    sparse (``push_block = K``) and no step touches all V words. Exact for the linear rules
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
    #: correct the lazy layout's increments for the expected staleness (see estep.lazy_minibatch_gradient)
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
        # the corpus arrays themselves, not a copy per thread (dtype already right: CSR float32 / int32)
        st.X = (X.indptr.astype(np.int64, copy=False), X.indices.astype(np.int32, copy=False),
                X.data.astype(np.float32, copy=False))
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
            st.g[:] = 0
            return st.g
        lo = st.pos
        hi = min(lo + self.batch_size, st.hi)
        st.pos = hi if hi < st.hi else st.lo
        rng = self.gamma_rng if self.gamma_rng is not None else ctx.rng
        gamma = rng.gamma(100.0, 0.01, (hi - lo, self.K))
        indptr, indices, data = st.X
        rho = min(float(ctx.lr), 1.0 - 1e-6)
        if st.team is not None:
            u, iters = self._team_update(params, st, ctx, lo, hi, gamma, rho)
        elif self.sparse_push:
            u, iters = E.lazy_minibatch_gradient(
                params, self.K, self.V, indptr, indices, data, lo, hi, self.alpha, np.float32(self.eta),
                self.total_docs / (hi - lo), rho, float(self.stale_updates(ctx)), self.max_doc_update_iter,
                self.mean_change_tol,
                gamma, st.mark, st.local, st.touched, st.prev_touched, st.prev_u, st.ebeta, st.sstats, st.sums, st.g)
        else:
            u, iters = E.minibatch_gradient(
                params, self.K, indptr, indices, data, lo, hi, self.alpha, np.float32(self.eta),
                np.float32(self.total_docs / (hi - lo)), self.max_doc_update_iter, self.mean_change_tol,
                gamma, st.mark, st.local, st.touched, st.ebeta, st.sstats, st.sums, st.g)
        if self.sparse_push:
            st.prev_u = u
        c = st.counts
        c.docs += hi - lo
        c.iters += iters
        c.words += u
        return st.g

    def _team_update(self, params, st, ctx, lo, hi, gamma, rho):
        """The update of documents lo:hi by the thread's :class:`MinibatchTeam`: the steps of
        :func:`.estep.minibatch_gradient` (or the lazy one), each split between the threads with a
        barrier between steps - exp(E[log beta]) by word rows (with, in the dense layout,
        ``g = lam - eta`` by word ranges), the E-step by documents (chunks of TEAM_CHUNK,
        round-robin: the same split every run), the sufficient statistics and the direction by
        words (ranges of equal non-zeros). No shared write, no per-thread V x K buffer.
        Returns (u, E-step iterations)."""
        K, V, team = self.K, self.V, st.team
        indptr, indices, data = st.X
        a, b = int(indptr[lo]), int(indptr[hi])
        eta32 = np.float32(self.eta)
        if self.sparse_push:
            es = E.lazy_begin(params, K, V, eta32, st.g, st.prev_touched, st.prev_u, st.sums)
            off, mul = float(self.eta), es
        else:
            E.topic_sums(params, K, st.sums)
            off, mul = 0.0, 1.0
        u = E.relabel(indices, a, b, st.mark, st.local, st.touched)
        psum = E.psi_of(st.sums, K)
        eb = st.ebeta[:u]
        rows = team.ranges(u)
        words = team.ranges(V)
        ip = indptr[lo:hi + 1] - a
        cols, cnts = st.local[: b - a], data[a:b]

        def prepare(t):
            E.exp_elog_beta_rows(params, K, st.touched, rows[t], rows[t + 1], off, mul, psum, eb)
            if not self.sparse_push:
                E.svi_base(params, K, eta32, st.g, words[t], words[t + 1])
            if t == 0:
                E.minibatch_columns(ip, cols, cnts, u, st.jptr, st.jdoc, st.jcnt)

        team.run(prepare)
        n = hi - lo
        theta = st.theta[:n]
        alpha, it_max, tol = self.alpha, self.max_doc_update_iter, self.mean_change_tol

        def estep(t):
            iters = 0
            for c in range(t * TEAM_CHUNK, n, team.n * TEAM_CHUNK):
                d = min(c + TEAM_CHUNK, n)
                iters += E.estep_docs(ip[c:d + 1] - ip[c], cols[ip[c]:ip[d]], cnts[ip[c]:ip[d]], eb, alpha, it_max,
                                      tol, gamma[c:d], theta[c:d], st.sstats)
            return iters

        iters = sum(team.run(estep))
        # word ranges with equal numbers of non-zeros (frequent words have many documents)
        nz = np.searchsorted(st.jptr[:u + 1], np.linspace(0, b - a, team.n + 1)).astype(np.int64)
        nz[0], nz[-1] = 0, u
        jp, jd, jc = st.jptr, st.jdoc, st.jcnt
        scale = self.total_docs / n
        if self.sparse_push:
            f = E.lazy_factor(scale, rho, float(self.stale_updates(ctx)), es)
            st.msum[:] = 0.0
            team.run(lambda t: E.lazy_direction(K, V, st.touched, nz[t], nz[t + 1], st.sstats, jp, jd, jc, theta, eb,
                                                f, st.g, st.prev_touched, st.msum[t]))
            E.lazy_end(K, V, rho, st.msum.sum(axis=0), st.g)
        else:
            s32 = np.float32(scale)
            team.run(lambda t: E.svi_direction(params, K, eta32, st.touched, nz[t], nz[t + 1], st.sstats, jp, jd, jc,
                                               theta, eb, s32, st.g))
        return u, iters

    def evaluate(self, params):
        if self.heldout is None:
            return {}
        Xo, Xt = self.heldout
        beta = topic_word_from_lambda(self.lambda_of(params), self.V, self.K)
        ll = heldout_loglik(beta, Xo, Xt, alpha=self.alpha, max_iter=self.max_doc_update_iter,
                            tol=self.mean_change_tol, threads=self.eval_threads)
        return {"heldout_loglik": ll, "perplexity": math.exp(-ll)}


def topic_word_from_lambda(params, V, K) -> np.ndarray:
    """K x V components (lambda) from the word-major flat vector (entries floored at 1e-6)."""
    lam = np.asarray(params, np.float32).reshape(V, K).T
    out = np.nan_to_num(lam, nan=E.LAMBDA_FLOOR, posinf=1e30)  # the one copy (word-major memory)
    return np.clip(out, E.LAMBDA_FLOOR, 1e30, out=out)


def lambda_from_topic_word(components) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(components, np.float32).T).ravel()


# ============================================================================ the estimator


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _word_loglik(indptr, indices, data, elog_theta, elog_beta_wk):
    """sum over non-zeros of count * logsumexp_k(E[log theta_dk] + E[log beta_kw])."""
    n, K = elog_theta.shape
    total = 0.0
    for d in range(n):
        for i in range(indptr[d], indptr[d + 1]):
            w = indices[i]
            m = -np.inf
            for k in range(K):
                m = max(m, elog_theta[d, k] + elog_beta_wk[w, k])
            s = 0.0
            for k in range(K):
                s += np.exp(elog_theta[d, k] + elog_beta_wk[w, k] - m)
            total += data[i] * (m + np.log(s))
    return total


def _dirichlet_expectation(a):
    return psi(a) - psi(a.sum(axis=1, keepdims=True))


class DPSVI(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Latent Dirichlet Allocation by distributed, lock-free stochastic variational inference.

    A drop-in for :class:`sklearn.decomposition.LatentDirichletAllocation` (same parameter
    names and fitted attributes ``components_``, ``exp_dirichlet_component_``,
    ``doc_topic_prior_``, ``topic_word_prior_``, ``n_batch_iter_``, ``n_iter_``), trained by
    the dpsgd framework: ``n_threads`` threads per process, and under
    ``mpiexec -n N`` N-1 worker ranks around a parameter server applying ``rule``.

    Differences from scikit-learn: ``learning_method`` defaults to ``'online'`` (the point of
    this estimator; ``'batch'`` runs the classic variational EM in one thread); ``fit`` does not
    end with an extra E-step over all documents, so there is no ``bound_``. With ``n_threads=1``, or
    any ``n_threads`` and ``thread_mode='minibatch'`` (the threads share each minibatch), the fit in
    one process is scikit-learn's (the same random draws; equal up to float32 rounding) and
    reproducible for a fixed ``random_state``; the default ``thread_mode='hogwild'`` (each thread
    its own minibatches, lock-free; faster) interleaves non-deterministically.

    Extra parameters: ``n_threads`` (threads per process; None: ``n_jobs``, else all cores),
    ``rule`` (the server's update rule under MPI: sgd, asgd, ssgd, dc-asgd-c, dc-asgd-a, dc-asgd-i),
    ``local_steps`` (local minibatches per push), ``max_seconds`` (time limit of ``fit``),
    ``sparse_push`` (True/False/'auto': the lazy-decay layout whose updates and pushes touch only
    the minibatch's words; 'auto' uses it under mpiexec with the linear rules sgd/asgd/ssgd when
    the run's decay fits float32, see :func:`choose_sparse_push`), ``thread_mode`` ('hogwild', the
    default: each thread its own minibatches against a lambda the others update meanwhile;
    'minibatch': the threads split each minibatch's E-step and per-word work, sequential SVI -
    benchmarks/lda.py on 2026-12-02: 2 Hogwild threads trained 1.63x (bundled corpus) and 1.84x
    (100k documents, V 50k, K 100) one thread with a better held-out log-likelihood, 2 threads
    sharing minibatches 1.30x and 1.39x with one thread's).
    """

    def __init__(self, n_components=10, *, doc_topic_prior=None, topic_word_prior=None,
                 learning_method="online", learning_decay=0.7, learning_offset=10.0, max_iter=10,
                 batch_size=128, evaluate_every=-1, total_samples=1e6, perp_tol=1e-1,
                 mean_change_tol=1e-3, max_doc_update_iter=100, n_jobs=None, verbose=0,
                 random_state=None, n_threads=None, rule="asgd", local_steps=1, max_seconds=None,
                 sparse_push="auto", thread_mode="hogwild"):
        self.n_components = n_components
        self.doc_topic_prior = doc_topic_prior
        self.topic_word_prior = topic_word_prior
        self.learning_method = learning_method
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.evaluate_every = evaluate_every
        self.total_samples = total_samples
        self.perp_tol = perp_tol
        self.mean_change_tol = mean_change_tol
        self.max_doc_update_iter = max_doc_update_iter
        self.n_jobs = n_jobs
        self.verbose = verbose
        self.random_state = random_state
        self.n_threads = n_threads
        self.rule = rule
        self.local_steps = local_steps
        self.max_seconds = max_seconds
        self.sparse_push = sparse_push
        self.thread_mode = thread_mode

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- validation -------------------------------------------------------------------------
    def _check_params(self):
        def num(name, lo=None, lo_open=False, integer=False, none_ok=False):
            check_number(name, getattr(self, name), lo=lo, lo_open=lo_open, integer=integer, none_ok=none_ok,
                         error=ValueError, prefix=f"{type(self).__name__}: ")

        num("n_components", 0, True, True)
        num("doc_topic_prior", 0, True, none_ok=True)
        num("topic_word_prior", 0, True, none_ok=True)
        num("learning_decay", 0)
        if self.learning_method == "online" and not self.learning_decay <= 1:
            raise ValueError(f"learning_decay must be in [0, 1] for online learning (in (0.5, 1] for the "
                             f"convergence guarantee of SVI), got {self.learning_decay!r}")
        num("learning_offset", 0)
        num("max_iter", 0, False, True)
        num("batch_size", 0, True, True)
        num("total_samples", 0, True)
        num("perp_tol", 0)
        num("mean_change_tol", 0)
        num("max_doc_update_iter", 0, True, True)
        num("evaluate_every", None, integer=True)
        num("n_threads", 0, True, True, none_ok=True)
        num("local_steps", 0, True, True)
        num("max_seconds", 0, True, none_ok=True)
        if self.learning_method not in ("online", "batch"):
            raise ValueError(f"learning_method must be 'online' or 'batch', got {self.learning_method!r}")
        from dpsgd.rules import RULES

        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if self.sparse_push not in (True, False, "auto"):
            raise ValueError(f"sparse_push must be True, False or 'auto', got {self.sparse_push!r}")
        if self.thread_mode not in THREAD_MODES:
            raise ValueError(f"thread_mode must be one of {', '.join(map(repr, THREAD_MODES))}, got {self.thread_mode!r}")

    def _validate_X(self, X, reset, whom):
        X = validate_data(self, X, reset=reset, accept_sparse="csr", dtype=[np.float64, np.float32])
        check_non_negative(X, whom)
        X = sp.csr_matrix(X, dtype=np.float32)
        X.sum_duplicates()
        X.sort_indices()
        return X

    def _threads(self, n_batches=None):
        from dpsgd.config import default_threads, ranks_on_this_node
        from dpsgd.runner import mpi_world_size_from_env

        t = self.n_threads if self.n_threads is not None else self.n_jobs
        if t is None:  # the framework's default: cores / ranks on this node
            t = default_threads(ranks_on_this_node(mpi_world_size_from_env()))
        elif t < 0:  # n_jobs=-1: all cores
            t = default_threads(1)
        t = int(t)
        if n_batches is not None and self.thread_mode == "hogwild":  # a reader needs minibatches
            t = max(1, min(t, n_batches))
        return t

    def _init_latent_vars(self, n_features, dtype=np.float64):
        self._check_params()
        self.random_state_ = check_random_state(self.random_state)
        K = self.n_components
        self.doc_topic_prior_ = 1.0 / K if self.doc_topic_prior is None else float(self.doc_topic_prior)
        self.topic_word_prior_ = 1.0 / K if self.topic_word_prior is None else float(self.topic_word_prior)
        self.n_batch_iter_ = 1
        self.n_iter_ = 0
        init_gamma = 100.0
        # the same draws as scikit-learn: components first, then each minibatch's initial gamma
        self.components_ = self.random_state_.gamma(init_gamma, 1.0 / init_gamma, (K, n_features)).astype(dtype)
        self.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(self.components_))
        self._n_features_out = K

    # -- training -----------------------------------------------------------------------------
    def _train(self, X, n_passes, total_docs, threads):
        """``n_passes`` passes of online SVI over X through dpsgd.train, from components_."""
        import dpsgd

        from dpsgd.runner import mpi_world_size_from_env

        n, V = X.shape
        K = self.n_components
        size = mpi_world_size_from_env()
        from .plan import make_plan

        # scikit-learn's rho uses n_batch_iter_ (1 at the first minibatch); dpsgd's t starts at 0
        plan = make_plan(n, self.batch_size, n_passes, n_workers=max(1, size - 1), threads=threads,
                         thread_mode=self.thread_mode, learning_offset=self.learning_offset,
                         learning_decay=self.learning_decay, batches_done=self.n_batch_iter_,
                         sparse_push=self.sparse_push, rule=self.rule, distributed=size > 1)
        threads, team = plan.threads, plan.team
        # one thread in one process: the initial gammas come from random_state_ in scikit-learn's
        # order, so DPSVI(n_threads=1) reproduces LatentDirichletAllocation(learning_method='online')
        sequential = threads == 1 and size == 1
        seed = int(self.random_state_.randint(0, 2**31 - 1)) if not sequential else 0
        total = plan.total_updates
        alg = SVIAlgorithm(X, V, K, alpha=self.doc_topic_prior_, eta=self.topic_word_prior_,
                           total_docs=total_docs, batch_size=self.batch_size,
                           max_doc_update_iter=self.max_doc_update_iter, mean_change_tol=self.mean_change_tol,
                           init=lambda_from_topic_word(self.components_),
                           gamma_rng=self.random_state_ if sequential else None, sparse_push=plan.sparse_push,
                           local_steps=self.local_steps, team_threads=team)
        cfg = dpsgd.TrainConfig(
            rule=dpsgd.RuleConfig(name=self.rule), lr=1.0, schedule="power", tau0=plan.tau0, kappa=plan.kappa,
            local_steps=self.local_steps, threads=threads, total_updates=total,
            max_seconds=self.max_seconds, seed=seed,
            progress=bool(self.verbose) and threads >= 1 and self.verbose > 1)
        with warnings.catch_warnings():
            # the DPSGD convergence bound (threads <= T^1/4) is about SGD on smooth objectives;
            # short LDA runs with a few threads trip it without meaning anything for SVI
            warnings.filterwarnings("ignore", message=".*outside the DPSGD convergence guarantee")
            result = dpsgd.train(alg, cfg)
        lam = alg.lambda_of(result.params)
        self.components_ = topic_word_from_lambda(lam, V, K).astype(self.components_.dtype)
        done = int(result.metrics.get("total_updates", total)) if result.metrics else total
        self.n_batch_iter_ += done
        self.train_metrics_ = result.metrics
        self.train_metrics_["documents"] = sum(c.docs for c in alg.thread_counts)
        return result

    def _batch_em_step(self, X):
        """One iteration of batch variational EM (scikit-learn's learning_method='batch')."""
        n, V = X.shape
        K = self.n_components
        lam = lambda_from_topic_word(self.components_)
        alg = SVIAlgorithm(X, V, K, alpha=self.doc_topic_prior_, eta=self.topic_word_prior_, total_docs=n,
                           batch_size=n, max_doc_update_iter=self.max_doc_update_iter,
                           mean_change_tol=self.mean_change_tol)
        from dpsgd.plugin import ThreadContext

        ctx = ThreadContext(worker=0, n_workers=1, thread=0, n_threads=1, seed=0)
        alg.gamma_rng = self.random_state_
        st = alg.make_thread_state(ctx)
        g = alg.compute_update(lam, st, ctx)
        lam -= g  # rho = 1: lambda = lambda_hat
        self.components_ = topic_word_from_lambda(lam, V, K).astype(self.components_.dtype)
        self.n_batch_iter_ += 1

    def fit(self, X, y=None):
        """Learn the model from the document-word matrix X (counts, dense or sparse)."""
        self._check_params()
        X = self._validate_X(X, reset=True, whom=f"{type(self).__name__}.fit")
        self._init_latent_vars(X.shape[1], np.float64)
        n = X.shape[0]
        n_batches = math.ceil(n / self.batch_size)
        threads = self._threads(n_batches)
        last = None
        chunk = self.evaluate_every if self.evaluate_every and self.evaluate_every > 0 else self.max_iter
        done = 0
        while done < self.max_iter:
            step = min(chunk, self.max_iter - done)
            if self.learning_method == "batch":
                for _ in range(step):
                    self._batch_em_step(X)
                    self.n_iter_ += 1
            else:
                self._train(X, step, n, threads)
                self.n_iter_ += step
            done += step
            if self.evaluate_every and self.evaluate_every > 0:
                self.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(self.components_))
                perp = self.perplexity(X)
                if self.verbose:
                    print(f"iteration: {done} of max_iter: {self.max_iter}, perplexity: {perp:.4f}")
                if last is not None and abs(last - perp) < self.perp_tol:
                    break
                last = perp
            elif self.verbose:
                print(f"iteration: {done} of max_iter: {self.max_iter}")
        self.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(self.components_))
        return self

    def partial_fit(self, X, y=None):
        """Online update with one chunk of documents (D = ``total_samples``)."""
        first = not hasattr(self, "components_")
        X = self._validate_X(X, reset=first, whom=f"{type(self).__name__}.partial_fit")
        if first:
            self._init_latent_vars(X.shape[1], np.float64)
        else:
            self._check_params()
        n_batches = math.ceil(X.shape[0] / self.batch_size)
        self._train(X, 1, self.total_samples, self._threads(n_batches))
        self.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(self.components_))
        return self

    # -- inference ------------------------------------------------------------------------------
    def _unnormalized_transform(self, X):
        """gamma (n x K) of the documents X with the fitted topics (gamma starts at 1)."""
        K = self.n_components
        ebeta = np.ascontiguousarray(np.exp(_dirichlet_expectation(np.asarray(self.components_, np.float64))).T)
        Xd = sp.csr_matrix(X, dtype=np.float64)
        n = Xd.shape[0]
        gamma = np.ones((n, K))
        indptr = Xd.indptr.astype(np.int64)
        indices = Xd.indices.astype(np.int64)
        none = np.zeros((0, K))
        alpha = float(self.doc_topic_prior_)

        def run(lo, hi):
            a, b = indptr[lo], indptr[hi]
            E.estep_docs(indptr[lo:hi + 1] - a, indices[a:b], Xd.data[a:b], ebeta, alpha,
                         int(self.max_doc_update_iter), float(self.mean_change_tol), gamma[lo:hi], none, none)

        threads = max(1, min(self._threads(), n // 64))
        if threads <= 1:
            run(0, n)
        else:
            b = np.linspace(0, n, threads + 1).astype(np.int64)
            with ThreadPoolExecutor(threads) as ex:
                list(ex.map(run, b[:-1], b[1:]))
        return gamma

    def transform(self, X, *, normalize=True):
        """Document-topic distribution of X (rows sum to 1 when ``normalize``)."""
        check_is_fitted(self)
        dtype = getattr(X, "dtype", None)
        X = self._validate_X(X, reset=False, whom=f"{type(self).__name__}.transform")
        gamma = self._unnormalized_transform(X)
        if normalize:
            gamma /= gamma.sum(axis=1, keepdims=True)
        return gamma.astype(np.float32) if dtype == np.float32 else gamma

    def fit_transform(self, X, y=None, **params):
        return self.fit(X, y).transform(X)

    def _approx_bound(self, X, gamma, sub_sampling=False):
        """scikit-learn's variational bound (ELBO) of X with document parameters gamma."""
        K = self.n_components
        alpha, eta = self.doc_topic_prior_, self.topic_word_prior_
        comp = np.asarray(self.components_, np.float64)
        elog_theta = _dirichlet_expectation(gamma)
        elog_beta = _dirichlet_expectation(comp)
        Xd = sp.csr_matrix(X, dtype=np.float64)
        score = _word_loglik(Xd.indptr.astype(np.int64), Xd.indices.astype(np.int64), Xd.data, elog_theta,
                             np.ascontiguousarray(elog_beta.T))

        def ll(prior, distr, dirichlet, size):
            s = np.sum((prior - distr) * dirichlet)
            s += np.sum(gammaln(distr) - gammaln(prior))
            s += np.sum(gammaln(prior * size) - gammaln(np.sum(distr, 1)))
            return s

        score += ll(alpha, gamma, elog_theta, K)
        if sub_sampling:
            score *= float(self.total_samples) / X.shape[0]
        score += ll(eta, comp, elog_beta, comp.shape[1])
        return float(score)

    def score(self, X, y=None):
        """Approximate log-likelihood (the variational bound) of X."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False, whom=f"{type(self).__name__}.score")
        return self._approx_bound(X, self._unnormalized_transform(X))

    def perplexity(self, X, sub_sampling=False):
        """exp(-bound / number of tokens) of X."""
        check_is_fitted(self)
        X = self._validate_X(X, reset=False, whom=f"{type(self).__name__}.perplexity")
        bound = self._approx_bound(X, self._unnormalized_transform(X), sub_sampling)
        words = float(X.sum())
        if sub_sampling:
            words *= float(self.total_samples) / X.shape[0]
        return float(np.exp(-bound / words))

    @classmethod
    def from_components(cls, components, *, n_batch_iter: int = 1, n_iter=0, **params) -> "DPSVI":
        """A fitted estimator around a K x V topic-word matrix (``components_``; e.g. lambda of a
        ``dpsgd lda`` run), with the constructor's ``params``; ``n_batch_iter`` continues the step-size
        schedule of a later ``partial_fit``."""
        est = cls(**params)
        est._check_params()
        return est._set_fitted(components, n_batch_iter=n_batch_iter, n_iter=n_iter)

    def _set_fitted(self, components, n_batch_iter=1, n_iter=0):
        """Make this estimator fitted with the given K x V components (used by the CLI)."""
        self._check_params()
        K, V = components.shape
        self.doc_topic_prior_ = 1.0 / K if self.doc_topic_prior is None else float(self.doc_topic_prior)
        self.topic_word_prior_ = 1.0 / K if self.topic_word_prior is None else float(self.topic_word_prior)
        self.components_ = np.asarray(components, np.float64)
        self.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(self.components_))
        self.n_batch_iter_ = int(n_batch_iter)
        self.n_iter_ = n_iter
        self.n_features_in_ = V
        self._n_features_out = K
        self.random_state_ = check_random_state(self.random_state)
        return self

    # -- persistence ----------------------------------------------------------------------------
    def get_topics(self) -> np.ndarray:
        """K x V topic-word probabilities (normalised components_)."""
        check_is_fitted(self)
        c = np.asarray(self.components_, np.float64)
        return c / c.sum(axis=1, keepdims=True)

    def save(self, path, vocabulary=None, extra: dict | None = None) -> None:
        """Write ``path`` (.npz, no pickles): components_, the vocabulary and the hyperparameters
        as JSON; written to a temporary file and renamed."""
        check_is_fitted(self)
        meta = {"class": type(self).__name__, "params": _jsonable(self.get_params()),
                "doc_topic_prior_": self.doc_topic_prior_, "topic_word_prior_": self.topic_word_prior_,
                "n_batch_iter_": int(self.n_batch_iter_), "n_iter_": self.n_iter_,
                "n_features_in_": int(self.n_features_in_)}
        if extra:
            meta["extra"] = _jsonable(extra)
        arrays = {"components": np.asarray(self.components_, np.float32),
                  "meta_json": np.array(json.dumps(meta))}
        if vocabulary is not None:
            vocabulary = [str(v) for v in vocabulary]
            if len(vocabulary) != self.components_.shape[1]:
                raise ValueError(f"vocabulary has {len(vocabulary)} words, the model {self.components_.shape[1]}")
            arrays["vocab_utf8"] = np.frombuffer("\n".join(vocabulary).encode("utf-8"), np.uint8)
        from dpsgd.checkpoint import atomic_write_bytes

        atomic_write_bytes(os.fspath(path), lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save` (or ``model.npz`` of ``dpsgd lda``).

        The vocabulary, when saved, is in ``model.vocabulary_``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                comp = z["components"]
                meta = json.loads(str(z["meta_json"]))
                vocab = bytes(z["vocab_utf8"]).decode("utf-8").split("\n") if "vocab_utf8" in z.files else None
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(f"{path}: not a DPSVI model file ({e})") from None
        params = {k: v for k, v in meta["params"].items() if k in cls().get_params()}
        model = cls(**params)
        model.components_ = comp.astype(np.float64)
        model.doc_topic_prior_ = float(meta["doc_topic_prior_"])
        model.topic_word_prior_ = float(meta["topic_word_prior_"])
        model.n_batch_iter_ = int(meta["n_batch_iter_"])
        model.n_iter_ = meta["n_iter_"]
        model.n_features_in_ = int(meta["n_features_in_"])
        model.exp_dirichlet_component_ = np.exp(_dirichlet_expectation(model.components_))
        model.random_state_ = check_random_state(model.random_state)
        model._n_features_out = model.n_components
        if vocab is not None:
            model.vocabulary_ = vocab
        model.meta_ = meta
        return model


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif not isinstance(v, (int, float, str, bool, type(None), list, dict)):
            v = repr(v)
        out[k] = v
    return out
