"""DPSVI: LDA by stochastic variational inference on top of the dpsgd framework.

* :class:`DPSVI` is a scikit-learn estimator with the parameter names of
  ``sklearn.decomposition.LatentDirichletAllocation``.
* The dpsgd plug-in it trains, :class:`.svi.SVIAlgorithm`, lives in :mod:`.svi` (re-exported
  here), which the command line uses without importing scikit-learn.
"""

from __future__ import annotations

import math
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

from . import estep as E
from . import modelfile
from .estep import FASTMATH
from .evaluate import heldout_loglik, infer_theta  # noqa: F401 (re-exported for users)
from .svi import (  # noqa: F401 (SVIAlgorithm re-exported for users)
    THREAD_MODES, SVIAlgorithm, choose_sparse_push, lambda_from_topic_word, topic_word_from_lambda)


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
    end with an extra E-step over all documents, so there is no ``bound_``. With the default
    ``thread_mode='minibatch'`` (the threads share each minibatch), any ``n_threads``, the fit in
    one process is scikit-learn's (the same random draws; equal up to float32 rounding) and
    reproducible for a fixed ``random_state``; ``thread_mode='hogwild'`` (each thread its own
    minibatches, lock-free; faster on short documents) interleaves non-deterministically and its
    stale updates change the held-out log-likelihood at few passes (for better or worse, by corpus).

    Extra parameters: ``n_threads`` (threads per process; None: ``n_jobs``, else all cores),
    ``rule`` (the server's update rule under MPI: sgd, asgd, ssgd, dc-asgd-c, dc-asgd-a, dc-asgd-i),
    ``local_steps`` (local minibatches per push), ``max_seconds`` (time limit of ``fit``),
    ``sparse_push`` (True/False/'auto': the lazy-decay layout whose updates and pushes touch only
    the minibatch's words; 'auto' uses it under mpiexec with the linear rules sgd/asgd/ssgd when
    the run's decay fits float32, see :func:`choose_sparse_push`), ``thread_mode`` ('minibatch',
    the default: the threads split each minibatch's E-step and per-word work, sequential SVI;
    'hogwild': each thread its own minibatches against a lambda the others update meanwhile -
    faster on short documents, with a held-out log-likelihood that depends on the corpus; figures
    in the README, "Topic models").
    """

    def __init__(self, n_components=10, *, doc_topic_prior=None, topic_word_prior=None,
                 learning_method="online", learning_decay=0.7, learning_offset=10.0, max_iter=10,
                 batch_size=128, evaluate_every=-1, total_samples=1e6, perp_tol=1e-1,
                 mean_change_tol=1e-3, max_doc_update_iter=100, n_jobs=None, verbose=0,
                 random_state=None, n_threads=None, rule="asgd", local_steps=1, max_seconds=None,
                 sparse_push="auto", thread_mode="minibatch"):
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
        """Write ``path`` (.npz, no pickles, see :mod:`.modelfile`): components_, the vocabulary
        and the hyperparameters as JSON; written to a temporary file and renamed."""
        check_is_fitted(self)
        meta = modelfile.make_meta(self.get_params(), doc_topic_prior_=self.doc_topic_prior_,
                                   topic_word_prior_=self.topic_word_prior_, n_batch_iter_=self.n_batch_iter_,
                                   n_iter_=self.n_iter_, n_features_in_=self.n_features_in_, extra=extra,
                                   cls=type(self).__name__)
        modelfile.write(path, self.components_, meta, vocabulary)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save` (or ``model.npz`` of ``dpsgd lda``).

        The vocabulary, when saved, is in ``model.vocabulary_``."""
        comp, meta, vocab = modelfile.read(path)
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
