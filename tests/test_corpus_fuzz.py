"""Fuzzing the corpus readers with hypothesis (issue 5, item 4).

Thousands of random, mostly malformed inputs -- UCI docword/vocab files (plain and gzip), ``.npz``
archives, one-document-per-line ``.txt`` files, directories of ``.txt`` files, dense and sparse
arrays -- must each give either a valid :class:`Corpus` or a :class:`CorpusError` whose message
starts with the file it is about (and, for a line-oriented format, names a line that really is
wrong). Any other exception fails the property.

The UCI, text and array properties are differential: an independent reading of the format (the
``*_oracle`` functions) says whether the input is valid, which lines are wrong and what the matrix
must be, and the reader has to agree. A few generators build only valid inputs and check that they
round-trip exactly.

Every property counts the examples it ran (``RUNS``); ``pytest -s`` prints them at the end (so does
``--hypothesis-show-statistics``). ``CORPUS_FUZZ_SCALE=10`` runs ten times as many examples;
``CORPUS_FUZZ_RANDOM=1`` draws new examples on every run instead of the fixed derandomized ones.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tempfile
import time
import warnings
import zipfile
from collections import Counter, defaultdict

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from algorithms.dpsvi import corpus as C
from algorithms.dpsvi.corpus import Corpus, CorpusError

SCALE = float(os.environ.get("CORPUS_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("CORPUS_FUZZ_RANDOM", "") not in ("", "0")

RUNS: Counter = Counter()  # examples run per property
OUTCOMES: Counter = Counter()  # (property, "parsed" | "error")
WALL: dict = {}


def fuzz(n):
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None, derandomize=not RANDOM,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@pytest.fixture(autouse=True)
def _time_each_test(request):
    t = time.perf_counter()
    yield
    WALL[request.node.name] = WALL.get(request.node.name, 0.0) + time.perf_counter() - t


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    lines = [f"  {name:28s} {n:6d} examples ({OUTCOMES[name, 'parsed']} parsed, {OUTCOMES[name, 'error']} "
             f"CorpusError)" for name, n in sorted(RUNS.items())]
    total = sum(RUNS.values())
    print(f"\ncorpus fuzz: {total} examples in {sum(WALL.values()):.1f} s\n" + "\n".join(lines))


# =============================================================================== helpers


#: scratch directories on tmpfs when there is one: a temporary directory on disk costs ~2 ms, on tmpfs ~0.1 ms
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def scratch():
    return tempfile.TemporaryDirectory(prefix="corpus-fuzz-", dir=SCRATCH)


def _write(path, raw: bytes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(raw)
    return path


def _named_line(msg: str, path: str):
    m = re.match(re.escape(path) + r":(\d+): ", msg)
    return int(m.group(1)) if m else None


def check_corpus(c, *, allow_empty_docs=False):
    """The invariants every reader promises of a Corpus."""
    assert isinstance(c, Corpus)
    X = c.X
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32
    X.check_format(full_check=True)
    assert X.has_canonical_format, "unsorted or duplicate indices"
    assert X.shape[0] >= 1 and X.nnz >= 1
    assert np.all(np.isfinite(X.data)) and np.all(X.data > 0), "counts must be finite and > 0 (zeros dropped)"
    assert np.all(X.data == np.round(X.data)), "counts must be integers"
    assert isinstance(c.vocab, list) and all(isinstance(w, str) for w in c.vocab)
    assert len(c.vocab) == X.shape[1]
    assert c.doc_ids is not None and len(c.doc_ids) == X.shape[0]
    if not allow_empty_docs:
        assert np.all(np.diff(X.indptr) > 0), "a document without words was kept"


def run_reader(name, call, files, *, allow_empty_docs=False):
    """``call()`` returns a valid corpus -> (corpus, None); or raises CorpusError naming one of
    ``files`` -> (None, message). Anything else propagates and fails the property."""
    RUNS[name] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = call()
    except CorpusError as e:
        msg = str(e)
        assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
        assert any(msg.startswith(f + ":") for f in files), f"message does not name the file: {msg!r}"
        OUTCOMES[name, "error"] += 1
        return None, msg
    check_corpus(c, allow_empty_docs=allow_empty_docs)
    OUTCOMES[name, "parsed"] += 1
    return c, None


def _damage_gzip(raw: bytes, how: int, where: int) -> bytes:
    """A gzip stream truncated, with a byte flipped, or with trailing junk."""
    if not raw:
        return raw
    if how == 0:
        return raw[: where % len(raw)]
    if how == 1:
        b = bytearray(raw)
        b[where % len(b)] ^= 1 + where % 255
        return bytes(b)
    return raw + bytes([where % 256]) * (1 + where % 5)


# ====================================================================== UCI bag of words


BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3", b"\xe9t\xe9", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x80"]
JUNK_TOKENS = [b"0", b"-1", b"-0", b"+1", b"1_0", b"1__0", b"_1", b"1.0", b"1.5", b"1e3", b"0x10", b"nan", b"inf", b"",
               b"x", b"\xd9\xa1", b"\xef\xbc\x91", b"\x00", b"1\x00", b"\x0b", b"\x1c", b"\xa0", b"9" * 19, b"9" * 25,
               b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"18446744073709551616",
               b"2147483647", b"2147483648", b"4294967296", b"1" * 5000, b"00001", b"\xff", b"1 2", b"\t"]
token_st = st.one_of(st.sampled_from(JUNK_TOKENS), st.integers(-3, 40).map(lambda v: str(v).encode()),
                     st.binary(min_size=1, max_size=4))
HEADER_VALUES = [b"0", b"1", b"2", b"-1", b"", b"x", b"2147483647", b"2147483648", b"1000000000000", b"9" * 30,
                 b" 3 ", b"+3", b"3_0", b"3.0", b"\xff", b"1" * 5000]
WORD_ALPHABET = st.characters(exclude_characters="\n", exclude_categories=("Cs",))
vocab_word = st.one_of(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.text(WORD_ALPHABET, min_size=1, max_size=5))

UCI_OPS = ["token", "delete", "duplicate", "swap", "blank", "junk-line", "insert-bytes", "truncate", "header",
           "header-value", "nnz", "crlf", "no-final-newline", "v-delete", "v-duplicate", "v-blank", "v-bytes",
           "v-bom", "v-add", "v-truncate"]


def uci_oracle(doc_raw, vocab_raw, keep=None):
    """An independent reading of the UCI format.

    Returns ``(valid, bad, expected)``: ``bad`` maps "doc"/"vocab" to the lines that are wrong on
    their own ("doc" is None when the file cannot be decompressed: any docword error is then fine)
    and "vocab_ok" to whether the vocabulary is fine; ``expected`` = (counts dict {(row, word): count},
    doc_ids, vocab, W) for a valid input.
    """
    bad = {"doc": set(), "vocab": set(), "vocab_ok": False}
    try:
        text = vocab_raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad["vocab"].add(vocab_raw[: e.start].count(b"\n") + 1)
        return False, bad, None
    words = text.split("\n")
    if words and words[-1] == "":
        words.pop()
    bad["vocab"] |= {i for i, w in enumerate(words, 1) if not w.strip()}
    if bad["vocab"] or not words:
        return False, bad, None
    bad["vocab_ok"] = True
    vocab = [w.strip() for w in words]
    if doc_raw is None:
        bad["doc"] = None
        return False, bad, None
    lines = doc_raw.split(b"\n")
    head = []
    for k in range(3):
        line = lines[k] if k < len(lines) else b""
        try:
            v = int(line.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            v = -1
        if v < 0:
            bad["doc"].add(k + 1)
            return False, bad, None
        head.append(v)
    D, W, NNZ = head
    if D == 0 or NNZ == 0:
        return False, bad, None
    bad["doc"] |= {k + 1 for k, v in enumerate(head) if v > 2**31 - 1}
    if W != len(vocab):
        bad["doc"].add(2)
    if bad["doc"]:
        return False, bad, None
    counts = defaultdict(int)
    n = 0
    for k, line in enumerate(lines[3:], 4):
        if not line.strip():
            continue
        n += 1
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError
            d, w, c = (int(p) for p in parts)
        except ValueError:
            bad["doc"].add(k)
            continue
        if not (1 <= d <= D and 1 <= w <= W and 1 <= c < 2**63):  # the reader's counts are 64-bit integers
            bad["doc"].add(k)
            continue
        if keep is None or keep[d - 1]:
            counts[d - 1, w - 1] += c
    if bad["doc"] or n == 0:
        return False, bad, None
    doc_ids = sorted({d for d, _ in counts})
    if not doc_ids:
        return False, bad, None
    return True, bad, (counts, doc_ids, vocab, W)


def check_uci(name, doc_path, vocab_path, doc_plain, vocab_raw, keep=None, chunk_lines=1 << 18, vocab_arg=None,
              via="read_uci"):
    """Read with read_uci (or load_corpus on the file or its directory) and compare with the oracle."""
    valid, bad, expected = uci_oracle(doc_plain, vocab_raw, keep)
    call = {"read_uci": lambda: C.read_uci(doc_path, vocab_arg, keep=keep, chunk_lines=chunk_lines),
            "file": lambda: C.load_corpus(doc_path, vocab=vocab_arg, keep=keep),
            "directory": lambda: C.load_corpus(os.path.dirname(doc_path), vocab=vocab_arg, keep=keep)}[via]
    c, msg = run_reader(name, call, [doc_path, vocab_path])
    if c is None:
        assert not valid, f"a valid file was refused: {msg}"
        for key, path in (("doc", doc_path), ("vocab", vocab_path)):
            if not msg.startswith(path + ":"):
                continue
            line = _named_line(msg, path)
            # the vocabulary is read first: an error about the docword file means the vocabulary was fine
            assert bad["vocab_ok"] == (key == "doc"), f"blames the wrong file: {msg}"
            if key == "doc" and bad["doc"] is None:  # undecompressable: any error about the file
                return
            if line is None:
                assert any(s in msg for s in ("empty corpus", "empty vocabulary", "cannot read", "gzip")), \
                    f"an error about a line that names no line: {msg!r}"
            else:
                assert line in bad[key], f"the error names line {line}, which is fine (bad: {sorted(bad[key])}): {msg}"
        return
    assert valid, "the reader accepted an invalid file"
    counts, doc_ids, vocab, W = expected
    assert c.vocab == vocab
    np.testing.assert_array_equal(c.doc_ids, doc_ids)
    want = np.zeros((len(doc_ids), W))
    row = {d: i for i, d in enumerate(doc_ids)}
    for (d, w), v in counts.items():
        want[row[d], w] = v
    np.testing.assert_allclose(c.X.toarray(), want, rtol=1e-6)
    if want.max() < 2**24:
        np.testing.assert_array_equal(c.X.toarray(), want)


@st.composite
def uci_files(draw):
    """(docword bytes, vocab bytes): a valid file from a random matrix, then 0-4 random defects."""
    n = draw(st.integers(1, 8))
    V = draw(st.integers(1, 6))
    X = draw(hnp.arrays(np.int64, (n, V), elements=st.sampled_from([0, 0, 0, 1, 2, 3, 7, 1000])))
    rows, cols = np.nonzero(X)
    order = draw(st.permutations(range(len(rows))))
    body = [b"%d %d %d" % (rows[i] + 1, cols[i] + 1, X[rows[i], cols[i]]) for i in order]
    lines = [str(n).encode(), str(V).encode(), str(len(body)).encode()] + body
    vocab = [w.encode("utf-8") for w in draw(st.lists(vocab_word, min_size=V, max_size=V))]
    sep, vsep, final, vfinal = b"\n", b"\n", True, True
    for op in draw(st.lists(st.sampled_from(UCI_OPS), max_size=4)):
        i = draw(st.integers(0, 10**6))
        if op == "token" and lines:
            k = i % len(lines)
            parts = lines[k].split() or [b""]
            parts[draw(st.integers(0, 10)) % len(parts)] = draw(token_st)
            lines[k] = b" ".join(parts)
        elif op == "delete" and lines:
            del lines[i % len(lines)]
        elif op == "duplicate" and lines:
            lines.insert(i % len(lines), lines[i % len(lines)])
        elif op == "swap" and len(lines) > 1:
            a, b = i % len(lines), (i // 7) % len(lines)
            lines[a], lines[b] = lines[b], lines[a]
        elif op == "blank":
            lines.insert(i % (len(lines) + 1), draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"  \x0b"])))
        elif op == "junk-line":
            lines.insert(i % (len(lines) + 1), draw(st.binary(max_size=12)).replace(b"\n", b" "))
        elif op == "insert-bytes" and lines:
            k = i % len(lines)
            p = (i // 13) % (len(lines[k]) + 1)
            lines[k] = lines[k][:p] + draw(st.one_of(st.sampled_from(BAD_UTF8), st.binary(max_size=3))) + lines[k][p:]
        elif op == "truncate":
            lines = lines[: i % (len(lines) + 1)]
            final = False
        elif op == "header" and lines:
            lines[i % min(3, len(lines))] = draw(token_st)
        elif op == "header-value" and lines:
            lines[i % min(3, len(lines))] = draw(st.sampled_from(HEADER_VALUES))
        elif op == "nnz" and len(lines) >= 3:
            lines[2] = str(i % 50).encode()
        elif op == "crlf":
            sep = b"\r\n"
        elif op == "no-final-newline":
            final = False
        elif op == "v-delete" and vocab:
            del vocab[i % len(vocab)]
        elif op == "v-duplicate" and vocab:
            vocab.insert(i % len(vocab), vocab[i % len(vocab)])
        elif op == "v-blank":
            blank = draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"\xc2\xa0", b"\xe3\x80\x80"]))
            vocab.insert(i % (len(vocab) + 1), blank)
        elif op == "v-bytes":
            k = i % (len(vocab) + 1)
            vocab.insert(k, draw(st.sampled_from(BAD_UTF8)) + (vocab[k] if k < len(vocab) else b""))
        elif op == "v-bom" and vocab:
            vocab[0] = b"\xef\xbb\xbf" + vocab[0]
        elif op == "v-add":
            vocab.append(draw(vocab_word).encode("utf-8"))
        elif op == "v-truncate":
            vocab = vocab[: i % (len(vocab) + 1)]
            vsep = draw(st.sampled_from([b"\n", b"\r\n"]))
            vfinal = draw(st.booleans())
    doc = sep.join(lines) + (sep if final and lines else b"")
    voc = vsep.join(vocab) + (vsep if vfinal and vocab else b"")
    return doc, voc


def _header_D(doc_plain):
    try:
        return int(doc_plain.split(b"\n", 1)[0].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None


@fuzz(1200)
@given(files=uci_files(), gz=st.sampled_from(["plain", "gz", "gz-damaged"]), how=st.integers(0, 2),
       where=st.integers(0, 10**6), chunk_lines=st.sampled_from([1, 2, 3, 5, 1 << 18]), use_keep=st.booleans(),
       keep_seed=st.integers(0, 2**32 - 1), vocab_gz=st.booleans(),
       via=st.sampled_from(["read_uci", "file", "directory"]))
def test_uci_mutated_files(files, gz, how, where, chunk_lines, use_keep, keep_seed, vocab_gz, via):
    """A valid docword/vocab pair with random defects, plain or gzip (intact or damaged), read by
    read_uci in random chunk sizes or by load_corpus (the file or its directory), optionally keeping
    a random subset of documents."""
    doc, voc = files
    with scratch() as d:
        doc_path = os.path.join(d, "docword.f.txt" + ("" if gz == "plain" else ".gz"))
        raw = doc if gz == "plain" else gzip.compress(doc)
        if gz == "gz-damaged":
            raw = _damage_gzip(raw, how, where)
        _write(doc_path, raw)
        try:
            plain = gzip.decompress(raw) if gz != "plain" else raw
        except Exception:  # noqa: BLE001 - the oracle's view: this stream is unreadable
            plain = None
        vocab_path = os.path.join(d, "vocab.f.txt")
        _write(vocab_path, voc)
        vocab_arg = None
        if vocab_gz:  # an explicit --vocab FILE, gzip-compressed
            vocab_arg = vocab_path = _write(os.path.join(d, "words.txt.gz"), gzip.compress(voc))
        keep = None
        D = _header_D(plain) if plain is not None else None
        if use_keep and D is not None and 1 <= D <= 1000:
            keep = np.random.default_rng(keep_seed).random(D) < 0.6
        check_uci("uci mutated", doc_path, vocab_path, plain, voc, keep, chunk_lines, vocab_arg, via)


@fuzz(500)
@given(doc=st.one_of(st.binary(max_size=120),
                     st.tuples(st.sampled_from([b"3\n4\n5\n", b"1\n1\n1\n", b"2\n2\n", b""]), st.binary(max_size=80))
                     .map(b"".join)),
       voc=st.one_of(st.just(b"a\nb\nc\nd\n"), st.just(b"a\n"), st.binary(max_size=30)),
       gz=st.booleans())
def test_uci_random_bytes(doc, voc, gz):
    """Arbitrary bytes as the docword file (sometimes after a valid header) and as the vocabulary."""
    with scratch() as d:
        doc_path = _write(os.path.join(d, "docword.r.txt" + (".gz" if gz else "")), gzip.compress(doc) if gz else doc)
        vocab_path = _write(os.path.join(d, "vocab.r.txt"), voc)
        check_uci("uci random bytes", doc_path, vocab_path, doc, voc)


@fuzz(60)
@given(gz=st.booleans(), vocab=st.booleans())
def test_uci_empty_and_missing_files(gz, vocab):
    with scratch() as d:
        doc_path = _write(os.path.join(d, "docword.e.txt" + (".gz" if gz else "")), gzip.compress(b"") if gz else b"")
        vocab_path = os.path.join(d, "vocab.e.txt")
        if vocab:
            _write(vocab_path, b"")
        c, msg = run_reader("uci empty/missing", lambda: C.load_corpus(doc_path), [doc_path, vocab_path])
        assert c is None and (("no vocabulary file" in msg) if not vocab else ("empty vocabulary" in msg))


@fuzz(400)
@given(X=hnp.arrays(np.int64, st.tuples(st.integers(1, 30), st.integers(1, 12)),
                    elements=st.one_of(st.just(0), st.just(0), st.integers(1, 5), st.integers(1, 2**24))),
       vocab=st.data(), gz=st.booleans(), split=st.booleans(), ws=st.sampled_from([b" ", b"\t", b"  ", b" \t "]),
       crlf=st.booleans(), nnz_off=st.integers(-2, 2), chunk_lines=st.sampled_from([1, 2, 7, 1 << 18]),
       keep_seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)), order_seed=st.integers(0, 2**32 - 1),
       order=st.sampled_from(["any", "by document", "by document and word"]))
def test_uci_round_trip(X, vocab, gz, split, ws, crlf, nnz_off, chunk_lines, keep_seed, order_seed, order):
    """A valid UCI file (any line order, or document by document as the UCI files come - the
    reader's direct CSR path - with or without the words in order; counts split over repeated
    lines, tabs, CRLF, a header that miscounts the lines) reads back as exactly the matrix it was
    written from, also with its counts kept compact (uint16 when they fit)."""
    n, V = X.shape
    words = vocab.draw(st.lists(st.from_regex(r"[a-zA-Z0-9_\-\u00e0-\u00ff]{1,8}", fullmatch=True),
                                min_size=V, max_size=V))
    rng = np.random.default_rng(order_seed)
    entries = []
    for r, c in zip(*np.nonzero(X)):
        v = int(X[r, c])
        if split and v > 1:  # the same (doc, word) on two lines: the reader sums them
            a = int(rng.integers(1, v))
            entries += [(r, c, a), (r, c, v - a)]
        else:
            entries.append((r, c, v))
    entries = [entries[i] for i in rng.permutation(len(entries))]
    if order != "any":  # (a stable sort: repeated lines of a word stay apart or together at random)
        entries.sort(key=(lambda e: e[0]) if order == "by document" else (lambda e: e[:2]))
    nl = b"\r\n" if crlf else b"\n"
    body = [ws.join(b"%d" % x for x in (r + 1, c + 1, v)) for r, c, v in entries]
    raw = nl.join([b"%d" % n, b"%d" % V, b"%d" % max(1, len(body) + nnz_off)] + body) + nl
    keep = None if keep_seed is None else np.random.default_rng(keep_seed).random(n) < 0.5
    with scratch() as d:
        doc_path = _write(os.path.join(d, "docword.rt.txt" + (".gz" if gz else "")), gzip.compress(raw) if gz else raw)
        vocab_path = _write(os.path.join(d, "vocab.rt.txt"), "\n".join(words).encode("utf-8") + b"\n")
        RUNS["uci round trip"] += 1
        rows = np.flatnonzero((X.sum(axis=1) > 0) & (keep if keep is not None else True))
        if rows.size == 0:
            with pytest.raises(CorpusError, match="empty corpus"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                C.read_uci(doc_path, keep=keep, chunk_lines=chunk_lines)
            OUTCOMES["uci round trip", "error"] += 1
            return
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            c = C.read_uci(doc_path, keep=keep, chunk_lines=chunk_lines)
            # compact: the same matrix, its counts as uint16 when every one fits (kept so while reading)
            small = C.read_uci(doc_path, keep=keep, chunk_lines=chunk_lines, compact=True)
        assert bool(w) == (len(body) != max(1, len(body) + nnz_off))  # a miscount is only a warning
    assert small.X.dtype == (np.uint16 if c.X.data.max() <= C.COMPACT_MAX else np.float32)
    assert (small.X != c.X).nnz == 0 and np.array_equal(small.doc_ids, c.doc_ids)
    assert np.array_equal(small.X.indptr, c.X.indptr) and np.array_equal(small.X.indices, c.X.indices)
    OUTCOMES["uci round trip", "parsed"] += 1
    check_corpus(c)
    np.testing.assert_array_equal(c.X.toarray(), X[rows].astype(np.float32))
    np.testing.assert_array_equal(c.doc_ids, rows)
    assert c.vocab == words


# ======================================================================= vocabulary files


@fuzz(300)
@given(lines=st.lists(st.one_of(vocab_word.map(lambda w: w.encode("utf-8")), st.sampled_from(BAD_UTF8),
                                st.sampled_from([b"", b" ", b"\r", b"dup", b"dup", b"\xef\xbb\xbfw"])), max_size=10),
       final=st.booleans(), gz=st.sampled_from(["plain", "gz", "gz-damaged"]), where=st.integers(0, 10**6))
def test_vocab_files(lines, final, gz, where):
    """read_vocab: missing and blank lines, duplicates, bad UTF-8; the word list or an error at the line."""
    raw = b"\n".join(lines) + (b"\n" if final and lines else b"")
    with scratch() as d:
        path = os.path.join(d, "words.txt" + ("" if gz == "plain" else ".gz"))
        data = raw if gz == "plain" else gzip.compress(raw)
        if gz == "gz-damaged":
            data = _damage_gzip(data, where % 3, where // 3)
        _write(path, data)
        try:
            plain = gzip.decompress(data) if gz != "plain" else data
        except Exception:  # noqa: BLE001
            plain = None
        RUNS["vocab files"] += 1
        try:
            words = C.read_vocab(path)
        except CorpusError as e:
            msg = str(e)
            OUTCOMES["vocab files", "error"] += 1
            assert msg.startswith(path + ":") and "\n" not in msg, msg
            if plain is None:
                return
            valid, bad, _ = uci_oracle(b"", plain)
            assert bad["vocab"] or "empty vocabulary" in msg, msg
            assert _named_line(msg, path) in (bad["vocab"] or {None}), (msg, bad)
            return
    OUTCOMES["vocab files", "parsed"] += 1
    assert plain is not None
    text = plain.decode("utf-8")
    want = [w.strip() for w in text.split("\n")]
    if want[-1] == "":
        want.pop()
    assert words == want and all(words)


# ============================================================================ .npz files


def _npz_bytes(arrays, compressed=False, allow_pickle=False):
    buf = io.BytesIO()
    if compressed:
        np.savez_compressed(buf, allow_pickle=allow_pickle, **arrays)
    else:
        np.savez(buf, allow_pickle=allow_pickle, **arrays)
    return buf.getvalue()


ARRAY_DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "g", "c8", "?", ">i4", ">f8", "<U3",
                "S3", "M8[s]"]
ARRAY_VALUES = st.one_of(st.integers(-3, 9), st.sampled_from([0, 1, 2, -1, 2**31, 2**40, 2**63 - 1]),
                         st.sampled_from([0.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e300]))


@st.composite
def any_array(draw, max_side=6):
    """A small array of almost any dtype (values cast from a pool of nasty ones)."""
    dt = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=max_side))
    vals = draw(st.lists(ARRAY_VALUES, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            a = np.array(vals, dtype=object).astype(dt) if vals else np.zeros(0, dt)
        except (OverflowError, ValueError, TypeError):
            a = np.array([int(v) % 100 if v == v and abs(v) != float("inf") else 1 for v in vals] or [], dtype=np.int64)
            a = a.astype(dt)
    return a.reshape(shape)


SPECIAL = {
    "format": [np.array("csr"), np.array("csc"), np.array("coo"), np.array("bsr"), np.array("dia"),
               np.array(b"csr"), np.array(["csr"]), np.array(5), np.array("dpsvi-compact-v1"), np.array("")],
    "shape": [np.array([3, 4]), np.array([2, 2]), np.array([0, 3]), np.array([-1, 2]), np.array([10**12, 3]),
              np.array([3, 10**12]), np.array([2**31, 3]), np.array([3, 2**40]), np.array([2**64 - 1, 1], np.uint64),
              np.array([1, 2, 3]), np.array(3), np.array([2.0, 2.0])],
}
NPZ_KEYS = ["format", "shape", "data", "indices", "indptr", "row", "col", "lengths", "word_delta", "counts",
            "vocab_utf8", "x", "format.npy"]


@st.composite
def npz_dicts(draw):
    keys = draw(st.sets(st.sampled_from(NPZ_KEYS), max_size=9))
    out = {}
    for k in keys:
        if k in SPECIAL and draw(st.booleans()):
            out[k] = draw(st.sampled_from(SPECIAL[k]))
        else:
            out[k] = draw(any_array())
    return out


def run_npz(name, path, extra_files=()):
    return run_reader(name, lambda: C.load_corpus(path), [path, *extra_files])


@fuzz(500)
@given(arrays=npz_dicts(), compressed=st.booleans(), cut=st.one_of(st.none(), st.integers(0, 3000)))
def test_npz_random_arrays(arrays, compressed, cut):
    """Archives of random arrays under the keys the readers look for (wrong dtypes, shapes, values,
    formats), possibly truncated."""
    raw = _npz_bytes(arrays, compressed)
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    with scratch() as d:
        run_npz("npz random arrays", _write(os.path.join(d, "r.npz"), raw))


def _valid_npz_arrays(X, fmt, dtype):
    M = sp.csr_matrix(X).asformat(fmt)
    M.data = M.data.astype(dtype)
    buf = io.BytesIO()
    sp.save_npz(buf, M, compressed=False)
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k] for k in z.files}


count_matrix = hnp.arrays(np.int64, st.tuples(st.integers(1, 12), st.integers(1, 9)),
                          elements=st.sampled_from([0, 0, 0, 1, 2, 5, 300]))
NPZ_MUTATIONS = ["none", "truncate", "flip", "replace", "drop", "object", "raw-member", "npy", "encrypted",
                 "not-a-zip", "duplicate-member", "empty"]


class _Unpickled:
    """Unpickling this object creates the file it names: proof that a pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@fuzz(600)
@given(X=count_matrix, fmt=st.sampled_from(["csr", "csc", "coo", "compact"]),
       dtype=st.sampled_from(["i4", "i8", "u2", "f4", "f8"]), compressed=st.booleans(),
       mutation=st.sampled_from(NPZ_MUTATIONS), where=st.integers(0, 10**6), replacement=any_array(),
       key_pick=st.integers(0, 100))
def test_npz_mutated(X, fmt, dtype, compressed, mutation, where, replacement, key_pick):
    """A valid save_npz / compact archive with one defect: truncated, bytes flipped, an array replaced
    or missing, an object array (a pickle: must be refused, never loaded), a member that is not .npy,
    a bare .npy, the encryption flag set, not a zip at all, duplicate members."""
    from benchmarks.data.build_pydoc_corpus import save_compact

    with scratch() as d:
        path = os.path.join(d, "m.npz")
        sentinel = os.path.join(d, "UNPICKLED")
        if fmt == "compact":
            save_compact(path, sp.csr_matrix(X), [f"w{i}" for i in range(X.shape[1])])
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            arrays = _valid_npz_arrays(X, fmt, dtype)
        keys = sorted(arrays)
        key = keys[key_pick % len(keys)]
        raw = _npz_bytes(arrays, compressed)
        must_fail = False
        if mutation == "truncate":
            raw = raw[: where % len(raw)]
        elif mutation == "flip":
            b = bytearray(raw)
            for j in range(1 + where % 3):
                b[(where * (j + 7)) % len(b)] ^= 1 + (where >> j) % 255
            raw = bytes(b)
        elif mutation == "replace":
            raw = _npz_bytes({**arrays, key: replacement}, compressed)
        elif mutation == "drop":
            raw = _npz_bytes({k: v for k, v in arrays.items() if k != key}, compressed)
        elif mutation == "object":
            obj = np.empty(2, dtype=object)
            obj[0], obj[1] = _Unpickled(sentinel), [1, 2]
            raw = _npz_bytes({**arrays, ("x" if where % 2 else key): obj}, compressed, allow_pickle=True)
            must_fail = True
        elif mutation == "raw-member":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for k, v in arrays.items():
                    npy = io.BytesIO()
                    np.save(npy, v)
                    zf.writestr(k if k == key else k + ".npy", npy.getvalue() if where % 2 else str(v.tolist()))
            raw = buf.getvalue()
        elif mutation == "npy":
            npy = io.BytesIO()
            np.save(npy, arrays[key])
            raw = npy.getvalue()
        elif mutation == "encrypted":
            b = bytearray(raw)
            for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
                for m in re.finditer(re.escape(sig), bytes(b)):
                    if where % 2 or m.start() == bytes(b).find(sig):
                        b[m.start() + off] |= 1
            raw = bytes(b)
        elif mutation == "not-a-zip":
            magic = [b"\x93NUMPY\x01\x00", b"\x80\x04\x95", b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b""][where % 5]
            raw = magic + raw[:where % 50]
        elif mutation == "duplicate-member":
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with zipfile.ZipFile(buf, "w") as zf:
                    for k, v in list(arrays.items()) + [(key, replacement)]:
                        npy = io.BytesIO()
                        np.save(npy, v)
                        zf.writestr(k + ".npy", npy.getvalue())
            raw = buf.getvalue()
        elif mutation == "empty":
            raw = b""
        _write(path, raw)
        c, msg = run_npz("npz mutated", path)
        assert not os.path.exists(sentinel), "a pickle inside the .npz was loaded"
        if must_fail:
            assert c is None
        if mutation == "none":
            nonempty = np.flatnonzero(X.sum(axis=1) > 0)
            if nonempty.size == 0:
                assert c is None and "empty corpus" in msg
            else:
                np.testing.assert_array_equal(c.X.toarray(), X[nonempty])
                np.testing.assert_array_equal(c.doc_ids, nonempty)


@fuzz(300)
@given(X=hnp.arrays(np.int64, st.tuples(st.integers(1, 20), st.integers(1, 15)),
                    elements=st.one_of(st.just(0), st.just(0), st.integers(1, 9), st.integers(1, 60000))),
       fmt=st.sampled_from(["csr", "csc", "coo", "compact"]), dtype=st.sampled_from(["i4", "i8", "u2", "f4", "f8"]),
       compressed=st.booleans(), vocab_where=st.sampled_from(["none", "stem", "dir", "arg"]), data=st.data(),
       spread=st.sampled_from([None, None, 2000, 10**12]))
def test_npz_round_trip(X, fmt, dtype, compressed, vocab_where, data, spread):
    """A scipy.sparse.save_npz matrix (csr, csc, coo; any count dtype) or a compact file reads back exactly,
    with its vocabulary from <stem>.vocab.txt, vocab.txt, --vocab or numbered w0, w1, ...; a csc or coo
    matrix may also have its rows spread over ``spread`` mostly empty ones (a shape of 10**12 documents)."""
    from benchmarks.data.build_pydoc_corpus import save_compact

    V = X.shape[1]
    words = data.draw(st.lists(st.from_regex(r"[a-z\u00e9\u4e00-\u4e05]{1,6}", fullmatch=True), min_size=V, max_size=V))
    RUNS["npz round trip"] += 1
    with scratch() as d:
        path = os.path.join(d, "rt.npz")
        vocab_arg = None
        ids = np.arange(X.shape[0])  # the document number of each row of X
        if fmt == "compact":
            save_compact(path, sp.csr_matrix(X), words)
            want_vocab = words
        elif spread and fmt != "csr":
            ids = np.sort(np.random.default_rng(X.size).choice(spread, X.shape[0], replace=False))
            r, k = np.nonzero(X)
            M = sp.coo_matrix((X[r, k].astype(dtype), (ids[r], k)), shape=(spread, V))
            sp.save_npz(path, M if fmt == "coo" else M.tocsc(), compressed=compressed)
        else:
            M = sp.csr_matrix(X).asformat(fmt)
            M.data = M.data.astype(dtype)
            sp.save_npz(path, M, compressed=compressed)
        if fmt != "compact":
            vocab_file = {"stem": os.path.join(d, "rt.vocab.txt"), "dir": os.path.join(d, "vocab.txt"),
                          "arg": os.path.join(d, "my words.txt"), "none": None}[vocab_where]
            if vocab_file:
                _write(vocab_file, ("\n".join(words) + "\n").encode("utf-8"))
            vocab_arg = vocab_file if vocab_where == "arg" else None
            want_vocab = words if vocab_file else [f"w{i}" for i in range(V)]
        rows = np.flatnonzero(X.sum(axis=1) > 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if rows.size == 0:
                with pytest.raises(CorpusError, match="empty corpus"):
                    C.load_corpus(path, vocab=vocab_arg)
                OUTCOMES["npz round trip", "error"] += 1
                return
            c = C.load_corpus(path, vocab=vocab_arg)
    OUTCOMES["npz round trip", "parsed"] += 1
    check_corpus(c)
    np.testing.assert_array_equal(c.X.toarray(), X[rows].astype(np.float32))
    np.testing.assert_array_equal(c.doc_ids, ids[rows])
    assert c.vocab == want_vocab


@fuzz(150)
@given(payload=st.one_of(st.integers(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)),
       key=st.sampled_from(["data", "indices", "format", "shape", "vocab_utf8", "extra"]), compressed=st.booleans(),
       fmt=st.sampled_from(["csr", "compact"]))
def test_npz_object_arrays_are_refused(payload, key, compressed, fmt):
    """Any object array (i.e. a pickle) in the archive, under any key, gives a CorpusError; nothing is unpickled."""
    with scratch() as d:
        sentinel = os.path.join(d, "UNPICKLED")
        if fmt == "csr":
            arrays = _valid_npz_arrays(np.array([[1, 2], [0, 3]]), "csr", "i8")
        else:
            arrays = {"format": np.array("dpsvi-compact-v1"), "shape": np.array([1, 2]), "lengths": np.array([1]),
                      "word_delta": np.array([0]), "counts": np.array([1]),
                      "vocab_utf8": np.frombuffer(b"a\nb", np.uint8)}
        obj = np.empty(3, dtype=object)
        obj[0], obj[1], obj[2] = payload, _Unpickled(sentinel), 1
        path = _write(os.path.join(d, "p.npz"), _npz_bytes({**arrays, key: obj}, compressed, allow_pickle=True))
        c, msg = run_npz("npz object arrays", path)
        assert c is None and not os.path.exists(sentinel)


@fuzz(300)
@given(raw=st.one_of(st.binary(max_size=200),
                     st.tuples(st.sampled_from([b"PK\x03\x04", b"\x93NUMPY", b"\x93NUMPY\x01\x00v\x00", b"\x80\x04",
                                                b"\x1f\x8b", b"PK\x05\x06"]), st.binary(max_size=120)).map(b"".join)))
def test_npz_random_bytes(raw):
    with scratch() as d:
        run_npz("npz random bytes", _write(os.path.join(d, "b.npz"), raw))


# ============================================================================= text files


TOKEN_RE = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token_pattern (after lowercasing)
good_piece = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=30).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"the cat sat", b"Alpha BETA gamma", b"\xc3\xa9t\xc3\xa9 caf\xc3\xa9", b"\r", b"\x00", b"  ",
                     b"\t\t", b"\xe2\x80\xa8", b"a b c", b"x1 y2 z_3", b"\xef\xbb\xbfbom word", b"cat alpha"]))
bad_piece = st.one_of(st.sampled_from(BAD_UTF8), st.binary(min_size=1, max_size=10))
_SEPARATORS = st.sampled_from([b"\n", b"\n", b" ", b"", b"\r\n", b"\n\n"])


@st.composite
def text_file(draw):
    """Lines of random text; in a third of the files one piece is random bytes (mostly not UTF-8)."""
    pieces = draw(st.lists(good_piece, max_size=12))
    if draw(st.integers(0, 2)) == 0:
        pieces.insert(draw(st.integers(0, len(pieces))), draw(bad_piece))
    return b"".join(p + draw(_SEPARATORS) for p in pieces)


def _utf8_error_line(raw):
    try:
        raw.decode("utf-8")
        return None
    except UnicodeDecodeError as e:
        return raw[: e.start].count(b"\n") + 1


CV_OPTIONS = st.fixed_dictionaries({
    "stop_words": st.sampled_from([None, None, "english", ["cat", "alpha"]]),
    "min_df": st.sampled_from([1, 1, 2, 0.0, 0.5, 1.0]),
    "max_df": st.sampled_from([1.0, 1.0, 0.5, 1, 2, 0.0]),
    "max_features": st.sampled_from([None, None, 1, 3]),
    "vocabulary": st.one_of(st.none(), st.none(), st.lists(st.sampled_from(["cat", "sat", "alpha", "beta", "caf\u00e9",
                                                                           "x1", "Upper", "", "zz"]), max_size=5)),
})


def _plain_options(cv):
    """No filter at all: min_df 1 (an int: one document) or 0.0, max_df 1.0 (a float: every document)."""
    min_df, max_df = cv["min_df"], cv["max_df"]
    return (cv["stop_words"] is None and ((min_df == 1 and isinstance(min_df, int)) or min_df == 0.0)
            and (max_df == 1.0 and isinstance(max_df, float)) and cv["max_features"] is None
            and cv["vocabulary"] is None)


@fuzz(450)
@given(raw=text_file(), cv=CV_OPTIONS, gz=st.sampled_from(["plain", "plain", "gz", "gz-damaged"]),
       where=st.integers(0, 10**6))
def test_text_lines(raw, cv, gz, where):
    """A one-document-per-line .txt (or .txt.gz) of random text and bytes, with random vectorizer
    options: a corpus whose rows are the non-blank lines, or an error naming the file (and the line
    of a bad UTF-8 byte)."""
    with scratch() as d:
        path = os.path.join(d, "docs.txt" + ("" if gz == "plain" else ".gz"))
        data = raw if gz == "plain" else gzip.compress(raw)
        if gz == "gz-damaged":
            data = _damage_gzip(data, where % 3, where // 3)
        _write(path, data)
        try:
            plain = gzip.decompress(data) if gz != "plain" else data
        except Exception:  # noqa: BLE001
            plain = None
        c, msg = run_reader("text lines", lambda: C.load_corpus(path, **cv), [path],
                            allow_empty_docs=cv["vocabulary"] is not None)
    bad_line = _utf8_error_line(plain) if plain is not None else None
    if c is None:
        if bad_line is not None:
            assert msg.startswith(f"{path}:{bad_line}: not valid UTF-8"), (msg, bad_line)
        return
    assert plain is not None and bad_line is None
    lines = plain.decode("utf-8").split("\n")
    nonblank = [i for i, ln in enumerate(lines, 1) if ln.strip()]
    assert set(c.doc_ids) <= set(nonblank) and list(c.doc_ids) == sorted(c.doc_ids)
    if cv["vocabulary"] is not None:
        assert list(c.doc_ids) == nonblank and c.vocab == list(cv["vocabulary"])
    if _plain_options(cv):  # no filters: every token counts, and every line with a token is a row
        ntok = {i: len(TOKEN_RE.findall(lines[i - 1].lower())) for i in nonblank}
        assert list(c.doc_ids) == [i for i in nonblank if ntok[i]]
        np.testing.assert_array_equal(np.asarray(c.X.sum(axis=1)).ravel(), [ntok[i] for i in c.doc_ids])


@fuzz(250)
@given(files=st.lists(st.tuples(st.sampled_from(["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.txt", "e.md", "f.TXT",
                                                  "g.txt.gz", "h", "sub/i.txt", ".hidden.txt"]), text_file()),
                      max_size=6),
       stop_words=st.sampled_from([None, "english"]), dir_named_txt=st.booleans())
def test_text_directory(files, stop_words, dir_named_txt):
    """A directory tree of random files: each *.txt is a document; others are ignored."""
    with scratch() as d:
        root = os.path.join(d, "corpus")
        os.makedirs(root)
        if dir_named_txt:
            os.makedirs(os.path.join(root, "folder.txt"))
        content = {}
        for name, raw in files:
            content[name] = raw
            _write(os.path.join(root, name), raw)
        paths = []  # the documented order: recursively, sorted
        for top, dirs, fs in os.walk(root):
            dirs.sort()
            paths += [os.path.join(top, f) for f in sorted(fs) if f.endswith(".txt")]
        txt = [os.path.relpath(p, root) for p in paths]
        c, msg = run_reader("text directory", lambda: C.load_corpus(root, stop_words=stop_words),
                            [root] + paths)
    bad = [(p, _utf8_error_line(content[n])) for n, p in zip(txt, paths) if _utf8_error_line(content[n])]
    if c is None:
        if not txt:
            assert "no .txt files" in msg
        elif bad:
            p, line = bad[0]  # the first file (in reading order) that is not UTF-8
            assert msg.startswith(f"{p}:{line}: not valid UTF-8"), (msg, bad)
        return
    assert not bad and txt
    if stop_words is None:
        ntok = [len(TOKEN_RE.findall(content[n].decode("utf-8").lower())) for n in txt]
        np.testing.assert_array_equal(c.doc_ids, [i for i, k in enumerate(ntok) if k])
        np.testing.assert_array_equal(np.asarray(c.X.sum(axis=1)).ravel(), [k for k in ntok if k])


# =============================================================================== arrays


MATRIX_DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "g", "c8", "c16", "?", ">i4", ">f8"]
MATRIX_VALUES = st.one_of(st.integers(0, 5), st.integers(-3, 9), st.sampled_from(
    [0.5, -0.5, 2.5, float("nan"), float("inf"), -float("inf"), 1e30, 3e38, 1e39, 1e300, -0.0, 2**24 + 1, 2**31,
     2**62]))


def _cast(vals, dtype):
    """vals (Python numbers) as dtype, or None when numpy cannot represent them (e.g. nan as int)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            a = np.array(vals, dtype=object).astype(np.dtype(dtype))
        except (OverflowError, ValueError, TypeError):
            return None
    back = [complex(v) if a.dtype.kind == "c" else (float(v) if a.dtype.kind == "f" else int(v)) for v in a.ravel()]
    # only values that survived the cast unchanged, so the oracle below knows what the matrix holds
    if any(not (b == v or (b != b and v != v)) for b, v in zip(back, np.ravel(np.array(vals, dtype=object)))):
        return None
    return a


def matrix_oracle(cells, shape, *, integer=True, allow_empty_docs=True):
    """cells: {(r, c): exact value (a Python number)} after summing duplicates. Returns the expected
    float32 dense matrix, or None when check_counts must refuse it."""
    if len(shape) != 2 or 0 in shape:
        return None
    want = np.zeros(shape)
    for (r, c), v in cells.items():
        if isinstance(v, complex) or v != v or v in (float("inf"), -float("inf")) or v < 0:
            return None
        if integer and v != int(v):
            return None
        if v > float(np.finfo(np.float32).max):
            return None
        want[r, c] = v
    if not np.any(want):
        return None
    if not allow_empty_docs and np.any(~want.any(axis=1)):
        return None
    return want.astype(np.float32)


@fuzz(600)
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6), dtype=st.sampled_from(MATRIX_DTYPES),
       data=st.data(), as_list=st.booleans(), vocab_len=st.one_of(st.none(), st.integers(0, 7)))
def test_from_matrix_dense(shape, dtype, data, as_list, vocab_len):
    """from_matrix on dense arrays (and nested lists) of any dtype, shape and value: accepted exactly when
    it is a non-empty 2-D matrix of finite non-negative integer counts, and then read exactly."""
    n = int(np.prod(shape))
    vals = data.draw(st.lists(MATRIX_VALUES, min_size=n, max_size=n))
    a = _cast(vals, dtype)
    if a is None:
        a = _cast([abs(int(v)) % (2 if dtype == "?" else 7) if v == v and abs(v) != float("inf") else 0
                   for v in vals], dtype)
    a = a.reshape(shape)
    X = a.tolist() if as_list and a.ndim >= 1 else a
    vocab = None if vocab_len is None else [f"v{i}" for i in range(vocab_len)]
    c, msg = run_reader("from_matrix dense", lambda: C.from_matrix(X, vocab, source="<dense>"), ["<dense>"],
                        allow_empty_docs=True)
    arr = np.asarray(X)  # what the reader sees: a nested list of bools stays bool, of complex stays complex
    want = None
    if arr.ndim == 2 and arr.dtype.kind in "iuf":
        cells = {(r, k): (float(arr[r, k]) if arr.dtype.kind == "f" else int(arr[r, k]))
                 for r in range(arr.shape[0]) for k in range(arr.shape[1]) if arr[r, k] != 0}
        want = matrix_oracle(cells, arr.shape)
        if want is not None and vocab is not None and len(vocab) != arr.shape[1]:
            want = None
    if c is None:
        assert want is None, f"refused a valid matrix: {msg}"
        return
    assert want is not None, f"accepted an invalid {a.dtype} matrix {a!r}"
    np.testing.assert_array_equal(c.X.toarray(), want)
    assert c.vocab == (vocab if vocab is not None else [f"w{i}" for i in range(a.shape[1])])


SPARSE_FORMATS = ["coo", "csr", "csc", "lil", "dok", "bsr", "csr_array", "coo_array"]


@fuzz(600)
@given(n=st.integers(0, 5), m=st.integers(0, 5), dtype=st.sampled_from(["i1", "u1", "i2", "u2", "i4", "i8", "u8", "f4",
                                                                        "f8", "c8", "?"]),
       fmt=st.sampled_from(SPARSE_FORMATS), data=st.data(), integer=st.booleans(), allow_empty=st.booleans())
def test_check_counts_sparse(n, m, dtype, fmt, data, integer, allow_empty):
    """check_counts on sparse matrices of every format; COO entries may repeat (they are summed, exactly,
    never wrapped around in a small integer type)."""
    k = data.draw(st.integers(0, 12)) if n and m else 0
    rows = data.draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=k, max_size=k))
    cols = data.draw(st.lists(st.integers(0, max(m - 1, 0)), min_size=k, max_size=k))
    vals = data.draw(st.lists(MATRIX_VALUES, min_size=k, max_size=k))
    a = _cast(vals, dtype)
    if a is None:
        a = _cast([abs(int(v)) % (2 if dtype == "?" else 7) if v == v and abs(v) != float("inf") else 0
                   for v in vals], dtype)
    coo = sp.coo_matrix((a, (np.array(rows, np.int64), np.array(cols, np.int64))), shape=(n, m), dtype=a.dtype)
    if fmt == "coo":
        M, src = coo, coo
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            M = {"csr_array": lambda: sp.csr_array(coo), "coo_array": lambda: sp.coo_array(coo)}.get(
                fmt, lambda: coo.asformat(fmt))()
        src = sp.coo_matrix(M) if fmt != "coo_array" else coo
    # exact cell sums of what the matrix holds (duplicates of a COO matrix included)
    cells = defaultdict(int)
    kind = a.dtype.kind
    for r, c_, v in zip(src.row, src.col, src.data):
        cells[int(r), int(c_)] += complex(v) if kind == "c" else (float(v) if kind == "f" else int(v))
    want = None if kind in "cb" else matrix_oracle({k_: v for k_, v in cells.items() if v != 0}, (n, m),
                                                  integer=integer, allow_empty_docs=allow_empty)
    RUNS["check_counts sparse"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            X = C.check_counts(M, "<sparse>", integer=integer, allow_empty_docs=allow_empty)
    except CorpusError as e:
        OUTCOMES["check_counts sparse", "error"] += 1
        assert str(e).startswith("<sparse>:"), str(e)
        assert want is None, f"refused valid counts: {e}"
        return
    OUTCOMES["check_counts sparse", "parsed"] += 1
    assert want is not None, f"accepted invalid counts {dict(cells)} ({a.dtype}, integer={integer})"
    assert sp.issparse(X) and X.format == "csr" and X.dtype == np.float32 and X.has_canonical_format
    assert np.all(X.data > 0) and np.all(np.isfinite(X.data))
    np.testing.assert_allclose(X.toarray(), want, rtol=1e-6)
    if max(cells.values(), default=0) < 2**24 and integer:
        np.testing.assert_array_equal(X.toarray(), want)


@fuzz(200)
@given(X=hnp.arrays(np.int64, st.tuples(st.integers(0, 8), st.integers(1, 6)), elements=st.sampled_from([0, 0, 1, 3])),
       ids_seed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_drop_empty(X, ids_seed):
    rng = np.random.default_rng(ids_seed)
    ids = None if ids_seed is None else np.sort(rng.choice(10**6, X.shape[0], replace=False))
    RUNS["drop_empty"] += 1
    keep = X.sum(axis=1) > 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Y, out = C.drop_empty(sp.csr_matrix(X), "<m>", ids)
    except CorpusError as e:
        OUTCOMES["drop_empty", "error"] += 1
        assert not keep.any() and str(e).startswith("<m>: empty corpus")
        return
    OUTCOMES["drop_empty", "parsed"] += 1
    np.testing.assert_array_equal(Y.toarray(), X[keep])
    np.testing.assert_array_equal(out, (np.arange(X.shape[0]) if ids is None else ids)[keep])


@fuzz(200)
@given(X=hnp.arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.sampled_from([0, 1, 2, 5])),
       data=st.data())
def test_remap_columns(X, data):
    """Columns move to the other vocabulary by word; words it lacks are dropped, repeated words summed."""
    V = X.shape[1]
    pool = ["a", "b", "c", "d", "e", "f", "g", "h"]
    vocab_from = data.draw(st.lists(st.sampled_from(pool), min_size=V, max_size=V))
    vocab_to = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=8, unique=True))
    RUNS["remap_columns"] += 1
    OUTCOMES["remap_columns", "parsed"] += 1
    Y = C.remap_columns(sp.csr_matrix(X), vocab_from, vocab_to)
    want = np.zeros((X.shape[0], len(vocab_to)))
    for j, w in enumerate(vocab_from):
        if w in vocab_to:
            want[:, vocab_to.index(w)] += X[:, j]
    assert Y.format == "csr" and Y.dtype == np.float32 and Y.has_canonical_format
    np.testing.assert_array_equal(Y.toarray(), want)


# ======================================================= bugs the properties found (regressions)


@pytest.mark.parametrize("head,line,why", [
    ("1000000000000\n2\n1\n", "1 1 3", ":1: 1000000000000 documents is beyond"),  # was a MemoryError
    ("3\n2\n1\n", "1 1 99999999999999999999", ":4: number out of range"),  # was "malformed" without a reason
])
def test_found_uci_numbers_out_of_range(tmp_path, head, line, why):
    (tmp_path / "vocab.h.txt").write_text("a\nb\n")
    f = tmp_path / "docword.h.txt"
    f.write_text(head + line + "\n")
    with pytest.raises(CorpusError, match=why):
        C.load_corpus(str(f))


def test_found_corrupt_gzip_is_a_corpus_error(tmp_path):
    """A damaged deflate stream raised zlib.error (not an OSError) out of every gzip reader."""
    raw = bytearray(gzip.compress(b"2\n2\n2\n" + b"1 1 1\n2 2 2\n" * 200))
    raw[30] ^= 0xFF
    (tmp_path / "vocab.z.txt").write_text("a\nb\n")
    for name in ("docword.z.txt.gz", "docs.txt.gz"):
        (tmp_path / name).write_bytes(bytes(raw))
        with pytest.raises(CorpusError, match=re.escape(name)):
            C.load_corpus(str(tmp_path / name))


def test_found_uci_header_with_many_documents(tmp_path):
    """D = 2**31 - 1 in the header allocated three arrays of D entries (a 16 GiB MemoryError, or the OOM killer)."""
    (tmp_path / "vocab.h.txt").write_text("a\nb\n")
    (tmp_path / "docword.h.txt").write_text(f"{2**31 - 1}\n2\n2\n2000000000 2 7\n5 1 1\n")
    c = C.load_corpus(str(tmp_path / "docword.h.txt"))
    np.testing.assert_array_equal(c.doc_ids, [4, 1999999999])
    np.testing.assert_array_equal(c.X.toarray(), [[1, 0], [0, 7]])


@pytest.mark.parametrize("fmt", ["csc", "coo"])
def test_found_npz_with_many_empty_documents(tmp_path, fmt):
    """A csc/coo .npz whose shape announces 10**12 documents asked for a 7 TiB index array."""
    M = sp.coo_matrix(([2.0, 1.0], ([5, 10**12 - 1], [0, 1])), shape=(10**12, 2))
    sp.save_npz(tmp_path / "big.npz", M if fmt == "coo" else M.tocsc())
    c = C.load_corpus(str(tmp_path / "big.npz"))
    np.testing.assert_array_equal(c.doc_ids, [5, 10**12 - 1])
    np.testing.assert_array_equal(c.X.toarray(), [[2, 0], [0, 1]])
    bad = sp.coo_matrix(([2.0, -1.0], ([5, 10**12 - 1], [0, 1])), shape=(10**12, 2))
    sp.save_npz(tmp_path / "bad.npz", bad if fmt == "coo" else bad.tocsc())
    with pytest.raises(CorpusError, match=r"bad.npz: document 999999999999, word 1: negative count"):
        C.load_corpus(str(tmp_path / "bad.npz"))


def test_found_npz_with_too_many_unnamed_words(tmp_path):
    """10**12 columns and no vocabulary file: naming them w0, w1, ... never finished."""
    M = sp.csr_matrix(([1.0], ([0], [7])), shape=(1, 10**12))
    sp.save_npz(tmp_path / "wide.npz", M)
    with pytest.raises(CorpusError, match=r"wide.npz: 1000000000000 words and no vocabulary"):
        C.load_corpus(str(tmp_path / "wide.npz"))


@pytest.mark.parametrize("what", ["npy", "raw-member", "encrypted", "zlib", "huge-npy"])
def test_found_damaged_npz_archives(tmp_path, what):
    """Archives that leaked TypeError, AttributeError, RuntimeError, zlib.error and MemoryError."""
    path = tmp_path / "d.npz"
    arrays = _valid_npz_arrays(np.array([[1, 0], [2, 3]] * 50), "csr", "i8")
    if what == "npy":
        np.save(tmp_path / "d.npy", arrays["data"])
        os.replace(tmp_path / "d.npy", path)
    elif what == "raw-member":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("format", b"csr")
    elif what == "encrypted":
        b = bytearray(_npz_bytes(arrays))
        b[6] |= 1
        b[bytes(b).find(b"PK\x01\x02") + 8] |= 1
        path.write_bytes(bytes(b))
    elif what == "zlib":
        b = bytearray(_npz_bytes(arrays, compressed=True))
        start = bytes(b).find(b"data.npy") + len("data.npy")
        for i in range(start + 5, start + 40, 3):
            b[i] ^= 0x5A
        path.write_bytes(bytes(b))
    else:
        header = b"{'descr': '<i8', 'fortran_order': False, 'shape': (10000000000000,), }"
        header += b" " * (118 - len(header)) + b"\n"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("data.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(16))
    with pytest.raises(CorpusError, match="d.npz: not a readable .npz"):
        C.load_corpus(str(path))


def test_found_matrix_dtypes_and_overflows():
    """float16 and big-endian arrays leaked scipy's ValueError; counts beyond float32 became inf; uint8
    duplicates wrapped around."""
    for dtype in (np.float16, ">i4", ">f8"):
        c = C.from_matrix(np.array([[1, 2], [0, 3]], dtype))
        np.testing.assert_array_equal(c.X.toarray(), [[1, 2], [0, 3]])
    with pytest.raises(CorpusError, match=r"<array>: document 1, word 0: count 1e\+39 is too large"):
        C.from_matrix(np.array([[1.0, 0.0], [1e39, 1.0]]))
    with pytest.raises(CorpusError, match="too large"):
        C.from_matrix(sp.coo_matrix(([3e38, 3e38], ([0, 0], [0, 0])), shape=(1, 1)))
    X = C.check_counts(sp.coo_matrix((np.array([200, 100], np.uint8), ([0, 0], [1, 1])), shape=(1, 2)))
    np.testing.assert_array_equal(X.toarray(), [[0, 300]])
