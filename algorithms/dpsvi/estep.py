"""Numba kernels of stochastic variational inference for LDA (Hoffman, Blei & Bach 2010).

Layout: the variational topic-word parameters lambda are stored *word-major*, as a flat
float32 vector of length V*K where word w's K topic values are ``lam[w*K:(w+1)*K]``: one
word's topics sit on one run of cache lines, and the minibatch only ever touches the rows of
the words it contains.

A minibatch step (:func:`minibatch_gradient`) does, in one nogil call:

1. relabel the minibatch's word ids to 0..u-1 (u distinct words) with a per-thread marker
   array (O(nnz), no sort);
2. exp(E[log beta]) for those u words only: ``exp(psi(lam[w,k]) - psi(sum_w lam[w,k]))``;
3. the per-document E-step (the exp-digamma fixed point of scikit-learn's
   ``_update_doc_distribution``), accumulating the sufficient statistics of the u words;
4. the SVI direction ``g = lam - lam_hat`` with ``lam_hat = eta + D/|B| * sstats``, so that
   the framework's ``lam -= rho_t * g`` is exactly ``lam <- (1-rho) lam + rho lam_hat``.

In the lazy-decay layout of sparse pushes (below) one thread's step,
:func:`lazy_minibatch_blocks`, labels the words in increasing order (:func:`relabel_sorted`) and
writes the u rows and two bookkeeping rows straight into the push's payload, not into a V x K g.

Threads that share a minibatch (``model.MinibatchTeam``) run the same steps split by word rows or
documents, without any shared write: the E-step keeps each document's final exp(E[log theta_d])
instead, and the statistics are computed word by word from the minibatch's column view
(:func:`minibatch_columns`, :func:`column_sstats`), so no thread needs a V x K buffer of its own.

Every kernel is type-generic: float64 arrays give a float64 E-step (the tests compare it with
a numpy/scipy reference), float32 arrays the fast one used in training.
"""

from __future__ import annotations

import math
import platform

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic

#: LLVM fast-math flags of the kernels: reassociation (vectorised reductions) and contraction
#: (FMA) but not 'nnan'/'ninf', so the guards against non-finite lambda values keep working
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
#: added to the normaliser of phi, as scikit-learn does (np.finfo(float).eps)
EPS = float(np.finfo(np.float64).eps)
#: words a thread of a minibatch team takes at a time in the direction passes (round-robin: balanced
#: whether the cost is in the per-word rows or in the per-document column statistics)
WORD_CHUNK = 64
#: exp(E[log beta]) and exp(E[log theta]) below float32's smallest normal number are stored as 0:
#: a word or topic with lambda (gamma) near a prior of 0.01 has exp(psi(0.01) - ...) ~ e^-100,
#: a float32 subnormal, and arithmetic on subnormals costs ~100 cycles an operation on x86 (the
#: V 50k corpus at K 100 slowed from 6.5 to 0.6 minibatches/s once most of lambda had decayed to
#: near eta); such values are < 1e-33 of the others in every dot product they enter
TINY = 1.1754943508222875e-38
#: lambda values are floored at this before psi(): Hogwild and delay-compensated server rules
#: can push a few entries below 0, where the digamma function is undefined
LAMBDA_FLOOR = 1e-6


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def psi(x):
    """Digamma function for x > 0, branch-free: psi(x) = psi(x+6) - sum_{i<6} 1/(x+i), the sum
    as one fraction and psi(x+6) by its asymptotic series (|error| < 1e-11 on (1e-6, 1e6))."""
    x1 = x + 1.0
    x2 = x + 2.0
    x3 = x + 3.0
    x4 = x + 4.0
    x5 = x + 5.0
    a = x * x1
    b = x2 * x3
    c = x4 * x5
    num = (x + x1) * b * c + (x2 + x3) * a * c + (x4 + x5) * a * b
    y = x + 6.0
    iy = 1.0 / y
    f = iy * iy
    t = f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132)))))
    return math.log(y) - 0.5 * iy + t - num / (a * b * c)


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
#: MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6) flags
_FTZ_DAZ = 0x8040


def _mxcsr_call(builder, name, slot):
    i8p = llvm_ir.IntType(8).as_pointer()
    mod = builder.module
    fn = mod.globals.get(name) or llvm_ir.Function(mod, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p]), name)
    builder.call(fn, [builder.bitcast(slot, i8p)])


@intrinsic
def _mxcsr_get(typingctx):
    """This thread's SSE control/status register (MXCSR); 0 on machines other than x86."""
    sig = types.int32()

    def codegen(context, builder, signature, args):
        if not _X86:
            return llvm_ir.Constant(llvm_ir.IntType(32), 0)
        slot = builder.alloca(llvm_ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return sig, codegen


@intrinsic
def _mxcsr_set(typingctx, value):
    """Load ``value`` into this thread's MXCSR (nothing on machines other than x86)."""
    sig = types.void(types.int32)

    def codegen(context, builder, signature, args):
        if _X86:
            slot = builder.alloca(llvm_ir.IntType(32))
            builder.store(args[0], slot)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def flush_denormals_begin():
    """Turn on flush-to-zero and denormals-are-zero for this thread; returns the old MXCSR for
    :func:`flush_denormals_end`. Products of tiny float32 factors (an inactive topic's weight in
    exp(E[log theta]) times a rare word's exp(E[log beta])) are subnormal, and x86 computes on
    subnormals ~100x slower; as 0 they change no sum that matters (< 1e-38 against ~1e-4)."""
    old = _mxcsr_get()
    if _X86:
        _mxcsr_set(old | np.int32(_FTZ_DAZ))
    return old


@njit(nogil=True, cache=True)
def flush_denormals_end(old):
    """Restore the MXCSR saved by :func:`flush_denormals_begin`."""
    if _X86:
        _mxcsr_set(old)


@intrinsic
def _i64_as_f64(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits`` (an LLVM bitcast: vectorisable)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.DoubleType())

    return sig, codegen


@intrinsic
def _f64_as_i64(typingctx, x):
    """The int64 with the bit pattern of the float64 ``x`` (an LLVM bitcast: vectorisable)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], llvm_ir.IntType(64))

    return sig, codegen


#: rows ahead of the one being copied whose cache lines the E-step's gather asks for (a document's
#: rows of exp(E[log beta]) are scattered over the minibatch's u x Kp block, 13 MB at V 50k, K 100:
#: outside the caches, each row a new miss)
PREFETCH_ROWS = 8


def _prefetch_name() -> str:
    from llvmlite import binding

    # LLVM's intrinsic is overloaded on the pointer type: opaque pointers (LLVM >= 15) or i8*
    return "llvm.prefetch.p0" if binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, arr, index):
    """Ask for the cache line of ``arr.flat[index]`` (C-contiguous ``arr``) to be read into the
    caches (LLVM's prefetch: a hint, no effect on any value; nothing on machines without one)."""
    sig = types.void(arr, types.intp)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        name = _prefetch_name()
        fn = builder.module.globals.get(name) or llvm_ir.Function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]), name)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), i8p)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return sig, codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two (Cody & Waite): n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.9082149292705877e-10


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def exp64(x):
    """exp(x) for float64 in plain arithmetic, so that LLVM vectorises the loops that call it
    (``math.exp`` is a scalar libm call unless Numba has Intel's SVML, which it does not here):
    x = n ln 2 + r with |r| <= ln(2)/2, exp(r) by its Taylor series to r^11 (relative error
    < 1e-14), 2^n built in the exponent bits. Arguments below -708 give exp(-708) (~3e-308)
    instead of a subnormal or 0; above 709 give exp(709)."""
    x = min(max(x, -708.0), 709.0)
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    # Estrin's scheme (a short dependency chain) for sum_{i<=11} r^i / i!
    r2 = r * r
    r4 = r2 * r2
    s0 = (1.0 + r) + (0.5 + r * (1.0 / 6.0)) * r2
    s1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + (1.0 / 720.0 + r * (1.0 / 5040.0)) * r2
    s2 = (1.0 / 40320.0 + r * (1.0 / 362880.0)) + (1.0 / 3628800.0 + r * (1.0 / 39916800.0)) * r2
    p = s0 + (s1 + s2 * r4) * r4
    # 2^n without a float -> int conversion (AVX2 has none for 64-bit lanes): n + 1023 + 2^52 holds
    # the biased exponent n + 1023 (1..2046) in its low mantissa bits; shifted to the exponent field
    return p * _i64_as_f64(_f64_as_i64(n + (1023.0 + 4503599627370496.0)) << 52)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def exp_psi_minus(x, c):
    """exp(psi(x) - c) for 0 < x < 1e40 with one division and one exp (no log): with y = x + 6,
    exp(psi(x)) = y * exp(-1/(2y) + series(1/y^2) - sum_{i<6} 1/(x+i)). Relative error < 1e-11."""
    x1 = x + 1.0
    x2 = x + 2.0
    x3 = x + 3.0
    x4 = x + 4.0
    x5 = x + 5.0
    a = x * x1
    b = x2 * x3
    cc = x4 * x5
    num = (x + x1) * b * cc + (x2 + x3) * a * cc + (x4 + x5) * a * b
    den = a * b * cc
    y = x + 6.0
    inv = 1.0 / (den * y)
    iy = den * inv  # 1/y
    f = iy * iy
    t = f * (-1.0 / 12 + f * (1.0 / 120 + f * (-1.0 / 252 + f * (1.0 / 240 + f * (-1.0 / 132)))))
    return y * exp64(t - 0.5 * iy - num * y * inv - c)


def padded_topics(K: int) -> int:
    """Row length of the E-step's per-word buffers: K rounded up to a multiple of 16 (one
    AVX-512 register of float32), so the inner loops have no scalar remainder."""
    return -(-K // 16) * 16


@njit(nogil=True, cache=True, inline="always")
def clean_lambda(v):
    """lambda as the E-step sees it: NaN and values below LAMBDA_FLOOR become the floor, values
    above 1e30 (a diverged server rule) are capped."""
    x = float(v)
    if not x > LAMBDA_FLOOR:  # also catches NaN
        return LAMBDA_FLOOR
    return min(x, 1e30)


@njit(nogil=True, cache=True)
def relabel(indices, lo, hi, mark, local, touched):
    """Give the distinct word ids of ``indices[lo:hi]`` local labels 0..u-1 (first-seen order).

    ``mark`` (length V, all -1 on entry and on return) is per thread; ``local[i - lo]`` receives
    the label of ``indices[i]``, ``touched[j]`` the word id of label j. Returns u.
    """
    u = 0
    for i in range(lo, hi):
        w = indices[i]
        m = mark[w]
        if m < 0:
            m = u
            mark[w] = u
            touched[u] = w
            u += 1
        local[i - lo] = m
    for j in range(u):
        mark[touched[j]] = -1
    return u


@njit(nogil=True, cache=True)
def relabel_sorted(indices, lo, hi, mark, local, touched):
    """:func:`relabel` with the labels in increasing word order (``touched[:u]`` increasing): the
    rows of a sparse push in the order the server takes them. One more pass over the tokens and
    one over ``mark`` (length V) than :func:`relabel`."""
    for i in range(lo, hi):
        mark[indices[i]] = 0
    u = 0
    for w in range(mark.shape[0]):
        if mark[w] == 0:
            mark[w] = u
            touched[u] = w
            u += 1
    for i in range(lo, hi):
        local[i - lo] = mark[indices[i]]
    for j in range(u):
        mark[touched[j]] = -1
    return u


@njit(nogil=True, cache=True)
def mark_words(mark, touched, u, on):
    """mark[touched[j]] = j for j < u (``on``), or back to -1: while marked, :func:`svi_base`
    skips the minibatch's words (their rows of g are written by the direction pass)."""
    for j in range(u):
        mark[touched[j]] = j if on else -1


@njit(nogil=True, cache=True)
def max_distinct_words(indptr, indices, starts, ends, stamp):
    """The largest number of distinct words in the minibatches ``starts[i]:ends[i]`` (documents),
    the row count of a thread's exp(E[log beta]) and statistics buffers. ``stamp`` (length V,
    int64) is scratch: overwritten."""
    stamp[:] = -1
    best = 0
    for b in range(starts.shape[0]):
        u = 0
        for i in range(indptr[starts[b]], indptr[ends[b]]):
            w = indices[i]
            if stamp[w] != b:
                stamp[w] = b
                u += 1
        best = max(best, u)
    return best


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def topic_sums(lam, K, out):
    """out[k] = sum_w lam[w*K + k] (float64; entries as :func:`clean_lambda` makes them). Threads
    that share a minibatch each sum a slice of word rows."""
    for k in range(K):
        out[k] = 0.0
    V = lam.shape[0] // K
    for w in range(V):
        b = w * K
        for k in range(K):
            out[k] += clean_lambda(lam[b + k])


@njit(nogil=True, cache=True)
def zero_rows(a, n):
    """a[:n] = 0."""
    for j in range(n):
        for k in range(a.shape[1]):
            a[j, k] = 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def flush_tiny(v):
    """``v``, or 0 when it is below :data:`TINY` (would be a float32 subnormal)."""
    return v if v >= TINY else 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def psi_of(sums, K):
    """psi(sums[k]) for k < K (float64)."""
    out = np.empty(K)
    for k in range(K):
        out[k] = psi(sums[k])
    return out


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def exp_elog_beta_rows(p, K, touched, j0, j1, off, mul, psum, out):
    """out[j, k] = exp(psi(lam[w,k]) - psum[k]) for the words w = touched[j], j0 <= j < j1, with
    lam[w,k] = off + mul * p[w*K + k] (the dense layout: off 0, mul 1; the lazy one: eta, exp(s));
    the padding columns K.. are zeroed; values below :data:`TINY` are stored as 0."""
    Kp = out.shape[1]
    for j in range(j0, j1):
        b = touched[j] * K
        pw = p[b:b + K]  # a row view, as in svi_base
        for k in range(K):
            out[j, k] = flush_tiny(exp_psi_minus(clean_lambda(off + mul * pw[k]), psum[k]))
        for k in range(K, Kp):
            out[j, k] = 0.0


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def doc_phi_pass(rows, c, n, expdoc, acc, zero, eps):
    """One fixed-point pass of a document: ``acc = sum_i c_i / (expdoc . rows_i) * rows_i`` over
    its ``n`` word rows (``rows``, contiguous; ``c`` the counts).

    Four words at a time: independent dot products and divisions overlap, expdoc is read once per
    four rows and acc read and written once per four (-11 % at K = 50, -13 % at K = 100 against two
    at a time); the remainder one by one.
    """
    Kp = rows.shape[1]
    for k in range(Kp):
        acc[k] = 0.0
    i = 0
    while i + 3 < n:
        d1 = zero
        d2 = zero
        d3 = zero
        d4 = zero
        for k in range(Kp):
            e = expdoc[k]
            d1 += e * rows[i, k]
            d2 += e * rows[i + 1, k]
            d3 += e * rows[i + 2, k]
            d4 += e * rows[i + 3, k]
        r1 = c[i] / (d1 + eps)
        r2 = c[i + 1] / (d2 + eps)
        r3 = c[i + 2] / (d3 + eps)
        r4 = c[i + 3] / (d4 + eps)
        for k in range(Kp):
            acc[k] += (r1 * rows[i, k] + r2 * rows[i + 1, k]) + (r3 * rows[i + 2, k] + r4 * rows[i + 3, k])
        i += 4
    while i < n:
        dot = zero
        for k in range(Kp):
            dot += expdoc[k] * rows[i, k]
        r = c[i] / (dot + eps)
        for k in range(Kp):
            acc[k] += r * rows[i, k]
        i += 1


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def add_doc_sstats(rows, c, n, words, expdoc, sstats, zero, eps):
    """``sstats[words[i]] += c_i / (expdoc . rows_i) * expdoc``: a document's sufficient statistics
    (before the caller's product with ebeta), while its rows are in cache."""
    Kp = rows.shape[1]
    for i in range(n):
        j = words[i]
        dot = zero
        for k in range(Kp):
            dot += expdoc[k] * rows[i, k]
        r = c[i] / (dot + eps)
        for k in range(Kp):
            sstats[j, k] += r * expdoc[k]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def estep_docs(indptr, cols, cnts, ebeta, alpha, max_iter, tol, gamma, theta, sstats):
    """Per-document variational E-step over a CSR minibatch.

    ``indptr`` (n_docs+1) indexes ``cols``/``cnts`` from 0; ``cols`` are row indices into
    ``ebeta`` (u x Kp, exp(E[log beta]) of the minibatch's words, word-major; Kp >= K columns,
    the ones beyond K must be finite, e.g. 0). ``gamma``
    (n_docs x K, float64) holds the initial values on entry and the result on return.
    ``theta`` (n_docs x Kp, the dtype of ``ebeta``; or 0 rows when not wanted) receives each
    document's final exp(E[log theta_d]) (padding 0), from which :func:`column_sstats` computes
    the sufficient statistics word by word (threads that share a minibatch). ``sstats`` (u x Kp,
    or 0 rows): ``sstats[j, k] += cnt / norm_phi * exp(E[log theta_dk])`` after each document (the
    caller multiplies by ``ebeta``, as scikit-learn does) - one thread's faster way: the document's
    rows are still in cache (one thread at V 50k, K 100 trained at 5,133 docs/s with it against
    4,746 with the word-by-word pass, benchmarks/lda.py medians of 3). Returns the number of
    fixed-point iterations summed over the documents.

    Each document's rows of ``ebeta`` are first copied into one contiguous block, which its
    fixed-point iterations then stream in order (the rows of a 240-word document at K 100 are
    ~100 kB, more than L1: read in sequence they come from L2 at the prefetcher's pace instead
    of row by row; this kernel alone on 512 documents: -18 % time at K 20, -24 % at K 100, -18 %
    at K 300).

    :func:`estep_doc_chunks` does a share of the documents (threads that share a minibatch).
    """
    return estep_doc_chunks(indptr, cols, cnts, ebeta, alpha, max_iter, tol, gamma, theta, sstats, 0, 1,
                            max(gamma.shape[0], 1))


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def estep_doc_chunks(indptr, cols, cnts, ebeta, alpha, max_iter, tol, gamma, theta, sstats, part, parts, chunk):
    """:func:`estep_docs` on the documents of the chunks part, part + parts, ... of ``chunk``
    documents each: a thread's round-robin share when ``parts`` threads share the minibatch
    (balanced, the same split every run, one call). No default arguments here or in the other
    kernels called from Python: Numba's dispatcher resolves an omitted argument at every call
    (77 against 0.9 us a call)."""
    n_docs, K = gamma.shape
    Kp = ebeta.shape[1]  # >= K: the inner loops run over the padded rows
    dt = ebeta.dtype
    longest = 0
    for d in range(n_docs):
        longest = max(longest, indptr[d + 1] - indptr[d])
    rows = np.empty((longest, Kp), dt)  # the document's rows of ebeta, in its word order
    expdoc = np.zeros(Kp, dt)  # stays 0 on the padding: the dots ignore it
    acc = np.zeros(Kp, dt)
    tmp = np.zeros(2, dt)  # typed constants: float32 arithmetic stays float32 (SIMD width)
    tmp[1] = EPS
    zero = tmp[0]
    eps = tmp[1]
    iters = 0
    for first in range(part * chunk, n_docs, parts * chunk):
        iters += _estep_doc_range(indptr, cols, cnts, ebeta, alpha, max_iter, tol, gamma, theta, sstats,
                                  first, min(first + chunk, n_docs), rows, expdoc, acc, zero, eps)
    return iters


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _estep_doc_range(indptr, cols, cnts, ebeta, alpha, max_iter, tol, gamma, theta, sstats, d0, d1, rows, expdoc,
                     acc, zero, eps):
    """:func:`estep_docs` on the documents d0 <= d < d1 (scratch: ``rows``, ``expdoc``, ``acc``)."""
    K = gamma.shape[1]
    Kp = ebeta.shape[1]
    flat = ebeta.reshape(-1)  # (C-contiguous: a view) for the prefetches
    iters = 0
    for d in range(d0, d1):
        lo = indptr[d]
        n = indptr[d + 1] - lo
        if n == 0:  # no words: the posterior is the prior
            for k in range(K):
                gamma[d, k] = alpha
            if theta.shape[0] > 0:
                for k in range(Kp):
                    theta[d, k] = 0.0
            continue
        for i in range(n):
            if i + PREFETCH_ROWS < n:  # the row PREFETCH_ROWS ahead, while this one is copied
                ahead = cols[lo + i + PREFETCH_ROWS] * Kp
                for k in range(0, Kp, 16):
                    _prefetch(flat, ahead + k)
            j = cols[lo + i]
            for k in range(Kp):
                rows[i, k] = ebeta[j, k]
        c = cnts[lo:lo + n]
        # exp(E[log theta]) of the initial gamma
        s = 0.0
        for k in range(K):
            s += gamma[d, k]
        ps = psi(s)
        for k in range(K):
            expdoc[k] = flush_tiny(exp_psi_minus(gamma[d, k], ps))
        for it in range(max_iter):
            iters += 1
            doc_phi_pass(rows, c, n, expdoc, acc, zero, eps)
            change = 0.0
            s = 0.0
            for k in range(K):
                new = alpha + float(expdoc[k]) * float(acc[k])
                change += abs(new - gamma[d, k])
                gamma[d, k] = new
                s += new
            ps = psi(s)
            for k in range(K):
                expdoc[k] = flush_tiny(exp_psi_minus(gamma[d, k], ps))
            if change / K < tol:
                break
        if theta.shape[0] > 0:
            for k in range(Kp):
                theta[d, k] = expdoc[k]
        if sstats.shape[0] > 0:
            add_doc_sstats(rows, c, n, cols[lo:lo + n], expdoc, sstats, zero, eps)
    return iters


@njit(nogil=True, cache=True)
def minibatch_columns(indptr, local, cnts, u, jptr, jdoc, jcnt):
    """The minibatch by word: the documents ``jdoc[jptr[j]:jptr[j+1]]`` (with their counts
    ``jcnt``) hold local word j (CSR ``indptr``/``local``/``cnts`` of the minibatch, from 0)."""
    n = indptr.shape[0] - 1
    for j in range(u + 1):
        jptr[j] = 0
    for i in range(indptr[n]):
        jptr[local[i] + 1] += 1
    for j in range(u):
        jptr[j + 1] += jptr[j]
    fill = jptr[:u].copy()
    for d in range(n):
        for i in range(indptr[d], indptr[d + 1]):
            j = local[i]
            p = fill[j]
            jdoc[p] = d
            jcnt[p] = cnts[i]
            fill[j] = p + 1


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def column_sstats(j, jptr, jdoc, jcnt, theta, ebeta, acc, consts):
    """acc = the sufficient statistics of word j before the multiplication by ebeta[j] (as
    scikit-learn keeps them): sum over its documents d of cnt / (theta_d . ebeta_j + EPS) * theta_d.
    ``consts``: [0, EPS] in the dtype of ``ebeta`` (allocated once by the caller)."""
    Kp = acc.shape[0]
    zero = consts[0]
    eps = consts[1]
    for k in range(Kp):
        acc[k] = zero
    for p in range(jptr[j], jptr[j + 1]):
        d = jdoc[p]
        dot = zero
        for k in range(Kp):
            dot += theta[d, k] * ebeta[j, k]
        r = jcnt[p] / (dot + eps)
        for k in range(Kp):
            acc[k] += r * theta[d, k]


@njit(nogil=True, cache=True)
def sstats_consts(dtype_like):
    """[0, EPS] in the dtype of ``dtype_like`` (for :func:`column_sstats`)."""
    c = np.zeros(2, dtype_like.dtype)
    c[1] = EPS
    return c


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def svi_base(lam, K, eta, g, w0, w1, mark):
    """g = lam - eta on the words w0 <= w < w1 that are not the minibatch's (lam_hat = eta where
    the minibatch has no word): ``mark[w] >= 0`` marks the minibatch's words (:func:`mark_words`),
    whose rows :func:`svi_direction` writes - at V 50k a 512-document minibatch has 60 % of the
    words, so skipping them saves most of this pass's writes."""
    for w in range(w0, w1):
        if mark[w] >= 0:
            continue
        gw = g[w * K:(w + 1) * K]  # row views: the flat index w * K + k, of unknown sign to the
        lw = lam[w * K:(w + 1) * K]  # compiler, cost a wrap-around check per entry and the SIMD loop (7x)
        for k in range(K):
            gw[k] = lw[k] - eta


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy", inline="always")
def word_sstats(j, sstats, jptr, jdoc, jcnt, theta, ebeta, acc, consts):
    """Word j's sufficient statistics: ``sstats[j]`` when the E-step accumulated them (one
    thread), else :func:`column_sstats` into ``acc``."""
    if sstats.shape[0] > 0:
        return sstats[j]
    column_sstats(j, jptr, jdoc, jcnt, theta, ebeta, acc, consts)
    return acc


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def svi_direction(lam, K, eta, touched, u, sstats, jptr, jdoc, jcnt, theta, ebeta, scale, g, part, parts):
    """g = lam - lam_hat, lam_hat = eta + scale * S * ebeta, on the minibatch's words j < u
    (:func:`svi_base` does the other words); ``part``/``parts``: only the chunks of WORD_CHUNK
    words part, part + parts, ... (threads that share a minibatch).
    S: :func:`word_sstats` (``sstats`` from the E-step, or 0 rows and the minibatch by word).

    ``eta`` and ``scale`` must have the dtype of ``lam`` (np.float32 in training).
    """
    acc = np.empty(ebeta.shape[1], ebeta.dtype)
    consts = sstats_consts(ebeta)
    for first in range(part * WORD_CHUNK, u, parts * WORD_CHUNK):
        for j in range(first, min(first + WORD_CHUNK, u)):
            acc = word_sstats(j, sstats, jptr, jdoc, jcnt, theta, ebeta, acc, consts)
            b = touched[j] * K
            gw = g[b:b + K]  # row views, as in svi_base
            lw = lam[b:b + K]
            for k in range(K):
                gw[k] = lw[k] - eta - scale * acc[k] * ebeta[j, k]


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def minibatch_gradient(lam, K, indptr, indices, data, lo, hi, alpha, eta, scale, max_iter, tol,
                       gamma, mark, local, touched, ebeta, sstats, sums, g):
    """One SVI step on documents ``lo:hi`` of a CSR matrix by one thread: fills ``g`` (see the module doc).

    ``gamma`` (hi-lo x K float64) holds the initial document-topic values. Buffers: ``mark``
    (V int, all -1), ``local``/``touched`` (>= nnz of the minibatch), ``ebeta``/``sstats`` (>= u
    rows x :func:`padded_topics` (K) columns, dtype of lam), ``sums`` (K float64). Returns (u, E-step iterations).
    """
    a = indptr[lo]
    b = indptr[hi]
    u = relabel(indices, a, b, mark, local, touched)
    topic_sums(lam, K, sums)
    eb = ebeta[:u]
    ss = sstats[:u]
    exp_elog_beta_rows(lam, K, touched, 0, u, 0.0, 1.0, psi_of(sums, K), eb)
    zero_rows(ss, u)
    ip = indptr[lo:hi + 1] - a
    no_theta = np.empty((0, eb.shape[1]), eb.dtype)
    iters = estep_docs(ip, local[: b - a], data[a:b], eb, alpha, max_iter, tol, gamma, no_theta, ss)
    mark_words(mark, touched, u, True)
    svi_base(lam, K, eta, g, 0, lam.shape[0] // K, mark)
    mark_words(mark, touched, u, False)
    no_cols = np.empty(0, np.int64)
    svi_direction(lam, K, eta, touched, u, ss, no_cols, no_cols.astype(np.int32), data[:0], no_theta, eb, scale, g, 0, 1)
    return u, iters


def estep_reference(X, exp_topic_word, alpha, max_iter, tol, gamma0):
    """Plain numpy/scipy E-step (scikit-learn's algorithm) for tests.

    ``X`` CSR (n x V), ``exp_topic_word`` K x V, ``gamma0`` initial n x K. Returns
    (gamma, sstats K x V before the multiplication by exp_topic_word).
    """
    from scipy.special import psi as sp_psi

    n, K = gamma0.shape
    gamma = np.array(gamma0, np.float64, copy=True)
    sstats = np.zeros_like(exp_topic_word, dtype=np.float64)
    for d in range(n):
        ids = X.indices[X.indptr[d]:X.indptr[d + 1]]
        cnts = X.data[X.indptr[d]:X.indptr[d + 1]].astype(np.float64)
        if ids.size == 0:
            gamma[d] = alpha
            continue
        gd = gamma[d]
        exp_d = np.exp(sp_psi(gd) - sp_psi(gd.sum()))
        etw = exp_topic_word[:, ids]
        for _ in range(max_iter):
            last = gd
            norm_phi = exp_d @ etw + EPS
            gd = alpha + exp_d * ((cnts / norm_phi) @ etw.T)
            exp_d = np.exp(sp_psi(gd) - sp_psi(gd.sum()))
            if np.mean(np.abs(last - gd)) < tol:
                break
        gamma[d] = gd
        norm_phi = exp_d @ etw + EPS
        sstats[:, ids] += np.outer(exp_d, cnts / norm_phi)
    return gamma, sstats


# ---------------------------------------------------------------------------- lazy decay (sparse pushes)
#
# With lambda = eta + exp(s) * M (M word-major V x K, then one row Msum_k = sum_w M[w,k], then one
# row whose first slot is s), the SVI step lambda <- (1-rho) lambda + rho (eta + c S) becomes
#     s <- s + log(1 - rho),   M[w] <- M[w] + rho c S[w] / ((1 - rho) exp(s))   (touched words only),
# i.e. additive and sparse: the framework's ``p -= rho * g`` with g = 0 on every untouched word, so
# a push carries the minibatch's words (plus the two bookkeeping rows), not all V.


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_begin(p, K, V, eta, g, prev_touched, prev_u, sums):
    """The lazy layout's step set-up: clear the rows ``prev_touched[:prev_u]`` of the previous
    step and the two bookkeeping rows of ``g``; ``sums[k]`` = sum_w lam[w,k]. Returns exp(s)."""
    for j in range(prev_u):
        b = prev_touched[j] * K
        for k in range(K):
            g[b + k] = 0.0
    for i in range(V * K, (V + 2) * K):
        g[i] = 0.0
    return lazy_sums(p, K, V, eta, sums)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_sums(p, K, V, eta, sums):
    """``sums[k]`` = sum_w lam[w,k] of a lazy-decay vector. Returns exp(s)."""
    es = math.exp(float(p[(V + 1) * K]))
    for k in range(K):
        sums[k] = max(V * float(eta) + es * float(p[V * K + k]), LAMBDA_FLOOR)
    return es


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_direction(K, V, touched, u, sstats, jptr, jdoc, jcnt, theta, ebeta, f, g, prev_touched, msum, part, parts):
    """The lazy layout's increments of the minibatch's words j < u (``part``/``parts``: as
    :func:`svi_direction`): g[w] = -f * S[j] * ebeta[j] (S: :func:`word_sstats`); their topic
    sums are added to ``msum`` (K, float64) and the rows noted in ``prev_touched``
    (:func:`lazy_begin` clears them next step)."""
    acc = np.empty(ebeta.shape[1], ebeta.dtype)
    consts = sstats_consts(ebeta)
    for first in range(part * WORD_CHUNK, u, parts * WORD_CHUNK):
        for j in range(first, min(first + WORD_CHUNK, u)):
            acc = word_sstats(j, sstats, jptr, jdoc, jcnt, theta, ebeta, acc, consts)
            w = touched[j]
            gw = g[w * K:(w + 1) * K]  # a row view, as in svi_base
            for k in range(K):
                d = -f * acc[k] * ebeta[j, k]
                gw[k] = d
                msum[k] += d
            prev_touched[j] = w


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_end(K, V, rho, msum, g):
    """The bookkeeping rows of a lazy step: the Msum increments and the decay slot of s."""
    for k in range(K):
        g[V * K + k] = msum[k]
    g[(V + 1) * K] = -math.log(1.0 - rho) / rho


@njit(nogil=True, cache=True, inline="always")
def lazy_factor(scale, rho, lag, es):
    """The increment factor of the lazy layout: scale / ((1 - rho)^(1 + lag) exp(s)) (see
    :func:`lazy_minibatch_blocks`)."""
    return scale / ((1.0 - rho) ** (1.0 + lag) * es)


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_minibatch_blocks(p, K, V, indptr, indices, data, lo, hi, alpha, eta, scale, rho, lag, max_iter, tol,
                          gamma, mark, local, touched, rows, ebeta, sstats, sums, out):
    """One thread's SVI step of documents lo:hi in the lazy-decay layout (:func:`minibatch_gradient`'s
    steps), written as the sparse push itself: ``out`` receives the nb = u + 2 block ids (the
    minibatch's u words in increasing order, then V and V + 1 - the bookkeeping rows -, as int32
    in float32 slots) followed by their nb x K values (the layout of ``dpsgd.SparseBlocks``).
    No V x K buffer is written, cleared or scanned. ``rows``: int32 scratch of length >= u.
    Returns (u, iters).

    ``lag``: updates of other workers expected to reach the server between this step's pull and
    its push. Each of them decays exp(s) by (1 - rho) before this increment lands, so the
    increment is divided by (1 - rho)^lag to arrive with the weight sequential SVI gives it.
    """
    es = lazy_sums(p, K, V, eta, sums)
    a = indptr[lo]
    b_ = indptr[hi]
    u = relabel_sorted(indices, a, b_, mark, local, touched)
    nb = u + 2
    ids = out[:nb].view(np.int32)
    for j in range(u):
        ids[j] = touched[j]
        rows[j] = j
    ids[u] = V
    ids[u + 1] = V + 1
    vals = out[nb:nb + nb * K]
    for i in range(u * K, nb * K):
        vals[i] = 0.0
    eb = ebeta[:u]
    ss = sstats[:u]
    exp_elog_beta_rows(p, K, touched, 0, u, float(eta), es, psi_of(sums, K), eb)
    zero_rows(ss, u)
    ip = indptr[lo:hi + 1] - a
    no_theta = np.empty((0, eb.shape[1]), eb.dtype)
    iters = estep_docs(ip, local[: b_ - a], data[a:b_], eb, alpha, max_iter, tol, gamma, no_theta, ss)
    msum = np.zeros(K)
    no_cols = np.empty(0, np.int64)
    # the values' row j is label j: lazy_direction writes "word" rows[j] = j of vals
    lazy_direction(K, V, rows, u, ss, no_cols, no_cols.astype(np.int32), data[:0], no_theta, eb,
                   lazy_factor(scale, rho, lag, es), vals, rows, msum, 0, 1)
    lazy_end(K, u, rho, msum, vals)  # rows u and u + 1 of vals: the blocks V and V + 1
    return u, iters


@njit(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def lazy_to_lambda(p, K, V, eta, out):
    """The V*K word-major lambda of a lazy-decay vector."""
    es = math.exp(float(p[(V + 1) * K]))
    for i in range(V * K):
        out[i] = eta + es * p[i]
