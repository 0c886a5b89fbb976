"""NpzRows: the documents of a scipy CSR .npz read by row, equal to read_npz's rows."""

import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from algorithms.dpsvi import corpus as C
from algorithms.dpsvi.npz_rows import NpzRows
from conftest import dpsgd_cmd, run


def _raw_csr(rng, n, V, dtype, messy):
    """A CSR matrix as save_npz writes it; ``messy``: explicit zeros, duplicates, unsorted indices."""
    X = sp.csr_matrix(rng.poisson(0.4, (n, V)).astype(dtype))
    if not messy or X.nnz == 0:
        return X
    coo = X.tocoo()
    r = np.concatenate([coo.row, coo.row[:5]])
    c = np.concatenate([coo.col, coo.col[:5]])
    v = np.concatenate([coo.data, coo.data[:5]])
    v[::3] = 0
    perm = rng.permutation(r.size)
    order = np.argsort(r[perm], kind="stable")
    ip = np.zeros(n + 1, np.int64)
    np.add.at(ip, r[perm] + 1, 1)
    return sp.csr_matrix((v[perm][order], c[perm][order], np.cumsum(ip)), shape=(n, V))


def _trial_files(tmp_path, rng, trials: int = 30):
    """(matrix saved, its path, read_npz's corpus or None when it rejects the file) of random
    small corpora: every count dtype, compressed or not, every third one messy."""
    for trial in range(trials):
        n, V = int(rng.integers(1, 50)), int(rng.integers(1, 25))
        X = _raw_csr(rng, n, V, rng.choice([np.float32, np.float64, np.int64, np.int32]), trial % 3 == 0)
        p = tmp_path / f"c{trial}.npz"
        sp.save_npz(p, X, compressed=bool(trial % 2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                full = C.read_npz(str(p))
            except C.CorpusError:
                full = None
        yield X, p, full


def _assert_same_counts(A, B, compact=None):
    """A (a reader's rows: counts as uint16 when they fit - ``compact``: when all of the file's fit
    - else float32) holds B's counts (float32)."""
    assert B.dtype == np.float32 and A.shape == B.shape
    if compact is None:
        compact = B.nnz == 0 or B.data.max() <= C.COMPACT_MAX
    assert A.dtype == (np.uint16 if compact else np.float32) or B.nnz == 0
    assert np.array_equal(A.indptr, B.indptr) and np.array_equal(A.indices, B.indices)
    assert np.array_equal(A.data, B.data)


def test_counts_too_large_for_16_bits_stay_float32(tmp_path):
    """A count above COMPACT_MAX anywhere in the rows read (even after others were stored compact)
    gives float32 counts, all exact, in both readers; non-integer counts are still rejected."""
    rng = np.random.default_rng(2)
    X = sp.csr_matrix(rng.poisson(2.0, (40, 30)).astype(np.float32))
    X.data[X.data == 0] = 1
    X.data[-1] = C.COMPACT_MAX + 1  # in the last document: read after the others
    p = tmp_path / "big.npz"
    sp.save_npz(p, X)
    full = C.read_npz(str(p)).X
    ids = np.arange(40)
    _assert_same_counts(NpzRows.open(str(p), block=7).csr(ids), full)
    for got_ids, A in NpzRows.read_groups(str(p), lambda n: [ids[:30], ids[30:]])[1]:
        _assert_same_counts(A, full[got_ids], compact=False)  # one process decides for the whole file
    small = ids[:30]  # without the large count: compact
    assert NpzRows.open(str(p), block=7).csr(small).dtype == np.uint16
    X.data[3] = 2.5
    sp.save_npz(p, X)
    r = NpzRows.open(str(p))
    assert r is None or pytest.raises(C.CorpusError, r.csr, ids)


def test_rows_equal_read_npz(tmp_path):
    rng = np.random.default_rng(0)
    for X, p, full in _trial_files(tmp_path, rng):
        r = NpzRows.open(str(p), block=int(rng.integers(1, 9)))  # blocks cut through the rows
        if full is None:  # e.g. no word at all: read_npz reports it
            assert r is None
            continue
        assert r is not None and r.n_docs == full.n_docs
        ids = rng.permutation(full.n_docs)[: int(rng.integers(0, full.n_docs + 1))]
        A, B = r.csr(ids), full.X[ids]
        _assert_same_counts(A, B)


def test_read_groups_equals_read_npz(tmp_path):
    """One process's reader: every group's rows equal read_npz's, in the groups' order; a file it
    does not take (explicit zeros, bad counts, no words) is left to read_npz (None)."""
    rng = np.random.default_rng(6)
    for X, p, full in _trial_files(tmp_path, rng):
        drawn = []

        def groups(n_docs):
            perm = rng.permutation(n_docs)
            k = int(rng.integers(0, n_docs + 1))
            drawn.extend([n_docs, perm[:k], perm[k:]])
            return drawn[1:]

        got = NpzRows.read_groups(str(p), groups)
        if full is None or (X.data == 0).any():
            assert got is None
            continue
        r, parts = got
        assert r.n_docs == full.n_docs == drawn[0] and len(parts) == 2
        for (got_ids, A), ids in zip(parts, drawn[1:]):
            assert np.array_equal(got_ids, ids)
            _assert_same_counts(A, full.X[ids], compact=full.X.nnz == 0 or full.X.data.max() <= C.COMPACT_MAX)


def test_scan_reads_the_prefetched_documents_in_the_same_pass(tmp_path):
    """open(prefetch=f): the documents f(n_docs) names are read during the scan and csr() returns
    them once (equal to a second pass); a row of explicit zeros makes the guessed count wrong: then
    nothing is kept and csr() reads them in a pass of its own."""
    rng = np.random.default_rng(5)
    X = _raw_csr(rng, 90, 25, np.float32, messy=True)
    X.data[X.data == 0] = 1
    p = tmp_path / "c.npz"
    sp.save_npz(p, X)
    seen = []

    def pick(n):
        seen.append(n)
        return np.random.default_rng(n).permutation(n)[:20]

    assert NpzRows.open(str(p), prefetch=lambda n: np.arange(0)).prefetched is None  # e.g. --holdout 0
    r = NpzRows.open(str(p), block=6, prefetch=pick)
    ids = pick(r.n_docs)
    assert seen[0] == r.n_docs and r.prefetched is not None
    plain = NpzRows.open(str(p), block=6)
    A = r.csr(ids)
    assert r.prefetched is None  # handed over once
    B = plain.csr(ids)
    assert A.shape == B.shape and (A != B).nnz == 0 and np.array_equal(A.indices, B.indices)
    X.data[X.indptr[4]:X.indptr[5]] = 0  # a row of explicit zeros: one document fewer than guessed
    sp.save_npz(p, X)
    seen.clear()
    r = NpzRows.open(str(p), block=6, prefetch=pick)
    assert seen == [r.n_docs + 1] and r.prefetched is None
    ids = pick(r.n_docs)
    assert (r.csr(ids) != NpzRows.open(str(p), block=6).csr(ids)).nnz == 0


@pytest.mark.parametrize("bad", ["negative", "nan", "fraction", "index", "coo"])
def test_bad_files_go_to_read_npz(tmp_path, bad):
    X = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0]], np.float32))
    if bad == "negative":
        X.data[1] = -1
    elif bad == "nan":
        X.data[0] = np.nan
    elif bad == "fraction":
        X.data[2] = 0.5
    elif bad == "index":
        X.indices[0] = 7  # saved without scipy's check
    p = tmp_path / "bad.npz"
    sp.save_npz(p, X.tocoo() if bad == "coo" else X)
    assert NpzRows.open(str(p)) is None
    if bad != "coo":
        with pytest.raises(C.CorpusError):
            C.read_npz(str(p))


def test_lda_on_npz_uses_the_row_reader(tmp_path, monkeypatch):
    """`dpsgd lda` on a CSR .npz: same documents, same result through NpzRows as through read_npz
    (one process, one thread, minibatch mode: deterministic)."""
    X, _ = C.synthetic_lda(200, 40, 3, doc_length=25, seed=1)
    X = sp.csr_matrix(X)
    X.data[X.indptr[5]:X.indptr[6]] = 0  # an empty document (explicit zeros): skipped by both
    p = tmp_path / "c.npz"
    sp.save_npz(p, X)
    (tmp_path / "c.vocab.txt").write_text("\n".join(f"v{i}" for i in range(40)) + "\n")
    outs = {}
    for mode in ("rows", "whole"):
        out = tmp_path / mode
        env = {"DPSVI_NPZ_ROWS": "0"} if mode == "whole" else {}
        r = run(dpsgd_cmd("lda", "--corpus", p, "--topics", 3, "--passes", 2, "--batch-size", 20, "--threads", 1,
                          "--thread-mode", "minibatch", "--out", out, "--quiet", "--no-progress"), env_extra=env)
        assert r.returncode == 0, r.stderr
        assert "skipped 1 document(s)" in r.stderr
        outs[mode] = json.loads((out / "metrics.json").read_text())
        assert (out / "topics.txt").read_text().split()[2].startswith("v")
    a, b = outs["rows"], outs["whole"]
    assert a["n_documents"] == b["n_documents"] == 199
    assert a["heldout_loglik"] == b["heldout_loglik"] and a["npmi"] == b["npmi"]


def test_corpus_plan_shards_without_the_whole_corpus(tmp_path, monkeypatch):
    """The CLI's plan: with a CSR .npz no rank holds the whole corpus; shards and held-out rows
    equal those of the whole-corpus path (DPSVI_NPZ_ROWS=0)."""
    from types import SimpleNamespace

    from algorithms.dpsvi.cli import CorpusPlan

    X, _ = C.synthetic_lda(300, 50, 4, doc_length=20, seed=2)
    p = tmp_path / "c.npz"
    sp.save_npz(p, sp.csr_matrix(X))
    args = SimpleNamespace(corpus=str(p), vocab=None, holdout=0.1, stop_words="english", min_df=1, max_df=1.0,
                           max_features=None)
    rows = CorpusPlan(args, 3, ranks=4)
    assert rows.npz is not None and rows.full is None and rows.vocab[:2] == ["w0", "w1"]
    # one process needs every document: it reads both groups in one pass over each member
    one = CorpusPlan(args, 3)
    assert one.npz is not None and one.full is None and len(one.read_ahead) == 2
    monkeypatch.setenv("DPSVI_NPZ_ROWS", "0")
    whole = CorpusPlan(args, 3, ranks=4)
    assert whole.npz is None and whole.full is not None
    assert np.array_equal(one.train_ids, whole.train_ids)
    a, b = one.shard(0, 1), whole.shard(0, 1)
    assert (a != b).nnz == 0 and a.shape == b.shape and not one.read_ahead[1:]
    (oo, ot), oh = one.heldout(3)
    assert not one.read_ahead
    assert rows.n_docs == whole.n_docs and np.array_equal(rows.train_ids, whole.train_ids)
    for w in range(3):
        a, b = rows.shard(w, 3), whole.shard(w, 3)
        assert (a != b).nnz == 0 and a.shape == b.shape
    (ao, at), ah = rows.heldout(3)
    (bo, bt), bh = whole.heldout(3)

    def docs(h):  # the held-out documents NPMI counts, as one matrix
        return sp.vstack(list(h.parts())).tocsr()

    assert (docs(ah) != docs(bh)).nnz == 0 and (ao != bo).nnz == 0 and (at != bt).nnz == 0
    assert (docs(oh) != docs(bh)).nnz == 0 and (oo != bo).nnz == 0 and (ot != bt).nnz == 0
    assert docs(bh).shape[0] == whole.heldout_ids.size  # every held-out document, once


def test_npmi_streams_the_top_words_columns(tmp_path):
    """NPMI with the reader as its reference equals NPMI with the whole matrix in memory."""
    from algorithms.dpsvi.evaluate import npmi

    rng = np.random.default_rng(4)
    X = _raw_csr(rng, 120, 30, np.float32, True)
    p = tmp_path / "c.npz"
    sp.save_npz(p, X)
    r = NpzRows.open(str(p), block=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = C.read_npz(str(p))
    beta = rng.dirichlet(np.full(30, 0.3), 6)
    assert npmi(beta, r, 5) == pytest.approx(npmi(beta, full.X, 5), abs=1e-12)
    B = r.columns([3, 0, 7])
    assert B.shape == (full.n_docs, 3) and np.array_equal(B.toarray(), (full.X[:, [3, 0, 7]] > 0).toarray())


@pytest.mark.mpi
def test_ranks_share_the_scan_of_the_documents(tmp_path, mpi):
    """Under mpiexec rank 0 finds the documents (one decompression of the file) and sends them:
    every rank's reader has the rows of a scan of its own and reads the same documents; a file rank 0
    does not accept goes to read_npz on every rank."""
    rng = np.random.default_rng(4)
    X = _raw_csr(rng, 60, 30, np.float32, messy=True)
    X.data[X.indptr[7]:X.indptr[8]] = 0  # an empty document (explicit zeros) only the scan sees
    p = tmp_path / "c.npz"
    sp.save_npz(p, X)
    bad = tmp_path / "coo.npz"
    sp.save_npz(bad, X.tocoo())
    prog = tmp_path / "prog.py"
    prog.write_text(
        "import sys, numpy as np\n"
        "from mpi4py import MPI\n"
        "from algorithms.dpsvi.npz_rows import NpzRows\n"
        "pick = lambda n: np.arange(n)[::-1]\n"
        "r = NpzRows.open_shared(sys.argv[1], prefetch=pick)\n"  # guessed wrong (row 7): read again
        "kept = r.prefetched is not None\n"
        "none = NpzRows.open_shared(sys.argv[2], prefetch=pick)\n"
        "X = r.csr(np.arange(r.n_docs)[::-1])\n"
        "good = NpzRows.open_shared(sys.argv[4], prefetch=pick)\n"  # guessed right: read while rank 0 scans
        "hit = good.prefetched is not None\n"
        "G = good.csr(np.arange(good.n_docs)[::-1])\n"
        "ok = hit and good.prefetched is None and (G != NpzRows.open(sys.argv[4]).csr(np.arange(good.n_docs)[::-1])).nnz == 0\n"
        "with open(sys.argv[3] + str(MPI.COMM_WORLD.Get_rank()), 'w') as f:\n"  # (ranks' stdout interleaves)
        "    f.write(f\"{none is None} {kept} {ok} {','.join(map(str, r.rows))} {X.nnz} {float(X.data.sum())}\")\n")
    good = tmp_path / "good.npz"
    Y = X.copy()
    Y.data[Y.data == 0] = 1  # no row of explicit zeros: the rows with entries are the documents
    sp.save_npz(good, Y)
    out = mpi(3, [prog, p, bad, tmp_path / "rank", good])  # (the tests run with the project on PYTHONPATH)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [(tmp_path / f"rank{r}").read_text() for r in range(3)]
    ref = NpzRows.open(str(p))
    Xr = ref.csr(np.arange(ref.n_docs)[::-1])
    assert 7 not in ref.rows and len(lines) == 3
    assert set(lines) == {f"True False True {','.join(map(str, ref.rows))} {Xr.nnz} {float(Xr.data.sum())}"}
