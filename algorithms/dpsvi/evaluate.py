"""One evaluator for every topic model: held-out document completion and NPMI coherence.

Everything here works from a normalised topic-word matrix ``beta`` (K x V, rows sum to 1), so
DPSVI, scikit-learn, gensim and tomotopy are scored by exactly the same code.

Document completion (Wallach et al. 2009, "estimated theta" variant): every held-out document's
tokens are split at random into an observed half and a test half. theta_d is inferred from the
observed half with beta fixed (the variational fixed point of the E-step with beta in place of
exp(E[log beta]), a fixed prior ``alpha``, gamma starting at 1), then the test half is scored:

    per-word log-likelihood = sum_{d,w} n_test[d,w] * log(sum_k theta_dk beta_kw) / sum n_test

perplexity = exp(-per-word log-likelihood).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from numba import njit

from .estep import FASTMATH

from .estep import estep_docs


def split_documents(X, frac: float = 0.5, seed: int = 0, min_tokens: int = 2, dropped: bool = False,
                    chunk: int = 1 << 20):
    """Split each document's tokens: (observed, test) CSR matrices of the same shape.

    Each of a word's ``c`` tokens goes to the observed half with probability ``frac``. Documents
    with fewer than ``min_tokens`` tokens, or with an empty half, are dropped from both (with
    ``dropped``: returned third, as rows of X, so that the halves and they are X's documents).
    The draws go ``chunk`` non-zeros at a time (the same draws as all at once) and the halves are
    cut straight from X's arrays: the temporaries are ~2 float32 copies of X's counts, where the
    int64 draws and the copies of the whole halves were ~5x X's size (10k held-out documents:
    a peak of ~100 MB at the end of reading).
    """
    X = sp.csr_matrix(X)
    rng = np.random.default_rng(seed)
    exact32 = X.dtype == np.float32 or X.dtype.itemsize <= 2  # e.g. compact uint16 counts
    obs = np.empty(X.nnz, np.float32 if exact32 else np.float64)
    for a in range(0, X.nnz, chunk):
        c = X.data[a:a + chunk]
        counts = c.astype(np.int64)
        if not np.array_equal(counts, c):
            raise ValueError("document completion needs integer counts")
        obs[a:a + chunk] = rng.binomial(counts, frac)
    test = X.data - obs  # exact: integers
    lengths = np.diff(X.indptr)

    def row_sums(v):  # (np.add.reduceat: a row without entries would get its next entry)
        if v.size == 0:
            return np.zeros(X.shape[0])
        out = np.add.reduceat(v, np.minimum(X.indptr[:-1], v.size - 1), dtype=np.float64)
        out[lengths == 0] = 0.0
        return out

    no, nt = row_sums(obs), row_sums(test)
    keep = (no > 0) & (nt > 0) & (no + nt >= min_tokens)
    kept_entry = np.repeat(keep, lengths)

    def half(v):
        on = kept_entry & (v > 0)
        upto = np.zeros(on.size + 1, np.int64 if on.size >= 2 ** 31 else np.int32)
        np.cumsum(on, out=upto[1:])
        per_row = (upto[X.indptr[1:]] - upto[X.indptr[:-1]])[keep]
        indptr = np.zeros(per_row.size + 1, X.indptr.dtype)
        np.cumsum(per_row, out=indptr[1:])
        return sp.csr_matrix((v[on].astype(np.float32), X.indices[on], indptr), shape=(per_row.size, X.shape[1]))

    Xo = half(obs)
    del obs
    Xt = half(test)
    if dropped:
        return Xo, Xt, X[~keep]
    return Xo, Xt


class HeldoutDocuments:
    """Held-out documents as the evaluator keeps them: their two halves (rows of ``Xo`` and ``Xt``
    are the same documents, as :func:`split_documents` gives them) and the documents the split
    dropped, rows of ``rest``. NPMI counts them as the documents they are (a word is in a
    document when it is in either half) without a whole copy of them beside the halves (10k
    documents of the V 50k corpus: 19 MB for the whole run)."""

    def __init__(self, Xo, Xt, rest=None):
        self.Xo, self.Xt, self.rest = Xo, Xt, rest
        self.shape = (Xo.shape[0] + (rest.shape[0] if rest is not None else 0), Xo.shape[1])

    def parts(self, rows: int = 1024):
        """The documents as CSR matrices of up to ``rows`` documents (each half's rows added)."""
        for a in range(0, self.Xo.shape[0], rows):
            yield self.Xo[a:a + rows] + self.Xt[a:a + rows]
        if self.rest is not None and self.rest.shape[0]:
            yield self.rest


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _test_loglik(indptr, indices, data, theta, beta_wk):
    """sum over non-zeros of count * log(theta_d . beta_w)."""
    n, K = theta.shape
    total = 0.0
    for d in range(n):
        for i in range(indptr[d], indptr[d + 1]):
            w = indices[i]
            p = 0.0
            for k in range(K):
                p += theta[d, k] * beta_wk[w, k]
            total += data[i] * np.log(max(p, 1e-300))
    return total


def infer_theta(beta, X, alpha, max_iter=100, tol=1e-3, threads=1):
    """theta (n x K, rows sum to 1) of the documents X given a fixed normalised beta (K x V)."""
    return _infer_theta_wk(np.ascontiguousarray(np.asarray(beta, np.float64).T), X, alpha, max_iter, tol, threads)


def _as_csr(X):
    """X as a CSR matrix whose arrays the kernels read as they are: float32 or float64 counts and
    int32 or int64 indices stay in place (a float64 / int64 copy of 10k held-out documents is
    20 MB at the peak of every evaluation); other dtypes become float64."""
    if not (sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array)):
        X = sp.csr_matrix(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return X


def _infer_theta_wk(beta_wk, X, alpha, max_iter, tol, threads):
    """:func:`infer_theta` from the word-major V x K matrix (C-contiguous)."""
    X = _as_csr(X)
    K = beta_wk.shape[1]
    gamma = np.ones((X.shape[0], K))
    indptr, indices, data = X.indptr, X.indices, X.data
    no_theta = np.zeros((0, K))

    def run(lo, hi):
        a, b = indptr[lo], indptr[hi]
        estep_docs(indptr[lo:hi + 1] - a, indices[a:b], data[a:b], beta_wk, float(alpha), int(max_iter),
                   float(tol), gamma[lo:hi], no_theta, no_theta)

    bounds = np.linspace(0, X.shape[0], max(1, threads) + 1).astype(int)
    if threads <= 1:
        run(0, X.shape[0])
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(run, bounds[:-1], bounds[1:]))
    gamma /= gamma.sum(axis=1, keepdims=True)
    return gamma


def normalize_topics(topic_word) -> np.ndarray:
    """K x V float64 topics with negative entries set to 0 and rows summing to 1 (one new array)."""
    tw = np.array(topic_word, np.float64)
    np.maximum(tw, 0, out=tw)
    tw /= tw.sum(axis=1, keepdims=True)
    return tw


def normalized_word_major(word_topic, clamp=None, rows: int = 4096) -> np.ndarray:
    """:func:`normalize_topics` of the topics held word-major (``word_topic``: V x K, the layout
    of DPSVI's lambda and of the E-step's and the scoring's inner loops): V x K float32,
    C-contiguous, each column divided by its sum taken in float64; ``clamp``: a function applied
    to each block of ``rows`` words first (DPSVI's floor of lambda). The only V x K array made:
    float32 halves it (at K 1000, V 50k: 200 instead of 400 MB) and the evaluation's E-step runs
    in float32 as training's does, 1.5x as fast; the held-out log-likelihood moved by 4e-11 nats
    (100k-document corpus, K 100: -8.996987029868 against -8.996987029827)."""
    V, K = word_topic.shape

    def block(lo):
        b = np.asarray(word_topic[lo:lo + rows])
        return np.maximum(clamp(b) if clamp is not None else b, 0)

    sums = np.zeros(K)
    for lo in range(0, V, rows):
        sums += block(lo).sum(axis=0, dtype=np.float64)
    wk = np.empty((V, K), np.float32)
    for lo in range(0, V, rows):
        wk[lo:lo + rows] = block(lo) / sums
    return wk


def heldout_loglik(beta, X_obs, X_test, alpha=None, max_iter=100, tol=1e-3, threads=1) -> float:
    """Per-word held-out log-likelihood of X_test given theta inferred from X_obs (see module doc).

    ``beta``: K x V topic-word matrix (normalised here). ``alpha`` defaults to 1/K.
    """
    return heldout_loglik_wk(normalized_word_major(np.asarray(beta).T), X_obs, X_test, alpha, max_iter, tol,
                             threads)


def heldout_loglik_wk(beta_wk, X_obs, X_test, alpha=None, max_iter=100, tol=1e-3, threads=1) -> float:
    """:func:`heldout_loglik` from the normalised word-major topics of :func:`normalized_word_major`
    (V x K, C-contiguous, float32 or float64)."""
    K = beta_wk.shape[1]
    alpha = 1.0 / K if alpha is None else alpha
    theta = _infer_theta_wk(beta_wk, X_obs, alpha, max_iter, tol, threads)
    Xt = _as_csr(X_test)
    total = _test_loglik(Xt.indptr, Xt.indices, Xt.data, theta, beta_wk)
    return float(total / Xt.data.sum(dtype=np.float64))


def top_words(beta, n: int = 10) -> np.ndarray:
    """K x n word ids of each topic's most probable words (most probable first; of equal weights the
    lower id first). ``beta`` may hold unnormalised topics (e.g. lambda): a row divided by its
    positive sum keeps its order. One compiled pass over each row, no temporaries (at K 100, V 50k:
    ~0.15 s for the negated, normalised copies and argpartition it replaced; at K 1000 their
    temporaries were 600 MB)."""
    beta = np.ascontiguousarray(beta)
    n = min(n, beta.shape[1])
    out = np.empty((beta.shape[0], n), np.int64)
    _top_n(beta, out)
    return out


@njit(nogil=True, cache=True)
def _top_n(beta, out):
    """``out[k]``: the ids of the ``out.shape[1]`` largest values of row k of ``beta``, largest first,
    ties by the lower id (an insertion into the sorted list, which a value enters only when it beats
    the list's last)."""
    n = out.shape[1]
    vals = np.empty(n, beta.dtype)
    for k in range(beta.shape[0]):
        row = beta[k]
        m = 0
        for w in range(row.size):
            v = row[w]
            if m == n and not v > vals[n - 1]:
                continue
            j = m if m < n else n - 1
            while j > 0 and v > vals[j - 1]:
                if j < n:
                    vals[j] = vals[j - 1]
                    out[k, j] = out[k, j - 1]
                j -= 1
            vals[j] = v
            out[k, j] = w
            if m < n:
                m += 1


@njit(nogil=True, cache=True)
def _topic_cooccurrence(indptr, indices, data, pos_of, slot_ptr, slots, tops_pos, counts):
    """``counts[t, a, b] +=`` (a <= b) the documents (rows of the CSR ``indptr, indices, data``)
    that contain topic t's top words a and b with a count > 0; ``counts[t, a, a]``: the documents
    of word a. ``pos_of``: word -> position among the distinct top words (-1 for the others);
    ``slots[slot_ptr[p]:slot_ptr[p + 1]]``: the places ``t * n + a`` of position p in the topics'
    lists; ``tops_pos``: K x n positions. One pass over the non-zeros; each document costs its
    top words' places times n (a dense matrix of every pair of distinct top words was 800 MB at
    K 1000); a word listed twice in a row counts once."""
    m = slot_ptr.size - 1
    n = tops_pos.shape[1]
    seen = np.full(m, -1, np.int64)  # the last document that contains the word
    done = np.full(m, -1, np.int64)  # the last document whose pairs of the word were counted
    for d in range(indptr.size - 1):
        for i in range(indptr[d], indptr[d + 1]):
            p = pos_of[indices[i]]
            if p >= 0 and data[i] > 0:
                seen[p] = d
        for i in range(indptr[d], indptr[d + 1]):
            p = pos_of[indices[i]]
            if p < 0 or seen[p] != d or done[p] == d:
                continue
            done[p] = d
            for s in range(slot_ptr[p], slot_ptr[p + 1]):
                t = slots[s] // n
                a = slots[s] - t * n
                counts[t, a, a] += 1.0
                for b in range(a + 1, n):
                    if seen[tops_pos[t, b]] == d:
                        counts[t, a, b] += 1.0


def npmi(beta, X_ref, n: int = 10) -> float:
    """Mean NPMI of the top-``n`` word pairs of every topic, with document co-occurrence in X_ref
    (a documents x words matrix, or a list of them whose documents are pooled).

    NPMI(i, j) = log(p_ij / (p_i p_j)) / -log(p_ij); pairs that never co-occur score -1. Only the
    columns of the topics' top words are read (no copy of the whole reference matrix). Documents
    spread over several processes: :func:`cooccurrence` on each part, the counts summed, then
    :func:`npmi_of_counts`.
    """
    return npmi_of_tops(top_words(beta, n), X_ref)


def npmi_of_tops(tops, X_ref) -> float:
    """:func:`npmi` of the K x n top words ``tops`` (as :func:`top_words` gives them)."""
    return npmi_of_counts(*cooccurrence(tops, X_ref))


def cooccurrence(tops, X_ref) -> tuple[np.ndarray, int]:
    """(counts, D): ``counts[t, a, b]`` (a <= b) the documents of X_ref (as :func:`npmi` takes it)
    that contain both ``tops[t, a]`` and ``tops[t, b]`` (the diagonal: each word's documents), of
    the K x n top words ``tops``; D the documents. Counts of disjoint document sets add up."""
    tops = np.asarray(tops, np.int64)
    K, n = tops.shape
    words, tops_pos = np.unique(tops, return_inverse=True)
    tops_pos = tops_pos.reshape(K, n)
    places = np.argsort(tops_pos.ravel(), kind="stable")  # every place t * n + a, by word
    slot_ptr = np.zeros(words.size + 1, np.int64)
    np.cumsum(np.bincount(tops_pos.ravel(), minlength=words.size), out=slot_ptr[1:])
    parts = []
    for X in (X_ref if isinstance(X_ref, (list, tuple)) else [X_ref]):
        parts.extend(X.parts() if isinstance(X, HeldoutDocuments) else [X])
    # one pass over each part's non-zeros (the binary column slice and its product B.T @ B took
    # ~3x as long: 0.67-0.84 against 0.22-0.27 s on the 100k-document V 50k corpus, K 100)
    counts, D = np.zeros((K, n, n)), 0
    for X in parts:
        X = X if sp.isspmatrix_csr(X) or isinstance(X, sp.csr_array) else sp.csr_matrix(X)
        pos_of = np.full(X.shape[1], -1, np.int64)
        pos_of[words] = np.arange(words.size)
        _topic_cooccurrence(X.indptr, X.indices, X.data, pos_of, slot_ptr, places, tops_pos, counts)
        D += X.shape[0]
    return counts, D


def npmi_of_counts(counts, D) -> float:
    """:func:`npmi` from the co-occurrence counts of :func:`cooccurrence`."""
    scores = []
    D = max(D, 1)
    for c in counts:
        p = np.diag(c) / D
        for a in range(c.shape[0]):
            for b in range(a + 1, c.shape[0]):
                pij = c[a, b] / D
                if pij <= 0 or p[a] <= 0 or p[b] <= 0:
                    scores.append(-1.0)
                elif pij >= 1.0:
                    scores.append(1.0)
                else:
                    scores.append(np.log(pij / (p[a] * p[b])) / -np.log(pij))
    return float(np.mean(scores))


def topic_recovery(beta_true, beta_est, per_topic: bool = False):
    """Mean L1 distance (0 best, 2 worst) between true topics and their best-matched estimates
    (Hungarian matching); with ``per_topic`` the distances of every true topic."""
    from scipy.optimize import linear_sum_assignment

    a = normalize_topics(beta_true)
    b = normalize_topics(beta_est)
    cost = np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
    r, c = linear_sum_assignment(cost)
    return cost[r, c] if per_topic else float(cost[r, c].mean())
