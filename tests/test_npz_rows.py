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
    r, [(_, A)] = NpzRows.read_groups(str(p), lambda n: [ids], block=7)
    _assert_same_counts(A, full)
    _assert_same_counts(r.csr(ids), full)  # the reader's own pass (CorpusPlan's fallback)
    for got_ids, A in NpzRows.read_groups(str(p), lambda n: [ids[:30], ids[30:]])[1]:
        # every group is widened once a block holding such a count is read (here one block holds the file)
        _assert_same_counts(A, full[got_ids], compact=False)
    small = ids[:30]  # without the large count: compact
    assert r.csr(small).dtype == np.uint16
    X.data[3] = 2.5
    sp.save_npz(p, X)
    assert NpzRows.read_groups(str(p), lambda n: [ids]) is None  # read_npz rejects it


def test_read_groups_equals_read_npz(tmp_path):
    """One process's reader: every group's rows equal read_npz's, in the groups' order, whatever
    the blocks it inflates at a time (small ones cut through the rows); a file it does not take
    (explicit zeros, bad counts, no words) is left to read_npz (None). The reader's own pass over
    the file (``csr``) gives the same rows."""
    rng = np.random.default_rng(6)
    for X, p, full in _trial_files(tmp_path, rng):
        drawn = []

        def groups(n_docs):
            perm = rng.permutation(n_docs)
            k = int(rng.integers(0, n_docs + 1))
            drawn.extend([n_docs, perm[:k], perm[k:]])
            return drawn[1:]

        got = NpzRows.read_groups(str(p), groups, block=int(rng.integers(1, 9)))
        if full is None or (X.data == 0).any():
            assert got is None
            continue
        r, parts = got
        assert r.n_docs == full.n_docs == drawn[0] and len(parts) == 2
        for (got_ids, A), ids in zip(parts, drawn[1:]):
            assert np.array_equal(got_ids, ids)
            _assert_same_counts(A, full.X[ids], compact=full.X.nnz == 0 or full.X.data.max() <= C.COMPACT_MAX)
            _assert_same_counts(r.csr(ids), full.X[ids])


def test_groups_sent_block_by_block_are_put_together_equal(tmp_path):
    """Under mpiexec rank 0 sends the other ranks' rows as it reads the file (``fill`` with
    ``sent``): each receiving rank's row set, built from the plan and the pieces alone, gives the
    same CSR as reading the group here; rank 0 holds none of their entries; a file the reader does
    not take gives None after the pieces sent so far."""
    from algorithms.dpsvi.npz_rows import _RowSet

    rng = np.random.default_rng(8)
    for X, p, full in _trial_files(tmp_path, rng):
        block = int(rng.integers(1, 9))

        def groups(n_docs):
            perm = rng.permutation(n_docs)
            cut = np.sort(rng.integers(0, n_docs + 1, 2))
            return [perm[:cut[0]], perm[cut[0]:cut[1]], perm[cut[1]:]]

        opened = NpzRows.open_groups(str(p), groups, block=block, sent=(1, 2))
        if full is None:
            assert opened is None or NpzRows.read_groups(str(p), groups) is None
            continue
        r, sets = opened
        assert sets[1].data.size == sets[2].data.size == 0  # nothing of theirs held here
        receivers = {g: _RowSet.from_plan(sets[g].ids, sets[g].plan(r.data_dtype)) for g in (1, 2)}
        shipped = []

        def ship(pieces):
            assert set(pieces) == {1, 2}
            for g, (q0, d, ix) in pieces.items():
                receivers[g].copy_from(q0, d.copy(), ix.copy())
            shipped.append(1)

        parts = r.fill(sets, sent=(1, 2), ship=ship)
        if (X.data == 0).any():
            assert parts is None
            continue
        assert parts is not None and len(shipped) == -(-int(r.indptr[-1]) // block)  # one a block
        assert parts[1][1] is None and parts[2][1] is None
        got = [parts[0][1], *(receivers[g].matrix(full.X.shape[1], str(p)) for g in (1, 2))]
        for want, A in zip(sets, got):
            if want.ids.size:
                _assert_same_counts(A, full.X[want.ids])
    # counts beyond 16 bits in a late block: sent wide from there on, the receiving group widened
    X = sp.csr_matrix(rng.poisson(2.0, (40, 30)).astype(np.float32))
    X.data[X.data == 0] = 1
    X.data[-3] = C.COMPACT_MAX + 1
    p = tmp_path / "big.npz"
    sp.save_npz(p, X)
    full = C.read_npz(str(p)).X
    r, sets = NpzRows.open_groups(str(p), lambda n: [np.arange(0, n, 3), np.arange(1, n, 3), np.arange(2, n, 3)],
                                  block=7, sent=(1, 2))
    receivers = {g: _RowSet.from_plan(sets[g].ids, sets[g].plan(r.data_dtype)) for g in (1, 2)}
    kinds = set()

    def ship(pieces):
        for g, (q0, d, ix) in pieces.items():
            kinds.add(d.dtype)
            receivers[g].copy_from(q0, d.copy(), ix.copy())

    parts = r.fill(sets, sent=(1, 2), ship=ship)
    assert kinds == {np.dtype(np.uint16), np.dtype(np.float32)}
    for g in (1, 2):
        A = receivers[g].matrix(30, str(p))
        _assert_same_counts(A, full[sets[g].ids], compact=full[sets[g].ids].data.max() <= C.COMPACT_MAX)
    _assert_same_counts(parts[0][1], full[sets[0].ids])


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
    assert NpzRows.read_groups(str(p), lambda n: [np.arange(n)]) is None
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

    from algorithms.dpsvi.cli import CorpusPlan, _shard_ids

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
    whole = CorpusPlan(args, 3)  # one process, the matrix loaded whole: any rank's rows from it
    assert whole.npz is None and whole.full is not None
    assert np.array_equal(one.train_ids, whole.train_ids)
    a, b = one.shard(0, 1), whole.shard(0, 1)
    assert (a != b).nnz == 0 and a.shape == b.shape and not one.read_ahead[1:]
    (oo, ot), oh = one.heldout(3)
    assert not one.read_ahead
    assert rows.n_docs == whole.n_docs and np.array_equal(rows.train_ids, whole.train_ids)
    for w in range(3):
        a, b = rows.shard(w, 3), whole._rows(_shard_ids(whole.train_ids, w, 3))
        assert (a != b).nnz == 0 and a.shape == b.shape
    (ao, at), ah = rows.heldout(3)
    whole = CorpusPlan(args, 3)
    (bo, bt), bh = whole.heldout(3)

    def docs(h):  # the held-out documents NPMI counts, as one matrix
        return sp.vstack(list(h.parts())).tocsr()

    assert (docs(ah) != docs(bh)).nnz == 0 and (ao != bo).nnz == 0 and (at != bt).nnz == 0
    assert (docs(oh) != docs(bh)).nnz == 0 and (oo != bo).nnz == 0 and (ot != bt).nnz == 0
    assert docs(bh).shape[0] == whole.heldout_ids.size  # every held-out document, once


PLAN_PROG = """
import json, sys
from types import SimpleNamespace
from mpi4py import MPI
from algorithms.dpsvi.cli import CorpusPlan
from algorithms.dpsvi.corpus import CorpusError
rank = MPI.COMM_WORLD.Get_rank()
out = {}
for name in sys.argv[2:]:
    args = SimpleNamespace(corpus=name, vocab=None, holdout=0.2, stop_words="english", min_df=1, max_df=1.0,
                           max_features=None)
    try:
        plan = CorpusPlan(args, 3, ranks=3, rank=rank)
    except CorpusError as e:
        out[name] = "error: " + str(e).split(":")[-1].strip()
        continue
    out[name] = [plan.streamed, plan.n_docs, plan.n_words, plan.vocab is not None]
    if rank:
        X = plan.shard(rank - 1, 2)
        out[name] += [X.shape[0], X.nnz, X.indices.tolist(), X.data.astype(float).tolist(), X.indptr.tolist()]
with open(sys.argv[1] + str(rank), "w") as f:  # (the ranks' stdout interleaves)
    json.dump(out, f)
"""


@pytest.mark.mpi
def test_rank_0_reads_once_and_sends_every_rank_its_documents(tmp_path, mpi):
    """Under mpiexec rank 0 reads the corpus once, whatever its format, and sends each worker rank
    its shard: every worker's rows equal those one process reads (duplicates summed, uint16 counts)
    and only rank 0 has the words - for a .npz (sent as it is read), one the row reader gives up on
    half-way (a row of explicit zeros, which would renumber the documents: read whole and sent
    then), a UCI file and a text file; a file rank 0 cannot read raises on every rank (rank 0 the
    reader's message) instead of leaving the others waiting, also when that turns up half-way
    through sending a .npz."""
    from types import SimpleNamespace

    from algorithms.dpsvi.cli import CorpusPlan, _shard_ids

    rng = np.random.default_rng(4)
    X = _raw_csr(rng, 60, 30, np.float32, messy=True)
    X.data[X.data == 0] = 1  # duplicates and unsorted indices, no explicit zeros
    sp.save_npz(tmp_path / "good.npz", X)
    Z = X.copy()
    Z.data[Z.indptr[7]:Z.indptr[8]] = 0
    sp.save_npz(tmp_path / "zeros.npz", Z)
    F = X.copy()
    F.data[F.indptr[50]] = 2.5  # found when rank 0 has sent most of the rows
    sp.save_npz(tmp_path / "fraction.npz", F)
    Y = sp.csr_matrix(X.toarray())
    Y[5] = 0  # a document without lines
    Y.eliminate_zeros()
    coo = Y.tocoo()
    lines = [f"{r + 1} {c + 1} {int(v)}" for r, c, v in zip(coo.row, coo.col, coo.data)]
    (tmp_path / "docword.c.txt").write_text(f"60\n30\n{len(lines)}\n" + "\n".join(lines) + "\n")
    (tmp_path / "vocab.c.txt").write_text("".join(f"w{i}\n" for i in range(30)))
    (tmp_path / "docword.bad.txt").write_text(f"60\n30\n{len(lines)}\n" + "\n".join(lines[:-1]) + "\n1 99 1\n")
    (tmp_path / "vocab.bad.txt").write_text("".join(f"w{i}\n" for i in range(30)))
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "forest"]
    (tmp_path / "docs.txt").write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(50)) + "\n")
    names = [str(tmp_path / f) for f in ("good.npz", "zeros.npz", "docword.c.txt", "docs.txt", "docword.bad.txt",
                                         "fraction.npz")]
    prog = tmp_path / "prog.py"
    prog.write_text(PLAN_PROG)
    out = mpi(3, [prog, tmp_path / "rank", *names])  # (the tests run with the project on PYTHONPATH)
    assert out.returncode == 0, out.stdout + out.stderr
    got = [json.loads((tmp_path / f"rank{r}").read_text()) for r in range(3)]
    for name in names[:4]:
        args = SimpleNamespace(corpus=name, vocab=None, holdout=0.2, stop_words="english", min_df=1, max_df=1.0,
                               max_features=None)
        ref = CorpusPlan(args, 3)  # one process: any rank's rows read apart (csr, keep, or the whole matrix)
        for rank in (1, 2):
            R = ref._rows(_shard_ids(ref.train_ids, rank - 1, 2))
            streamed, n_docs, n_words, has_vocab, rows, nnz, indices, data, indptr = got[rank][name]
            assert (streamed, n_docs, n_words, has_vocab) == (True, ref.n_docs, ref.n_words, False)
            R.sort_indices()
            assert (rows, nnz, indices, data, indptr) == (R.shape[0], R.nnz, R.indices.tolist(),
                                                           R.data.astype(float).tolist(), R.indptr.tolist())
        assert got[0][name] == [True, ref.n_docs, ref.n_words, True]
    for bad in names[4:]:
        assert got[0][bad].startswith("error: ") and "rank 0" not in got[0][bad]
        assert got[1][bad] == got[2][bad] == "error: rank 0 could not read it (see its message)"