"""Property-based tests of the corpus readers (issue 5): thousands of random, mostly malformed
inputs give either a valid corpus or a CorpusError naming the file, never another exception.

Every test counts the examples it ran in COUNTS; ``pytest -s`` prints them at the end.
"""

import gzip
import io
import os
import tempfile
import warnings
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from algorithms.dpsvi.corpus import CorpusError, from_matrix, load_corpus

COUNTS: dict[str, int] = {}
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def cfg(n):
    return settings(SETTINGS, max_examples=n)


def _count(name):
    COUNTS[name] = COUNTS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    runs = {k: v for k, v in COUNTS.items() if not k.endswith("(valid)")}
    print("\nhypothesis examples per property: " + ", ".join(
        f"{k} {v}" + (f" ({COUNTS[k + ' (valid)']} parsed)" if k + " (valid)" in COUNTS else "")
        for k, v in sorted(runs.items())) + f"; total {sum(runs.values())}")


def _valid(c, source):
    X = c.X
    assert sp.isspmatrix_csr(X) and X.dtype == np.float32
    assert X.shape[1] == len(c.vocab) and X.shape[0] >= 1 and X.nnz >= 1
    assert np.all(X.data >= 1) and np.all(X.data == np.round(X.data))
    assert X.has_sorted_indices
    assert np.all(np.diff(X.indptr) > 0), "a document without words was kept"
    assert len(c.doc_ids) == X.shape[0]


def _load(path, name, **kw):
    """load_corpus: a valid corpus, or a CorpusError that names the file; nothing else."""
    _count(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = load_corpus(path, **kw)
    except CorpusError as e:
        msg = str(e)
        assert msg.startswith(os.path.dirname(path)) and "\n" not in msg, msg
        return None
    _valid(c, path)
    _count(name + " (valid)")
    return c


# ------------------------------------------------------------------------------- UCI

token = st.one_of(
    st.integers(-3, 12).map(str),
    st.sampled_from(["0", "1", "2", "99999999999999999999", "1.5", "-1", "x", "", "1e3", "0x10", "\t", "NaN"]),
    st.text(min_size=1, max_size=4),
)
uci_line = st.lists(token, min_size=0, max_size=5).map(" ".join)
header = st.tuples(st.one_of(st.integers(-2, 12), st.sampled_from([10**12, 2**63, 2**31])),
                   st.integers(-2, 12), st.integers(-2, 40)).map(lambda t: [str(v) for v in t])
header_junk = st.lists(uci_line, min_size=0, max_size=3)
vocab_lines = st.lists(st.one_of(st.sampled_from(["alpha", "beta", "gamma", "delta", "", " "]),
                                 st.text(min_size=0, max_size=6)), min_size=0, max_size=12)


def _write_uci(d, head, body, vocab, gz, junk_bytes):
    text = "\n".join(head + body) + "\n"
    raw = text.encode("utf-8", "surrogatepass") + junk_bytes
    name = os.path.join(d, "docword.t.txt" + (".gz" if gz else ""))
    with open(name, "wb") as f:
        f.write(gzip.compress(raw) if gz else raw)
    with open(os.path.join(d, "vocab.t.txt"), "wb") as f:
        f.write("\n".join(vocab).encode("utf-8", "surrogatepass"))
    return name


@cfg(1500)
@given(head=st.one_of(header, header_junk), body=st.lists(uci_line, max_size=25), vocab=vocab_lines,
       gz=st.booleans(), junk=st.one_of(st.just(b""), st.binary(max_size=8)))
def test_uci_random_files(head, body, vocab, gz, junk):
    with tempfile.TemporaryDirectory() as d:
        _load(_write_uci(d, head, body, vocab, gz, junk), "uci random")


@cfg(400)
@given(raw=st.binary(max_size=200), gz=st.booleans())
def test_uci_random_bytes(raw, gz):
    with tempfile.TemporaryDirectory() as d:
        name = os.path.join(d, "docword.b.txt" + (".gz" if gz else ""))
        with open(name, "wb") as f:
            f.write(raw)
        with open(os.path.join(d, "vocab.b.txt"), "wb") as f:
            f.write(b"a\nb\nc\n")
        _load(name, "uci bytes")


@st.composite
def count_matrices(draw, max_docs=12, max_words=9):
    n = draw(st.integers(1, max_docs))
    v = draw(st.integers(1, max_words))
    dense = draw(hnp.arrays(np.int64, (n, v), elements=st.integers(0, 5)))
    return dense


@cfg(300)
@given(X=count_matrices(), gz=st.booleans(), trailing_blank=st.booleans())
def test_uci_round_trip(X, gz, trailing_blank):
    """A valid UCI file reads back as the same counts (documents without words are skipped)."""
    _count("uci round trip")
    n, v = X.shape
    rows, cols = np.nonzero(X)
    body = [f"{r + 1} {c + 1} {X[r, c]}" for r, c in zip(rows, cols)]
    with tempfile.TemporaryDirectory() as d:
        name = _write_uci(d, [str(n), str(v), str(len(body))], body + ([""] if trailing_blank else []),
                          [f"w{i}" for i in range(v)], gz, b"")
        if not body:
            with pytest.raises(CorpusError, match="empty corpus"):
                load_corpus(name)
            return
        c = load_corpus(name)
    nonempty = X.sum(axis=1) > 0
    np.testing.assert_array_equal(c.X.toarray(), X[nonempty])
    np.testing.assert_array_equal(c.doc_ids, np.flatnonzero(nonempty))
    assert c.vocab == [f"w{i}" for i in range(v)]


@cfg(800)
@given(X=count_matrices(), gz=st.booleans(), where=st.integers(0, 10**6), what=st.sampled_from(
    ["token", "delete", "duplicate", "truncate", "bytes", "vocab-line", "vocab-bytes", "header"]),
    junk=token)
def test_uci_one_mutation(X, gz, where, what, junk):
    """A valid file with one random defect: a corpus (e.g. a duplicated line is summed) or a clear error."""
    n, v = X.shape
    rows, cols = np.nonzero(X)
    lines = [str(n), str(v), str(len(rows))] + [f"{r + 1} {c + 1} {X[r, c]}" for r, c in zip(rows, cols)]
    vocab = [f"w{i}" for i in range(v)]
    extra = b""
    i = where % len(lines)
    if what == "token":
        parts = lines[i].split()
        parts[where % len(parts)] = junk
        lines[i] = " ".join(parts)
    elif what == "delete":
        del lines[i]
    elif what == "duplicate":
        lines.insert(i, lines[i])
    elif what == "truncate":
        lines = lines[:i]
    elif what == "bytes":
        extra = bytes([0xFF, 0xFE, 0x00, where % 256])
    elif what == "vocab-line":
        vocab = vocab[:-1] if where % 2 else vocab + [junk]
    elif what == "vocab-bytes":
        vocab = vocab[:-1] + ["\udcff"]  # a lone surrogate: written as an invalid UTF-8 byte sequence
    else:
        lines[where % 3] = junk
    with tempfile.TemporaryDirectory() as d:
        _load(_write_uci(d, lines[:3], lines[3:], vocab, gz, extra), "uci one mutation")


@pytest.mark.parametrize("head,line,why", [
    ("1000000000000\n2\n1\n", "1 1 3", ":1: 1000000000000 documents is beyond"),  # was a MemoryError
    ("3\n2\n1\n", "1 1 99999999999999999999", ":4: number out of range"),
])
def test_uci_found_by_the_properties(tmp_path, head, line, why):
    (tmp_path / "vocab.h.txt").write_text("a\nb\n")
    f = tmp_path / "docword.h.txt"
    f.write_text(head + line + "\n")
    with pytest.raises(CorpusError, match=why):
        load_corpus(str(f))


# ------------------------------------------------------------------------------- npz


def _npz_bytes(arrays, pickle_ok=False):
    buf = io.BytesIO()
    np.savez(buf, **arrays) if not pickle_ok else np.savez(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


npz_arrays = st.dictionaries(
    st.sampled_from(["data", "indices", "indptr", "shape", "format", "lengths", "word_delta", "counts",
                     "vocab_utf8", "x"]),
    st.one_of(hnp.arrays(st.sampled_from([np.int32, np.int64, np.float32, np.float64, np.uint8]),
                         hnp.array_shapes(min_dims=0, max_dims=2, max_side=5)),
              st.sampled_from([np.array("csr"), np.array("dpsvi-compact-v1"), np.array(b"csr"),
                               np.array([3, 4]), np.array([-1, 2]), np.array([1, 0])])),
    max_size=9)


@cfg(600)
@given(arrays=npz_arrays, cut=st.one_of(st.none(), st.integers(0, 400)))
def test_npz_random_and_truncated(arrays, cut):
    raw = _npz_bytes(arrays)
    if cut is not None:
        raw = raw[:cut]
    with tempfile.TemporaryDirectory() as d:
        name = os.path.join(d, "c.npz")
        with open(name, "wb") as f:
            f.write(raw)
        _load(name, "npz random")


@cfg(200)
@given(X=count_matrices(), cut=st.integers(0, 2000), flip=st.integers(0, 2000))
def test_npz_valid_then_damaged(X, cut, flip):
    with tempfile.TemporaryDirectory() as d:
        name = os.path.join(d, "c.npz")
        sp.save_npz(name, sp.csr_matrix(X))
        raw = bytearray(open(name, "rb").read())
        if X.sum():
            c = _load(name, "npz valid+damaged")
            assert c is not None and c.X.sum() == X.sum()
        raw = raw[: cut % (len(raw) + 1)]
        if raw:
            raw[flip % len(raw)] ^= 0xFF
        with open(name, "wb") as f:
            f.write(bytes(raw))
        _load(name, "npz valid+damaged")


def test_npz_with_a_pickle_is_refused(tmp_path):
    """An object array (a pickle inside the .npz) is never unpickled."""
    name = tmp_path / "evil.npz"

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(name, "wb") as f:
        f.write(_npz_bytes({"data": np.array([Boom()], dtype=object)}, pickle_ok=True))
    with pytest.raises(CorpusError):
        load_corpus(str(name))
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------- text


@cfg(500)
@given(raw=st.one_of(st.binary(max_size=300),
                     st.lists(st.text(max_size=40), max_size=15).map(lambda ls: "\n".join(ls).encode(
                         "utf-8", "surrogatepass"))),
       min_df=st.sampled_from([1, 2, 0.5, 1.0]), max_df=st.sampled_from([1.0, 0.5, 1, 3]),
       stop_words=st.sampled_from([None, "english"]))
def test_text_lines(raw, min_df, max_df, stop_words):
    with tempfile.TemporaryDirectory() as d:
        name = os.path.join(d, "docs.txt")
        with open(name, "wb") as f:
            f.write(raw)
        _load(name, "txt lines", min_df=min_df, max_df=max_df, stop_words=stop_words)


@cfg(250)
@given(files=st.lists(st.one_of(st.binary(max_size=80), st.text(max_size=60).map(
           lambda t: t.encode("utf-8", "surrogatepass"))), max_size=6),
       other=st.booleans())
def test_text_directory(files, other):
    with tempfile.TemporaryDirectory() as d:
        root = os.path.join(d, "corpus")
        os.makedirs(os.path.join(root, "sub"))
        for i, raw in enumerate(files):
            with open(os.path.join(root, "sub" if i % 2 else "", f"{i}.txt"), "wb") as f:
                f.write(raw)
        if other:
            with open(os.path.join(root, "readme.md"), "wb") as f:
                f.write(b"\xff not a document")
        _load(root, "txt directory")


# ------------------------------------------------------------------------------- arrays


matrix_values = st.one_of(st.integers(-3, 6).map(float), st.sampled_from([0.5, np.nan, np.inf, -np.inf, 1e30, -0.0]))


@cfg(600)
@given(X=hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                   elements=matrix_values),
       sparse=st.booleans(), vocab_len=st.one_of(st.none(), st.integers(0, 7)))
def test_from_matrix(X, sparse, vocab_len):
    _count("from_matrix")
    if sparse and X.ndim == 2:
        X = sp.csr_matrix(X)
    vocab = None if vocab_len is None else [f"v{i}" for i in range(vocab_len)]
    try:
        c = from_matrix(X, vocab, source="<test array>")
    except CorpusError as e:
        assert str(e).startswith("<test array>")
        return
    assert c.X.dtype == np.float32 and c.X.shape[1] == len(c.vocab)
    assert np.all(c.X.data > 0) and np.all(c.X.data == np.round(c.X.data))


@cfg(200)
@given(X=hnp.arrays(st.sampled_from([np.int8, np.uint16, np.int64, np.float32, np.bool_, np.complex64]),
                    st.tuples(st.integers(0, 5), st.integers(0, 5))))
def test_from_matrix_dtypes(X):
    _count("from_matrix dtypes")
    try:
        c = from_matrix(X, source="<test array>")
    except CorpusError as e:
        assert str(e).startswith("<test array>")
        return
    assert c.X.dtype == np.float32
