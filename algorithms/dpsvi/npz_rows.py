"""Some documents of a scipy ``save_npz`` CSR corpus without the whole matrix in memory.

Under ``mpiexec`` every worker rank trains on its shard of the documents (a random subset, spread
over the file). :func:`corpus.read_npz` would load all of them on every rank - the whole CSR
matrix, held next to the shard until it is dropped, on each of N ranks. :class:`NpzRows` reads the
``indptr`` array (one integer a document), then streams the compressed ``data`` and ``indices``
members in blocks and keeps only the requested rows: a rank's peak holds its shard and one block.

It gives exactly what ``read_npz(path).X[ids]`` gives (the same documents, numbered the same way:
the rows with at least one non-zero count, in file order; sorted and summed indices), with the
counts as uint16 when every one read fits in 16 bits (:func:`corpus.compact_counts`: 6 instead of
8 bytes an entry), float32 otherwise. Anything unusual - a damaged archive, a bad count, an index out of range, another sparse
format - is left to :func:`corpus.read_npz`, which reads the whole file and raises its message
(:meth:`NpzRows.open` returns None where ``read_npz`` is the reader to use).
"""

from __future__ import annotations

import zipfile

import numpy as np
import scipy.sparse as sp
from numba import njit

from .corpus import COMPACT_MAX, CorpusError, check_counts, compact_counts, fits_compact

#: elements of ``data`` / ``indices`` read per block (the temporaries of a block: ~25 MB)
BLOCK = 1 << 20


def _member(zf: zipfile.ZipFile, name: str):
    """(open stream positioned at the array's bytes, shape, dtype) of ``name``.npy in the archive."""
    f = zf.open(name + ".npy")
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise ValueError("object array")
    return f, shape, dtype


def _blocks(f, dtype, n: int, block: int):
    """The ``n`` elements of an open member, ``block`` at a time: (start, array) pairs."""
    pos = 0
    while pos < n:
        k = min(block, n - pos)
        raw = f.read(k * dtype.itemsize)
        if len(raw) != k * dtype.itemsize:
            raise ValueError("truncated member")
        yield pos, np.frombuffer(raw, dtype)
        pos += k


class NpzRows:
    """The non-empty documents of a CSR ``.npz`` (count ``n_docs``), read by row on demand."""

    def __init__(self, path: str, shape, indptr: np.ndarray, data_dtype, index_dtype, block: int = BLOCK,
                 rows: np.ndarray | None = None, prefetch=None):
        self.path = path
        self.shape = shape
        self.indptr = indptr
        self.data_dtype = data_dtype
        self.index_dtype = index_dtype
        self.block = int(block)
        #: (ids, CSR) read during the scan (see :meth:`open`), returned by :meth:`csr` for those ids
        self.prefetched = None
        if rows is None:
            # until the scan has counted the non-zeros, guess that every row with entries is a document
            guess = _rows_with_entries(indptr)
            want = None
            ids = np.asarray(prefetch(int(guess.size)), np.int64) if prefetch is not None and guess.size else None
            if ids is not None and ids.size:
                want = self._row_set(ids, guess[ids])
            rows = np.flatnonzero(self._nonzeros_per_row(want) > 0)
            if want is not None and np.array_equal(rows, guess):  # the guess was right: the rows are read
                self.prefetched = (want.ids, want.matrix(shape[1], path))
        #: file row of each document (rows with a non-zero count); given: another process's scan
        self.rows = rows

    @classmethod
    def open(cls, path: str, block: int = BLOCK, prefetch=None) -> "NpzRows | None":
        """The reader of ``path`` if it is a well-formed CSR ``save_npz`` file whose counts pass the
        checks of :func:`corpus.check_counts`; else None (``read_npz`` then reads it and reports).
        Finding the documents decompresses the whole file once (checking every count and index).

        ``prefetch``: a function of the number of documents that returns the ids of documents to
        read in that same pass (rank 0's held-out documents, whose ids follow from the count): the
        count is guessed from ``indptr`` (rows with entries) and the rows read are kept, for
        :meth:`csr`, only if the scan confirms it (no row of explicit zeros only). One pass over the
        file instead of two (100k documents, V 50k: 0.5-1.2 s of reading less on rank 0)."""
        head = cls._header(path)
        if head is None:
            return None
        try:
            r = cls(path, *head, block, prefetch=prefetch)
        except (ValueError, CorpusError):  # a bad count or index: read_npz names the document
            return None
        if r.rows.size == 0:
            return None
        return r

    @classmethod
    def read_groups(cls, path: str, groups) -> "tuple[NpzRows, list[tuple[np.ndarray, sp.csr_matrix]]] | None":
        """One process, which needs every document: the reader and, for each group of documents
        ``groups(n_docs)`` returns (e.g. the held-out and the training ids), (its ids, its CSR). Each
        member of the file is decompressed once, whole, and the groups' rows copied out of it before
        the next: the peak holds the groups and one member (100k documents, V 50k: the 96 MB
        ``indices`` besides the 191 MB corpus) instead of the whole matrix next to its rows'
        copy; the counts are uint16 when all of the file's fit in 16 bits (the training rows of
        that corpus: 123 instead of 164 MB). None (``read_npz`` then reads it and reports) for
        anything :meth:`open` would not accept, and for explicit zeros (which would renumber the
        documents)."""
        head = cls._header(path)
        if head is None:
            return None
        shape, indptr, ddt, idt = head
        rows = _rows_with_entries(indptr)
        if rows.size == 0:
            return None
        r = cls(path, *head, rows=rows)
        sets = [r._row_set(ids, rows[ids]) for ids in (np.asarray(g, np.int64) for g in groups(int(rows.size)))]
        try:
            with zipfile.ZipFile(path) as zf:
                for name in ("data", "indices"):
                    with zf.open(name + ".npy") as f:
                        member = np.lib.format.read_array(f, allow_pickle=False)
                    if member.shape != (int(indptr[-1]),):
                        return None
                    largest = 0.0
                    for lo in range(0, member.size, BLOCK):
                        piece = member[lo:lo + BLOCK]
                        if name == "data":
                            largest = max(largest, _check_counts_block(piece))
                            if not piece.all():
                                return None  # explicit zeros: read_npz numbers the documents
                        else:
                            _check_index_block(piece, shape[1])
                    if name == "data" and not (member.size and largest <= COMPACT_MAX):
                        for want in sets:
                            want.widen()
                    for want in sets:
                        want.gather(name, member, indptr)
                    del member
        except (ValueError, OSError, zipfile.BadZipFile, EOFError):  # read_npz says what is wrong
            return None
        try:
            return r, [(want.ids, want.matrix(shape[1], path) if want.ids.size
                        else sp.csr_matrix((0, shape[1]), dtype=np.float32)) for want in sets]
        except CorpusError:
            return None

    @classmethod
    def open_shared(cls, path: str, block: int = BLOCK, prefetch=None) -> "NpzRows | None":
        """:meth:`open` under mpiexec, every rank calling it: rank 0 scans the file and sends the
        documents (or that it does not accept the file) to the others, which read only the small
        ``indptr`` member - each rank decompresses the file once, for its own rows, instead of twice
        (100k documents, V 50k: the scan is 0.45 s of decompression and 0.13 s of checks a rank).

        ``prefetch`` (a function of the number of documents: the ids of this rank's documents, see
        :meth:`open`): every rank reads its documents while rank 0 scans - rank 0 in its scan, the
        others in a pass of their own, numbering the documents as the rows with entries - and keeps
        them if rank 0's scan confirms that numbering, so no rank waits for the scan before it
        reads. In one process: :meth:`open`."""
        from dpsgd.runner import broadcast_from_root, get_comm

        comm = get_comm()
        if comm is None:
            return cls.open(path, block, prefetch)
        root = comm.Get_rank() == 0
        r = cls.open(path, block, prefetch) if root else None
        head = guess = early = None
        if not root:
            head = cls._header(path)
            if head is not None and prefetch is not None:
                guess, early = cls._read_guessed(path, head, block, prefetch)
        n = broadcast_from_root(np.array([r.rows.size if r is not None else -1], np.int64))[0]
        if n < 0:
            return None
        rows = broadcast_from_root(r.rows.astype(np.int64) if root else np.empty(int(n), np.int64))
        if root:
            return r
        if head is None:  # the root accepted the file: the same file here should be too
            raise ValueError(f"{path}: rank 0 read it as a CSR .npz, this rank cannot")
        r = cls(path, *head, block, rows=rows)
        if early is not None and np.array_equal(rows, guess):
            r.prefetched = early
        return r

    @classmethod
    def _read_guessed(cls, path: str, head, block: int, prefetch):
        """(guessed documents, (ids, CSR) or None): the documents ``prefetch`` names, numbered as the
        rows with entries in ``indptr`` (rank 0's scan decides whether that numbering stands; a file it
        rejects is not this rank's to report, so any error here only means nothing is kept)."""
        guess = _rows_with_entries(head[1])
        if guess.size == 0:
            return guess, None
        ids = np.asarray(prefetch(int(guess.size)), np.int64)
        if ids.size == 0:
            return guess, None
        try:
            return guess, (ids, cls(path, *head, block, rows=guess).csr(ids))
        except Exception:  # noqa: BLE001 - a damaged or rejected file: rank 0 says what is wrong
            return guess, None

    @staticmethod
    def _header(path: str):
        """(shape, indptr (int64), data dtype, index dtype) of a CSR ``save_npz`` file whose small
        members are consistent; None otherwise. Reads ``indptr``, not the data."""
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                if not {"format.npy", "shape.npy", "indptr.npy", "data.npy", "indices.npy"} <= names:
                    return None
                with zf.open("format.npy") as f:
                    fmt = np.lib.format.read_array(f, allow_pickle=False)
                if fmt.ndim != 0 or fmt.dtype.kind not in "SU":
                    return None
                fmt = fmt.item().decode("ascii", "replace") if fmt.dtype.kind == "S" else str(fmt.item())
                if fmt != "csr":
                    return None
                with zf.open("shape.npy") as f:
                    shape = np.lib.format.read_array(f, allow_pickle=False)
                with zf.open("indptr.npy") as f:
                    indptr = np.lib.format.read_array(f, allow_pickle=False)
                fd, dshape, ddt = _member(zf, "data")
                fd.close()
                fi, ishape, idt = _member(zf, "indices")
                fi.close()
        except Exception:  # noqa: BLE001 - a damaged archive: read_npz says what is wrong
            return None
        if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
            return None
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if (indptr.ndim != 1 or indptr.dtype.kind not in "iu" or indptr.size != n_rows + 1 or n_rows == 0
                or n_cols == 0):
            return None
        indptr = indptr.astype(np.int64)
        nnz = int(indptr[-1])
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or dshape != (nnz,) or ishape != (nnz,):
            return None
        if ddt.kind not in "iuf" or ddt.itemsize < 4 or not ddt.isnative or idt.kind not in "iu" or not idt.isnative:
            return None
        return (n_rows, n_cols), indptr, ddt, idt

    def _entries(self):
        """(start, data block, indices block) over the whole matrix, in file order."""
        nnz = int(self.indptr[-1])
        with zipfile.ZipFile(self.path) as zf:
            fd, _, _ = _member(zf, "data")
            fi, _, _ = _member(zf, "indices")
            with fd, fi:
                for (p0, d), (_, ix) in zip(_blocks(fd, self.data_dtype, nnz, self.block),
                                            _blocks(fi, self.index_dtype, nnz, self.block)):
                    yield p0, d, ix

    @property
    def n_docs(self) -> int:
        return int(self.rows.size)

    def _nonzeros_per_row(self, want: "_RowSet | None" = None) -> np.ndarray:
        """Non-zero counts of every file row, checking every count and index on the way (ValueError
        on the first bad one, as check_counts and check_format would reject it); ``want``: rows to
        copy in the same pass."""
        ip = self.indptr
        # cum[i] = non-zeros among data[:ip[i]] (boundaries at 0, before the first entry, stay 0)
        cum = np.zeros(ip.size, np.int64)
        done = 0
        for p0, d, ix in self._entries():
            _check_block(d, ix, self.shape[1])
            if want is not None:
                want.copy_from(p0, d, ix)
            cs = np.cumsum(d != 0)
            p1 = p0 + d.size
            # the row boundaries inside (p0, p1]
            a, b = np.searchsorted(ip, [p0, p1], side="right")
            cum[a:b] = done + cs[ip[a:b] - p0 - 1]
            done += int(cs[-1])
        return np.diff(cum)

    def _row_set(self, ids: np.ndarray, file_rows: np.ndarray) -> "_RowSet":
        """An empty :class:`_RowSet` of the documents ``ids`` (file rows ``file_rows``), counts
        float32 (float64 for integer counts, as check_counts takes them)."""
        return _RowSet(ids, file_rows, self.indptr, np.float32 if self.data_dtype.kind == "f" else np.float64)

    def csr(self, ids) -> sp.csr_matrix:
        """CSR (canonical; uint16 counts when all of them fit, else float32) of the documents ``ids``
        (0 <= id < n_docs), in that order."""
        ids = np.asarray(ids, np.int64)
        V = self.shape[1]
        if ids.size == 0:
            return sp.csr_matrix((0, V), dtype=np.float32)
        if self.prefetched is not None and np.array_equal(self.prefetched[0], ids):
            X, self.prefetched = self.prefetched[1], None  # the reader keeps no reference to it
            return X
        want = self._row_set(ids, self.rows[ids])
        for p0, d, ix in self._entries():
            want.copy_from(p0, d, ix)
        return want.matrix(V, self.path)

    def columns(self, words) -> sp.csr_matrix:
        """Presence (1.0 where the count is > 0) of the words ``words`` in every document:
        n_docs x len(words), streamed - NPMI's reference is the whole corpus, but only the columns
        of the topics' top words (:func:`evaluate.npmi` takes this reader in place of a matrix)."""
        words = np.asarray(words, np.int64)
        col = np.full(self.shape[1], -1, np.int64)
        col[words] = np.arange(words.size)
        doc_of_row = np.full(self.shape[0], -1, np.int64)
        doc_of_row[self.rows] = np.arange(self.rows.size)
        ip = self.indptr
        rows_out, cols_out = [], []
        for p0, d, ix in self._entries():
            c = col[ix]
            hit = np.flatnonzero((c >= 0) & (d > 0))
            rows_out.append(doc_of_row[np.searchsorted(ip, p0 + hit, side="right") - 1])
            cols_out.append(c[hit])
        r = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
        c = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
        B = sp.csr_matrix((np.ones(r.size), (r, c)), shape=(self.n_docs, words.size))
        B.data[:] = 1.0  # a word repeated within a document counts once
        return B


def take_groups(corpus, row_groups, source: str) -> list:
    """The CSR matrices of the rows ``rows`` of ``corpus.X``, for each ``rows`` of ``row_groups`` (in
    that order), copied an array at a time - X's counts into every group, then its indices - each of
    X's arrays dropped once copied: the peak holds X's indices beside the groups' counts instead of
    the whole of X beside its rows' copy (one process reading a UCI file: its matrix and the
    shuffled training documents, 137 + 137 MB of the 24M-line file). ``corpus.X`` is None
    afterwards (the caller must hold no other reference to the matrix). Counts stay uint16 when
    they are."""
    X, corpus.X = corpus.X, None
    data, indices, indptr, n_cols = X.data, X.indices, X.indptr.astype(np.int64), X.shape[1]
    del X
    sets = [_RowSet(np.arange(len(r)), np.asarray(r, np.int64), indptr, np.float32) for r in row_groups]
    for want in sets:
        if data.dtype != np.uint16:
            want.widen()
        want.gather("data", data, indptr, compiled=True)
    del data
    for want in sets:
        want.gather("indices", indices, indptr, compiled=True)
    del indices
    return [want.matrix(n_cols, source) for want in sets]


def _rows_with_entries(indptr: np.ndarray) -> np.ndarray:
    """File rows with at least one entry: the documents, unless a row holds explicit zeros only
    (which only a scan of the counts finds)."""
    return np.flatnonzero(np.diff(indptr) > 0)


class _RowSet:
    """Rows of the file being copied, block by block, into a CSR matrix (documents ``ids``, file
    rows ``file_rows``, in the order of ids)."""

    def __init__(self, ids, file_rows, indptr, dtype):
        self.ids, self.file_rows = ids, file_rows
        lengths = indptr[file_rows + 1] - indptr[file_rows]
        self.ptr = np.zeros(ids.size + 1, np.int64)
        np.cumsum(lengths, out=self.ptr[1:])
        #: the counts' dtype when they do not fit in 16 bits; while they do, they are stored as
        #: uint16 (what corpus.compact_counts would make of them, without the float32 copy first)
        self.wide = dtype
        self.data = np.empty(int(self.ptr[-1]), np.uint16)
        self.indices = np.empty(int(self.ptr[-1]), np.int32)
        order = np.argsort(file_rows, kind="stable")  # the rows in file order, for one sequential read
        self.starts, self.ends = indptr[file_rows[order]], indptr[file_rows[order] + 1]
        self.dest = self.ptr[:-1][order]
        self.lo = 0  # first row (in file order) not yet copied completely

    def copy_from(self, p0: int, d: np.ndarray, ix: np.ndarray) -> None:
        """Copy the pieces of the rows that lie in the block of entries p0 .. p0 + d.size."""
        starts, ends, lo = self.starts, self.ends, self.lo
        p1 = p0 + d.size
        hi = int(np.searchsorted(starts, p1, side="left"))  # rows starting before p1
        if hi <= lo:
            return
        # rows lo..hi-1 started before p1 and end after p0 (every document has entries), so each
        # has a piece of length > 0 in this block: its positions in the block and in the output
        s = np.maximum(starts[lo:hi], p0)
        n = np.minimum(ends[lo:hi], p1) - s
        o = self.dest[lo:hi] + (s - starts[lo:hi])
        within = _offsets_within(n)
        src = np.repeat(s - p0, n) + within
        dst = np.repeat(o, n) + within
        counts = d[src]
        if self.data.dtype == np.uint16 and not fits_compact(counts):
            self.widen()
        self.data[dst] = counts
        self.indices[dst] = ix[src]
        # rows that end inside this block are done
        self.lo = lo + int(np.searchsorted(ends[lo:hi], p1, side="right"))

    def widen(self) -> None:
        """Store the counts as :attr:`wide` from now on (those copied so far are kept exactly)."""
        if self.data.dtype == np.uint16:
            self.data = self.data.astype(self.wide)

    def gather(self, name: str, member: np.ndarray, indptr: np.ndarray, compiled: bool = False,
               step: int = 2048) -> None:
        """Copy the rows' entries of a whole member (``name``: "data" or "indices"). ``compiled``:
        row by row in a Numba loop, without temporaries (where Numba's compiler is loaded already:
        a UCI file is parsed with it); else ``step`` rows at a time in numpy (the temporaries: their
        positions, ~15 MB) - loading the compiler while an .npz is read raised that phase's peak by
        ~30 MB, above the training's."""
        out = self.data if name == "data" else self.indices
        ptr, rows = self.ptr, self.file_rows
        if compiled:
            starts = indptr[rows]
            _copy_rows(member, starts, indptr[rows + 1] - starts, out, ptr)
            return
        for lo in range(0, rows.size, step):
            r = rows[lo:lo + step]
            s = indptr[r]
            n = indptr[r + 1] - s
            a, b = int(ptr[lo]), int(ptr[lo + r.size])
            within = _offsets_within(n)
            out[a:b] = member[np.repeat(s, n) + within]

    def matrix(self, n_cols: int, path: str) -> sp.csr_matrix:
        X = sp.csr_matrix((self.data, self.indices, self.ptr), shape=(self.ids.size, n_cols))
        if X.dtype == np.uint16:  # counts checked as they were read (integers, none > COMPACT_MAX)
            if X.has_canonical_format and X.data.all():
                return X
            # duplicates to sum or explicit zeros to drop: check_counts does it, in float32
            return compact_counts(check_counts(X.astype(np.float32), path, doc_ids=self.file_rows))
        return check_counts(X, path, doc_ids=self.file_rows)  # messages name file rows, as read_npz's


@njit(nogil=True, cache=True)
def _copy_rows(src, starts, lengths, dst, dst_ptr):
    """``dst[dst_ptr[i]:dst_ptr[i] + lengths[i]] = src[starts[i]:starts[i] + lengths[i]]`` for every
    row i (counts checked as integers that fit ``dst``'s type before they come here)."""
    for i in range(starts.size):
        s = starts[i]
        o = dst_ptr[i]
        for j in range(lengths[i]):
            dst[o + j] = src[s + j]


def _offsets_within(lengths: np.ndarray) -> np.ndarray:
    """For pieces of ``lengths`` laid end to end, each entry's offset within its piece
    (0, 1, .., lengths[0] - 1, 0, 1, ..): added to the pieces' repeated starts, their positions."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _check_block(d: np.ndarray, ix: np.ndarray, n_cols: int) -> None:
    _check_index_block(ix, n_cols)
    _check_counts_block(d)


def _check_index_block(ix: np.ndarray, n_cols: int) -> None:
    if ix.size and (ix.min() < 0 or ix.max() >= n_cols):
        raise ValueError("index out of range")


def _check_counts_block(d: np.ndarray) -> float:
    """The block's largest count (0 when empty); ValueError on a count check_counts would reject."""
    if d.size == 0:
        return 0.0
    largest = d.max()
    if d.dtype.kind == "f":
        if not np.all(np.isfinite(d)) or d.min() < 0 or np.any(d != np.round(d)) or largest > np.finfo(np.float32).max:
            raise ValueError("bad count")
    elif d.min() < 0 or largest > np.finfo(np.float32).max:
        raise ValueError("bad count")
    return float(largest)
