"""Corpus readers: every input becomes a CSR matrix of non-negative integer counts + a vocabulary.

Supported inputs (:func:`load_corpus` picks by path):

* scipy sparse matrices and numpy arrays (:func:`from_matrix`);
* ``.npz``: a scipy ``save_npz`` matrix (vocabulary in ``--vocab FILE``, in ``<stem>.vocab.txt``
  or ``vocab.txt`` next to it, else the words are named ``w0, w1, ...``) or the compact
  ``dpsvi-compact-v1`` layout of ``benchmarks/data/build_pydoc_corpus.py`` (vocabulary inside);
* UCI bag-of-words: ``docword.NAME.txt[.gz]`` + ``vocab.NAME.txt`` (streamed in chunks; a
  ``keep`` mask loads only some documents, so a worker rank holds only its shard);
* a directory of ``.txt`` files (one document each) or one ``.txt`` file with one document per
  line, tokenised by scikit-learn's CountVectorizer (stop words, min_df, max_df).

Bad input raises :class:`CorpusError` naming the file (and line where there is one).
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


class CorpusError(ValueError):
    """Unusable corpus input; the message names the file and, where it can, the line."""


@dataclass
class Corpus:
    X: sp.csr_matrix  # documents x words, float32 integer counts, sorted indices
    vocab: list[str]
    source: str = "<array>"
    #: index of each row in the input (documents dropped as empty are missing)
    doc_ids: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_docs(self) -> int:
        return self.X.shape[0]

    @property
    def n_words(self) -> int:
        return self.X.shape[1]


# ----------------------------------------------------------------------------- validation


#: counts above this become inf in float32
_F32_MAX = float(np.finfo(np.float32).max)


def _num(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def check_counts(X, source: str = "<array>", *, integer: bool = True, allow_empty_docs: bool = True, doc_ids=None):
    """Return X as CSR float32 with sorted, summed indices; raise CorpusError on bad counts.

    ``doc_ids``: the document number of each row, for the messages (default: the row index)."""
    def doc(row):
        return int(doc_ids[row]) if doc_ids is not None else row

    if not sp.issparse(X):
        try:
            X = np.asarray(X)
        except Exception as e:  # noqa: BLE001
            raise CorpusError(f"{source}: not a numeric matrix ({e})") from None
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise CorpusError(f"{source}: counts must be numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise CorpusError(f"{source}: expected a 2-D documents x words matrix, got shape {X.shape}")
        if X.dtype == np.float16:  # scipy.sparse has no float16; float32 holds every value
            X = X.astype(np.float32)
        elif not X.dtype.isnative:  # nor big-endian types
            X = X.astype(X.dtype.newbyteorder("="))
    elif X.dtype.kind in "iu":  # repeated COO entries are summed: not in a small integer type that wraps around
        X = X.astype(np.float64)
    try:
        X = sp.csr_matrix(X)
    except (ValueError, TypeError, OverflowError) as e:
        raise CorpusError(f"{source}: not a usable count matrix ({e})") from None
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CorpusError(f"{source}: empty corpus (shape {X.shape})")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise CorpusError(f"{source}: counts must be real numbers, got dtype {X.dtype}")
    data = X.data
    i = _first(data, lambda c: ~np.isfinite(c))
    if i >= 0:
        raise CorpusError(f"{source}: document {doc(_row_of(X, i))}: count is NaN or infinite")
    i = _argmin(data)
    if i >= 0 and data[i] < 0:
        raise CorpusError(f"{source}: document {doc(_row_of(X, i))}, word {X.indices[i]}: negative count "
                          f"{_num(data[i])}")
    if integer and np.issubdtype(data.dtype, np.floating):
        i = _first(data, lambda c: c != np.round(c))
        if i >= 0:
            raise CorpusError(f"{source}: document {doc(_row_of(X, i))}, word {X.indices[i]}: "
                              f"non-integer count {data[i]}")
    if X.dtype == np.float32 and X.data.dtype.isnative and X.has_canonical_format:
        # already CSR float32 with sorted indices and no duplicates (a saved corpus): nothing to
        # sum, nothing beyond float32 - no copy (the float64 route below held ~3x the corpus, and
        # sorting 24M entries took seconds). Explicit zeros are dropped from a copy only.
        if data.size and not data.all():
            X = X.copy()
            X.eliminate_zeros()
    else:
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        X.sum_duplicates()
        big = np.flatnonzero(X.data > _F32_MAX)
        if big.size:  # float32 would make it inf
            i = big[0]
            raise CorpusError(f"{source}: document {doc(_row_of(X, i))}, word {X.indices[i]}: count {_num(X.data[i])} "
                              f"is too large (float32 holds at most {_F32_MAX:.4g})")
        X = sp.csr_matrix(X, dtype=np.float32)
        X.eliminate_zeros()
        X.sort_indices()
    if X.nnz == 0:
        raise CorpusError(f"{source}: empty corpus: no document has any word")
    if not allow_empty_docs and np.any(np.diff(X.indptr) == 0):
        raise CorpusError(f"{source}: document {doc(int(np.flatnonzero(np.diff(X.indptr) == 0)[0]))} has no words")
    return X


#: entries checked at a time (the checks' temporaries: a few MB, not the size of the corpus)
_CHECK_CHUNK = 1 << 20

#: the largest count :func:`compact_counts` stores in 16 bits
COMPACT_MAX = np.iinfo(np.uint16).max


def compact_counts(X):
    """X (CSR float32, as :func:`check_counts` returns it) with its counts stored as uint16 when
    every one is an integer of at most :data:`COMPACT_MAX` - exact, and the training documents take
    6 instead of 8 bytes an entry (90k documents of the V 50k corpus: 164 -> 123 MB, the largest
    part of `dpsgd lda`'s memory); otherwise X as it is. The matrix is changed in place. DPSVI's
    training converts one minibatch's counts at a time (:class:`.svi.SVIAlgorithm`)."""
    d = X.data
    if d.dtype != np.float32 or d.size == 0 or not fits_compact(d):
        return X
    X.data = d.astype(np.uint16)
    return X


def fits_compact(counts: np.ndarray) -> bool:
    """Every count an integer from 0 to :data:`COMPACT_MAX` (NaN is not): what uint16 holds
    exactly. A chunk at a time."""
    if counts.dtype.kind == "f":
        return _first(counts, lambda c: ~((c >= 0) & (c <= COMPACT_MAX)) | (c != np.round(c))) < 0
    return _first(counts, lambda c: (c < 0) | (c > COMPACT_MAX)) < 0


def _first(data: np.ndarray, bad) -> int:
    """Index of the first entry of ``data`` where ``bad`` (of a chunk: a bool array) holds, or -1."""
    for lo in range(0, data.size, _CHECK_CHUNK):
        hit = np.flatnonzero(bad(data[lo:lo + _CHECK_CHUNK]))
        if hit.size:
            return lo + int(hit[0])
    return -1


def _argmin(data: np.ndarray) -> int:
    """``np.argmin(data)`` (the first smallest entry; -1 when empty), a chunk at a time."""
    best = -1
    for lo in range(0, data.size, _CHECK_CHUNK):
        c = data[lo:lo + _CHECK_CHUNK]
        j = int(np.argmin(c))
        if best < 0 or c[j] < data[best]:
            best = lo + j
    return best


def _row_of(X, i) -> int:
    return int(np.searchsorted(X.indptr, i, side="right") - 1)


def drop_empty(X, source: str, doc_ids=None, warn: bool = True):
    """Remove documents without words (with a warning naming how many). Returns (X, doc_ids)."""
    lengths = np.diff(X.indptr)
    empty = lengths == 0
    ids = np.arange(X.shape[0]) if doc_ids is None else np.asarray(doc_ids)
    if empty.any():
        if warn:
            first = ids[empty][:5].tolist()
            warnings.warn(f"{source}: skipped {int(empty.sum())} document(s) with no words "
                          f"(after the vocabulary filters), e.g. {first}", stacklevel=3)
        X = X[~empty]
        ids = ids[~empty]
    if X.shape[0] == 0:
        raise CorpusError(f"{source}: empty corpus: every document is empty")
    return X, ids


#: without a vocabulary the words are named w0, w1, ...; beyond this many that is surely a mistake
MAX_NUMBERED_WORDS = 2**24


def from_matrix(X, vocab=None, source: str = "<array>", *, doc_ids=None) -> Corpus:
    """A corpus from a matrix; ``doc_ids`` numbers its rows (default 0, 1, ...)."""
    X = check_counts(X, source, doc_ids=doc_ids)
    vocab = check_vocab(vocab, X.shape[1], source)
    return Corpus(X, vocab, source, np.arange(X.shape[0]) if doc_ids is None else np.asarray(doc_ids))


# ----------------------------------------------------------------------------- text files


def _decode(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{path}:{line}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                          "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise CorpusError(f"{path}: not a valid gzip file ({e})") from None
    return raw


def _vectorize(texts, names, source, stop_words="english", min_df=1, max_df=1.0, max_features=None,
               vocabulary=None):
    from sklearn.feature_extraction.text import CountVectorizer

    if not texts:
        raise CorpusError(f"{source}: empty corpus: no documents")
    if vocabulary is not None:  # a fixed vocabulary: no document-frequency filters
        min_df, max_df, max_features = 1, 1.0, None
    cv = CountVectorizer(stop_words=stop_words, min_df=min_df, max_df=max_df, max_features=max_features,
                         vocabulary=vocabulary, dtype=np.float32)
    try:
        X = cv.fit_transform(texts)
    except ValueError as e:  # "empty vocabulary; perhaps the documents only contain stop words", bad df
        raise CorpusError(f"{source}: {e}") from None
    X = check_counts(X, source)
    if vocabulary is None:
        X, ids = drop_empty(X, source, names)
    else:  # inference: keep every document, even one without known words
        ids = np.asarray(names)
    return Corpus(X, list(cv.get_feature_names_out()) if vocabulary is None else list(vocabulary), source, ids)


def read_text_lines(path: str, **cv) -> Corpus:
    """One document per line (blank lines are skipped; doc_ids are 1-based line numbers)."""
    text = _decode(_read_bytes(path), path)
    lines = text.split("\n")
    texts, names = [], []
    for i, line in enumerate(lines, 1):
        if line.strip():
            texts.append(line)
            names.append(i)
    if not texts:
        raise CorpusError(f"{path}: empty corpus: no non-blank line")
    return _vectorize(texts, names, path, **cv)


def read_text_dir(path: str, **cv) -> Corpus:
    """Every ``*.txt`` file under ``path`` (recursively, sorted) is one document."""
    files = []
    for root, dirs, fs in os.walk(path):
        dirs.sort()
        files += [os.path.join(root, f) for f in sorted(fs) if f.endswith(".txt")]
    if not files:
        raise CorpusError(f"{path}: no .txt files in this directory")
    texts = [_decode(_read_bytes(f), f) for f in files]
    c = _vectorize(texts, np.arange(len(files)), path, **cv)
    c.doc_ids = np.asarray(c.doc_ids)
    return c


# ----------------------------------------------------------------------------- UCI bag of words


def _open_text(path):
    try:
        return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    except OSError as e:
        raise CorpusError(f"{path}: cannot read: {e.strerror or e}") from None


def read_vocab(path: str) -> list[str]:
    words = _decode(_read_bytes(path), path).split("\n")
    if words and words[-1] == "":
        words.pop()
    for i, w in enumerate(words, 1):
        if not w.strip():
            raise CorpusError(f"{path}:{i}: empty word in the vocabulary")
    if not words:
        raise CorpusError(f"{path}: empty vocabulary")
    return [w.strip() for w in words]


#: the largest number of documents, words or non-zeros a UCI header may announce (int32 indices)
MAX_UCI_COUNT = 2**31 - 1


def uci_header(path: str) -> tuple[int, int, int]:
    """(D, W, NNZ) from the first three lines of a UCI docword file."""
    with _open_text(path) as f:
        vals = []
        for lineno in (1, 2, 3):
            try:
                line = f.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise CorpusError(f"{path}: cannot read: {e}") from None
            try:
                v = int(line.decode("ascii").strip())
                if v < 0:
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                what = ("number of documents", "number of words", "number of non-zeros")[lineno - 1]
                raise CorpusError(f"{path}:{lineno}: expected the {what} (an integer >= 0), got "
                                  f"{line[:40].decode('ascii', 'replace').strip()!r}") from None
            vals.append(v)
    if vals[0] == 0 or vals[2] == 0:
        raise CorpusError(f"{path}: empty corpus (header says {vals[0]} documents, {vals[2]} non-zeros)")
    for lineno, (v, what) in enumerate(zip(vals, ("documents", "words", "non-zeros")), 1):
        if v > MAX_UCI_COUNT:
            raise CorpusError(f"{path}:{lineno}: {v} {what} is beyond what this reader handles "
                              f"({MAX_UCI_COUNT}); is the header right?")
    return vals[0], vals[1], vals[2]


def _check_uci_block(arr, lineno0, path, D, W):
    """Validate parsed (doc, word, count) rows; raise naming the first bad line."""
    doc, word, cnt = arr[:, 0], arr[:, 1], arr[:, 2]
    bad = (doc < 1) | (doc > D) | (word < 1) | (word > W) | (cnt < 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        d, w, c = (int(v) for v in arr[i])
        if not 1 <= d <= D:
            why = f"document id {d} outside 1..{D}"
        elif not 1 <= w <= W:
            why = f"word id {w} outside 1..{W} (the vocabulary size)"
        else:
            why = f"count {c} is not >= 1"
        raise CorpusError(f"{path}:{lineno0 + i}: {why}")


def _parse_uci_lines(lines: list[bytes], lineno0: int, path: str):
    try:
        flat = np.array(b" ".join(lines).split(), dtype=np.int64)
        if flat.size == 3 * len(lines):
            return flat.reshape(-1, 3)
    except (ValueError, OverflowError):
        pass
    # find the offending line
    for i, line in enumerate(lines):
        parts = line.split()
        try:
            if len(parts) != 3:
                raise ValueError
            vals = [int(p) for p in parts]
        except ValueError:
            text = line[:60].decode("utf-8", "replace").strip()
            raise CorpusError(f"{path}:{lineno0 + i}: expected 'docID wordID count' (three integers), "
                              f"got {text!r}") from None
        if any(abs(v) >= 2**63 for v in vals):
            raise CorpusError(f"{path}:{lineno0 + i}: number out of range in {line[:60].decode('ascii', 'replace').strip()!r}")
    raise CorpusError(f"{path}:{lineno0}: malformed lines")  # pragma: no cover


def read_uci(docword: str, vocab_path: str | None = None, keep=None, chunk_lines: int = 1 << 18,
             compact: bool = False) -> Corpus:
    """Stream a UCI bag-of-words file.

    ``keep``: optional boolean array over the D documents (0-based): only those rows are kept
    (in document-id order), so a rank holds only its shard; the file is read in chunks.
    Documents without words are skipped (``doc_ids`` tells which ids the rows are).
    ``compact``: the counts as uint16 when every one fits (:func:`compact_counts`, kept so while
    reading: 2 bytes a line less), else float32.
    """
    if vocab_path is None:
        vocab_path = uci_vocab_path(docword)
    vocab = read_vocab(vocab_path)
    D, W, NNZ = uci_header(docword)
    if W != len(vocab):
        raise CorpusError(f"{docword}:2: header says {W} words, {vocab_path} has {len(vocab)}")
    if keep is not None:
        keep = np.asarray(keep, bool)
        if keep.shape != (D,):
            raise ValueError(f"keep must have one entry per document ({D}), got {keep.shape}")
    kept = _Triples(NNZ, max(D, W), compact)
    n_lines = 0
    with _open_text(docword) as f:
        try:
            for _ in range(3):
                f.readline()
            lineno = 4
            for data in prefetched(_whole_lines(f, chunk_lines * 12)):  # inflated while the last is parsed
                rows, lines = _uci_block(data, lineno, docword, D, W, keep, kept)
                n_lines += rows
                lineno += lines
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise CorpusError(f"{docword}: cannot read: {e}") from None
    if n_lines != NNZ:
        warnings.warn(f"{docword}: header says {NNZ} non-zeros, the file has {n_lines} lines", stacklevel=2)
    if n_lines == 0:
        raise CorpusError(f"{docword}: empty corpus: no 'docID wordID count' line")
    d, w, c = kept.arrays()
    w -= 1  # 0-based word ids (the arrays are this reader's own)
    if d is None:
        # the lines came document by document, as in the UCI files: the CSR rows are the runs of
        # equal ids, and the arrays read are its indices and counts (no COO copy of them)
        run_docs, indptr = kept.runs()
        used = run_docs.astype(np.int64) - 1
        X = sp.csr_matrix((c, w, indptr), shape=(used.size, W))
        if not X.has_canonical_format:  # a word twice in a document, or its words out of order
            X = X.astype(np.float32)  # (summed in 16 bits, counts could wrap around)
            X.sum_duplicates()
    else:
        # a row for each document that has a line; the header may announce up to 2**31 - 1
        # documents, so a table over all of them only when it is no bigger than the lines read
        # (else sort the ids)
        if D <= 2 * d.size + (1 << 16):
            seen = np.zeros(D, bool)
            seen[d - 1] = True
            used = np.flatnonzero(seen)
            rows = (np.cumsum(seen) - 1)[d - 1]
        else:
            used, rows = np.unique(d - 1, return_inverse=True)
        X = sp.csr_matrix((c, (rows.ravel(), w)), shape=(used.size, W), dtype=np.float32)
        X.sum_duplicates()
        X.sort_indices()
    if compact:
        X = compact_counts(X)
    elif X.dtype != np.float32:
        X = X.astype(np.float32)
    X, kept_ids = drop_empty(X, docword, used, warn=False)
    return Corpus(X, vocab, docword, kept_ids)


class _Triples:
    """The (document, word, count) lines kept so far, in arrays that grow as needed: 32-bit word
    ids and float32 counts (``compact``: uint16 while every count fits, as
    :func:`compact_counts` stores them). Documents: while the lines come document by document (as
    in the UCI files) only where each document's lines start; per line (32 bits) from the first
    line out of that order on. 6-12 bytes a line (lists of int64 blocks and their concatenation held
    24 and then twice that: a 24M-line UCI file peaked at 2.0 GB to build a 192 MB matrix)."""

    def __init__(self, expected: int, largest_id: int, compact: bool = False):
        self.n = 0
        self.ids = np.int32 if largest_id < 2**31 else np.int64
        # the header's count of lines, within reason (an absurd one only makes the arrays grow)
        cap = int(min(max(expected, 1), 1 << 27))
        self.w = np.empty(cap, self.ids)
        self.c = np.empty(cap, np.uint16 if compact else np.float32)
        self.d = None  # per-line document ids, once a line came out of document order
        self.run_docs, self.run_starts = [], []  # until then: each document's id and first line
        self.last_doc = -1

    def add(self, arr) -> None:
        """Append the rows of an int64 (lines x 3) array."""
        m = arr.shape[0]
        if m == 0:
            return
        if self.n + m > self.w.size:
            cap = max(2 * self.w.size, self.n + m)
            for name in ("d", "w", "c"):
                old = getattr(self, name)
                if old is not None:
                    new = np.empty(cap, old.dtype)
                    new[:self.n] = old[:self.n]
                    setattr(self, name, new)
        docs, counts = arr[:, 0], arr[:, 2]
        if self.d is None:
            if docs[0] >= self.last_doc and not np.any(docs[1:] < docs[:-1]):
                starts = np.flatnonzero(docs[1:] != docs[:-1]) + 1
                if docs[0] != self.last_doc:
                    starts = np.r_[0, starts]
                self.run_docs.append(docs[starts].astype(self.ids))
                self.run_starts.append(self.n + starts)
                self.last_doc = int(docs[-1])
            else:  # out of document order: every line's document from now on
                self.d = np.empty(self.w.size, self.ids)
                run_docs, run_starts = self.runs()
                self.d[:self.n] = np.repeat(run_docs, np.diff(run_starts))
                self.run_docs, self.run_starts = [], []
        if self.d is not None:
            self.d[self.n:self.n + m] = docs
        if self.c.dtype == np.uint16 and not fits_compact(counts):
            self.c = self.c.astype(np.float32)  # (the counts kept so far stay exact)
        self.w[self.n:self.n + m] = arr[:, 1]
        self.c[self.n:self.n + m] = counts
        self.n += m

    def runs(self):
        """(document ids, first lines + the end) while the lines came document by document."""
        docs = np.concatenate(self.run_docs) if self.run_docs else np.zeros(0, self.ids)
        starts = np.concatenate(self.run_starts + [np.array([self.n])]).astype(np.int64)
        return docs, starts

    def arrays(self):
        """(document ids per line, or None while they came in document order; word ids; counts):
        views of the first ``n`` entries (the pages of the rest were never written, so they hold
        no memory)."""
        return (None if self.d is None else self.d[:self.n]), self.w[:self.n], self.c[:self.n]


def prefetched(items):
    """The items of the iterable ``items``, each made by a background thread while the caller
    works on the one before: for blocks read from a compressed file, which zlib inflates without
    the GIL, beside work on the previous block that runs without it too (compiled kernels). An
    exception comes where its item would have."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(items)
    end = object()
    with ThreadPoolExecutor(1, thread_name_prefix="dpsvi-read") as pool:
        nxt = pool.submit(next, it, end)
        while True:
            item = nxt.result()
            if item is end:
                return
            nxt = pool.submit(next, it, end)
            yield item


def _whole_lines(f, block_bytes: int):
    """Blocks of whole lines (the last may lack its newline) read from the binary file ``f``."""
    carry = b""
    while True:
        block = f.read(block_bytes)
        if not block:
            if carry:
                yield carry
            return
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        carry = data[cut + 1:]
        yield data[:cut + 1]


def _uci_block(data: bytes, lineno: int, path: str, D: int, W: int, keep, kept: "_Triples"):
    """Parse, check and collect the lines in ``data`` (the first is line ``lineno``).
    Returns (triples, lines): the fast path (:mod:`.uci_parse`) when it accepts every line and
    there is no blank one, else the general path, which names the file and line of an error."""
    from .uci_parse import parse_triples

    out = np.empty((data.count(b"\n") + 1, 3), np.int64)
    rows, lines, bad = parse_triples(np.frombuffer(data, np.uint8), out)
    if bad < 0 and rows == lines:
        arr = out[:rows]
        _check_uci_block(arr, lineno, path, D, W)
        _collect(arr, keep, kept)
        return rows, lines
    lines = [ln + b"\n" for ln in data.split(b"\n")]  # what readlines() gives: split at \n only
    if data.endswith(b"\n"):
        lines.pop()
    else:
        lines[-1] = lines[-1][:-1]
    # blank lines (e.g. a trailing one) are ignored, but line numbers still count them
    nonblank = [(i, ln) for i, ln in enumerate(lines) if ln.strip()]
    if len(nonblank) != len(lines):
        for i, ln in nonblank:
            arr = _parse_uci_lines([ln], lineno + i, path)
            _check_uci_block(arr, lineno + i, path, D, W)
            _collect(arr, keep, kept)
    else:
        arr = _parse_uci_lines(lines, lineno, path)
        _check_uci_block(arr, lineno, path, D, W)
        _collect(arr, keep, kept)
    return len(nonblank), len(lines)


def _collect(arr, keep, kept: "_Triples"):
    if keep is not None:
        arr = arr[keep[arr[:, 0] - 1]]
    kept.add(arr)


def uci_vocab_path(docword: str) -> str:
    d, name = os.path.split(docword)
    base = name[:-3] if name.endswith(".gz") else name
    cand = os.path.join(d, base.replace("docword", "vocab", 1))
    if not os.path.exists(cand):
        raise CorpusError(f"{docword}: no vocabulary file {cand} next to it (pass --vocab FILE)")
    return cand


def is_uci(path: str) -> bool:
    return os.path.basename(path).startswith("docword.") and path.endswith((".txt", ".txt.gz"))


# ----------------------------------------------------------------------------- npz


def read_npz(path: str, vocab_path: str | None = None) -> Corpus:
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not a .npz archive")
        with z:
            arrays = {}
            for k in z.files:
                arrays[k] = z[k]
                if not isinstance(arrays[k], np.ndarray):
                    raise ValueError(f"member {k!r} is not a .npy array")
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy raise a dozen kinds on a damaged archive
        raise CorpusError(f"{path}: not a readable .npz file ({e or type(e).__name__})") from None
    if "format" in arrays and str(arrays["format"]) == "dpsvi-compact-v1":
        try:
            X, vocab = _from_compact(arrays)
        except (KeyError, ValueError, TypeError, IndexError, OverflowError, MemoryError) as e:
            raise CorpusError(f"{path}: damaged dpsvi-compact-v1 file ({e})") from None
    else:
        try:
            X = _sparse_from_arrays(arrays)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError) as e:
            raise CorpusError(f"{path}: not a scipy sparse matrix saved with scipy.sparse.save_npz ({e})") from None
        vocab_path = npz_vocab_path(path, vocab_path)
        vocab = read_vocab(vocab_path) if vocab_path is not None else None
    doc_ids = None
    if X.format != "csr" and X.shape[0] > 2 * X.nnz + (1 << 16):
        # csc, coo: the shape may announce far more documents than have words (a CSR matrix would
        # need an index over all of them): keep only the rows that have entries
        X = X.tocoo()
        if X.nnz == 0:
            raise CorpusError(f"{path}: empty corpus: no document has any word")
        doc_ids, rows = np.unique(X.row, return_inverse=True)
        X = sp.coo_matrix((X.data, (rows.ravel(), X.col)), shape=(doc_ids.size, X.shape[1]))
    c = from_matrix(X, vocab, path, doc_ids=doc_ids)
    c.X, c.doc_ids = drop_empty(c.X, path, c.doc_ids)
    return c


def npz_vocab_path(path: str, vocab_path: str | None = None) -> str | None:
    """The vocabulary file of a scipy ``.npz`` corpus: ``vocab_path``, else ``<stem>.vocab.txt`` or
    ``vocab.txt`` next to it, else None (the words are numbered)."""
    if vocab_path is not None:
        return vocab_path
    for cand in (path[:-4] + ".vocab.txt", os.path.join(os.path.dirname(path), "vocab.txt")):
        if os.path.exists(cand):
            return cand
    return None


def check_vocab(vocab, n_words: int, source: str) -> list[str]:
    """The vocabulary of a matrix of ``n_words`` columns (None: w0, w1, ...), checked."""
    if vocab is None:
        if n_words > MAX_NUMBERED_WORDS:
            raise CorpusError(f"{source}: {n_words} words and no vocabulary (unnamed words are numbered w0, w1, "
                              f"... only up to {MAX_NUMBERED_WORDS}); give the vocabulary, e.g. --vocab FILE")
        vocab = [f"w{i}" for i in range(n_words)]
    vocab = [str(v) for v in vocab]
    if len(vocab) != n_words:
        raise CorpusError(f"{source}: {n_words} words in the matrix but {len(vocab)} in the vocabulary")
    return vocab


def _sparse_from_arrays(a):
    """The matrix of a ``scipy.sparse.save_npz`` file from its arrays (csr, csc or coo), checked."""
    fmt = a.get("format")
    if fmt is None or fmt.dtype.kind not in "SU" or fmt.ndim != 0:
        raise ValueError("no 'format' entry naming the sparse format")
    fmt = fmt.item().decode("ascii", "replace") if fmt.dtype.kind == "S" else str(fmt.item())
    shape = a["shape"]
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise ValueError(f"shape must be two integers >= 0, got {shape.tolist()}")
    shape = (int(shape[0]), int(shape[1]))
    if fmt in ("csr", "csc"):
        cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
        M = cls((a["data"], a["indices"], a["indptr"]), shape=shape)
        M.check_format(full_check=True)
        return M
    if fmt == "coo":
        return sp.coo_matrix((a["data"], (a["row"], a["col"])), shape=shape)
    raise ValueError(f"unsupported sparse format {fmt!r} (csr, csc or coo)")


def _int_array(a, key, ndim):
    x = a[key]
    if x.dtype.kind not in "iu" or x.ndim != ndim:
        raise ValueError(f"'{key}' must be a {ndim}-D integer array, got {x.dtype} with shape {x.shape}")
    return x.astype(np.int64)


def _from_compact(a):
    shape = _int_array(a, "shape", 1)
    if shape.size != 2 or (shape < 0).any():
        raise ValueError(f"'shape' must be two integers >= 0, got {shape.tolist()}")
    n, V = (int(v) for v in shape)
    lengths = _int_array(a, "lengths", 1)
    if lengths.size != n or (lengths < 0).any():
        raise ValueError("inconsistent lengths")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    delta = _int_array(a, "word_delta", 1)
    counts = a["counts"]
    if delta.size != indptr[-1] or counts.ndim != 1 or counts.size != delta.size or counts.dtype.kind not in "iuf":
        raise ValueError("inconsistent lengths")
    # undo the per-document delta coding: cumulative sum restarted at every document
    cs = np.cumsum(delta)
    starts = indptr[:-1][lengths > 0]
    base = np.zeros_like(delta)
    base[starts] = cs[starts] - delta[starts]
    np.maximum.accumulate(base, out=base)  # cs is increasing, so is the base of each document
    indices = cs - base
    if indices.size and (indices.min() < 0 or indices.max() >= V):
        raise ValueError(f"word index outside 0..{V - 1}")
    X = sp.csr_matrix((counts.astype(np.float64), indices, indptr), shape=(n, V))
    X.check_format(full_check=True)
    raw = a["vocab_utf8"]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError("'vocab_utf8' must be a 1-D uint8 array")
    vocab = bytes(raw).decode("utf-8").split("\n")
    return X, vocab


def remap_columns(X, vocab_from: list[str], vocab_to: list[str]):
    """Re-index the columns of X from one vocabulary to another by word; unknown words are dropped."""
    where = {w: i for i, w in enumerate(vocab_to)}
    m = np.array([where.get(w, -1) for w in vocab_from], np.int64)
    X = sp.coo_matrix(X)
    ok = m[X.col] >= 0
    Y = sp.csr_matrix((X.data[ok], (X.row[ok], m[X.col[ok]])), shape=(X.shape[0], len(vocab_to)), dtype=np.float32)
    Y.sum_duplicates()
    Y.sort_indices()
    return Y


# ----------------------------------------------------------------------------- dispatch


def load_corpus(path: str, *, vocab: str | None = None, stop_words="english", min_df=1, max_df=1.0,
                max_features=None, keep=None, vocabulary=None) -> Corpus:
    """Read any supported corpus (see the module docstring). ``keep`` applies to UCI only;
    ``vocabulary`` (a list of words) fixes the vocabulary of text input (e.g. a fitted model's)."""
    if not os.path.exists(path):
        raise CorpusError(f"{path}: no such file or directory")
    cv = dict(stop_words=stop_words, min_df=min_df, max_df=max_df, max_features=max_features,
              vocabulary=vocabulary)
    if os.path.isdir(path):
        uci = sorted(f for f in os.listdir(path) if is_uci(f))
        if uci:
            if len(uci) > 1:
                raise CorpusError(f"{path}: several UCI docword files ({', '.join(uci)}); name one")
            return read_uci(os.path.join(path, uci[0]), vocab, keep=keep)
        return read_text_dir(path, **cv)
    if is_uci(path):
        return read_uci(path, vocab, keep=keep)
    if path.endswith(".npz"):
        return read_npz(path, vocab)
    if path.endswith((".txt", ".txt.gz")):
        return read_text_lines(path, **cv)
    raise CorpusError(f"{path}: unknown corpus format (expected .npz, docword.*.txt[.gz], a .txt file "
                      "with one document per line, or a directory of .txt files)")


# ----------------------------------------------------------------------------- synthetic


def synthetic_lda(n_docs: int, n_words: int, n_topics: int, doc_length: int = 50, alpha: float = 0.1,
                  eta: float = 0.01, seed: int = 0):
    """A corpus drawn from the LDA generative model. Returns (X CSR float32, beta_true K x V).

    Topics are Dirichlet(eta) draws (sparse for small eta); document lengths are Poisson(doc_length)
    (at least 1); theta_d ~ Dirichlet(alpha).
    """
    rng = np.random.default_rng(seed)
    beta = rng.dirichlet(np.full(n_words, eta), n_topics)
    theta = rng.dirichlet(np.full(n_topics, alpha), n_docs)
    lengths = np.maximum(1, rng.poisson(doc_length, n_docs))
    # tokens per document and topic, then each topic's tokens drawn from its word distribution at
    # once: the same distribution as drawing every token's topic and word in turn, in O(tokens)
    counts = np.stack([rng.multinomial(n, t / t.sum()) for n, t in zip(lengths, theta)])
    rows, cols = [], []
    docs = np.arange(n_docs)
    for k in range(n_topics):
        c = counts[:, k]
        rows.append(np.repeat(docs, c))
        cols.append(rng.choice(n_words, int(c.sum()), p=beta[k] / beta[k].sum()))
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    X = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(n_docs, n_words))
    X.sum_duplicates()
    X.sort_indices()
    return X, beta
