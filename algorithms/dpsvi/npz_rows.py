"""Some documents of a scipy ``save_npz`` CSR corpus without the whole matrix in memory.

Under ``mpiexec`` every worker rank trains on its shard of the documents (a random subset, spread
over the file). :func:`corpus.read_npz` would load all of them on every rank - the whole CSR
matrix, held next to the shard until it is dropped, on each of N ranks. :class:`NpzRows` reads the
``indptr`` array (one integer a document), then streams the compressed ``data`` and ``indices``
members in blocks and keeps only the requested rows. Under ``mpiexec`` rank 0 does that once for
every rank's documents and sends each rank its own (``cli._scatter_documents``): one
decompression of the file in all, and the other ranks never open it (no shared file system needed).

It gives exactly what ``read_npz(path).X[ids]`` gives (the same documents, numbered the same way:
the rows with at least one non-zero count, in file order; sorted and summed indices), with the
counts as uint16 when every one read fits in 16 bits (:func:`corpus.compact_counts`: 6 instead of
8 bytes an entry), float32 otherwise. Anything unusual - a damaged archive, a bad count, an index out of range, another sparse
format - is left to :func:`corpus.read_npz`, which reads the whole file and raises its message
(:meth:`NpzRows.read_groups` returns None where ``read_npz`` is the reader to use).
"""

from __future__ import annotations

import zipfile

import numpy as np
import scipy.sparse as sp
from numba import njit

from .corpus import COMPACT_MAX, CorpusError, check_counts, compact_counts, prefetched

#: the largest count check_counts accepts
F32_MAX = float(np.finfo(np.float32).max)
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

    def __init__(self, path: str, shape, indptr: np.ndarray, data_dtype, index_dtype, rows: np.ndarray,
                 block: int = BLOCK):
        self.path = path
        self.shape = shape
        self.indptr = indptr
        self.data_dtype = data_dtype
        self.index_dtype = index_dtype
        #: file row of each document (rows with a non-zero count)
        self.rows = rows
        self.block = int(block)

    @classmethod
    def read_groups(cls, path: str, groups, block: int = BLOCK
                    ) -> "tuple[NpzRows, list[tuple[np.ndarray, sp.csr_matrix]]] | None":
        """The reader and, for each group of documents ``groups(n_docs)`` returns (e.g. the held-out and
        the training ids; under mpiexec every rank's), (its ids, its CSR), in one pass over the file:
        its two big members are inflated a block at a time, by two threads while the rows of the
        block before are checked and copied (compiled, without the GIL), so the peak holds the
        groups and a few blocks, never a whole member; the counts are uint16 while all of them fit
        in 16 bits (the training rows of 90k documents, V 50k: 123 instead of 164 MB). None
        (``read_npz`` then reads it and reports) for a file that is not a well-formed CSR
        ``save_npz`` one, for a bad count or index, and for explicit zeros (which would renumber
        the documents). ``block``: entries inflated at a time (small ones in tests cut through the
        rows). :meth:`open_groups` and :meth:`fill` are its two steps."""
        got = cls.open_groups(path, groups, block)
        if got is None:
            return None
        r, sets = got
        parts = r.fill(sets)
        return None if parts is None else (r, parts)

    @classmethod
    def open_groups(cls, path: str, groups, block: int = BLOCK, sent=()) -> "tuple[NpzRows, list[_RowSet]] | None":
        """The reader of ``path`` (its ``indptr`` read) and an empty row set for each group of
        documents ``groups(n_docs)`` returns (``sent``: the groups :meth:`fill` sends away, which
        hold no arrays here); None where :meth:`read_groups` gives None before reading the counts."""
        head = cls._header(path)
        if head is None:
            return None
        rows = _rows_with_entries(head[1])
        if rows.size == 0:
            return None
        r = cls(path, *head, rows=rows, block=block)
        groups = [np.asarray(g, np.int64) for g in groups(int(rows.size))]
        return r, [r._row_set(ids, rows[ids], g not in sent) for g, ids in enumerate(groups)]

    def fill(self, sets, sent=(), ship=None) -> "list[tuple[np.ndarray, sp.csr_matrix | None]] | None":
        """Read the file once into the row sets of :meth:`open_groups`: [(ids, CSR)] of each, or None
        where :meth:`read_groups` gives None. ``sent``: groups copied out instead, block by block:
        ``ship({group: (q0, data, indices)})`` once a block with each one's entries of the block in
        file order (``q0``: how many of them came before; :meth:`_RowSet.take`); the arrays are
        written again two blocks later, so ``ship`` may go on sending them until its next call
        returns. Their CSR is None here (the receiving rank's :meth:`_RowSet.from_plan` puts them
        together)."""
        # two sets of buffers a group sent (see ship); the counts go as uint16 where a block's fit
        out = {g: [(np.empty(self.block, np.uint16), np.empty(self.block, self.data_dtype),
                    np.empty(self.block, np.int32)) for _ in range(2)] for g in sent}
        n_cols = self.shape[1]
        try:
            for k, (p0, d, ix) in enumerate(self._entries(ahead=True)):
                bad, largest, zeros = _block_stats(d, ix, n_cols)
                if bad or zeros:  # zeros: read_npz numbers the documents
                    return None
                pieces = {}
                for g, want in enumerate(sets):
                    if g in out:
                        small, wide, buf_ix = out[g][k % 2]
                        buf_d = small if largest <= COMPACT_MAX else wide
                        q0, n = want.take(p0, d, ix, buf_d, buf_ix)
                        pieces[g] = (q0, buf_d[:n], buf_ix[:n])
                        continue
                    if largest > COMPACT_MAX:
                        want.widen()
                    want.copy_from(p0, d, ix, largest)
                if pieces:
                    ship(pieces)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError):  # read_npz says what is wrong
            return None
        try:
            return [(want.ids, None if g in out else want.matrix(n_cols, self.path) if want.ids.size
                     else sp.csr_matrix((0, n_cols), dtype=np.float32)) for g, want in enumerate(sets)]
        except CorpusError:
            return None

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

    def _entries(self, ahead: bool = False):
        """(start, data block, indices block) over the whole matrix, in file order. ``ahead``: two
        threads inflate the next block of each member while the caller works on this one
        (:func:`corpus.prefetched`)."""
        nnz = int(self.indptr[-1])
        with zipfile.ZipFile(self.path) as zf:
            fd, _, _ = _member(zf, "data")
            fi, _, _ = _member(zf, "indices")
            with fd, fi:
                dblocks = _blocks(fd, self.data_dtype, nnz, self.block)
                iblocks = _blocks(fi, self.index_dtype, nnz, self.block)
                if ahead:
                    dblocks, iblocks = prefetched(dblocks), prefetched(iblocks)
                for (p0, d), (_, ix) in zip(dblocks, iblocks):
                    yield p0, d, ix

    @property
    def n_docs(self) -> int:
        return int(self.rows.size)

    def _row_set(self, ids: np.ndarray, file_rows: np.ndarray, allocate: bool = True) -> "_RowSet":
        """An empty :class:`_RowSet` of the documents ``ids`` (file rows ``file_rows``), counts
        float32 (float64 for integer counts, as check_counts takes them)."""
        return _RowSet(ids, file_rows, self.indptr, _wide_dtype(self.data_dtype), allocate)

    def csr(self, ids) -> sp.csr_matrix:
        """CSR (canonical; uint16 counts when all of them fit, else float32) of the documents ``ids``
        (0 <= id < n_docs), in that order."""
        ids = np.asarray(ids, np.int64)
        V = self.shape[1]
        if ids.size == 0:
            return sp.csr_matrix((0, V), dtype=np.float32)
        want = self._row_set(ids, self.rows[ids])
        for p0, d, ix in self._entries():
            want.copy_from(p0, d, ix)
        return want.matrix(V, self.path)


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
        want.gather("data", data, indptr)
    del data
    for want in sets:
        want.gather("indices", indices, indptr)
    del indices
    return [want.matrix(n_cols, source) for want in sets]


def _wide_dtype(data_dtype) -> type:
    """What counts of ``data_dtype`` are kept as once one does not fit 16 bits (check_counts' type)."""
    return np.float32 if np.dtype(data_dtype).kind == "f" else np.float64


def _rows_with_entries(indptr: np.ndarray) -> np.ndarray:
    """File rows with at least one entry: the documents, unless a row holds explicit zeros only
    (which only a scan of the counts finds)."""
    return np.flatnonzero(np.diff(indptr) > 0)


class _RowSet:
    """Rows of the file being copied, block by block, into a CSR matrix (documents ``ids``, file
    rows ``file_rows``, in the order of ids)."""

    def __init__(self, ids, file_rows, indptr, dtype, allocate: bool = True):
        self.ids, self.file_rows = ids, file_rows
        #: the rows in file order, for one sequential read
        self.order = np.argsort(file_rows, kind="stable")
        self._place(indptr[file_rows + 1] - indptr[file_rows], indptr[file_rows[self.order]], dtype, allocate)

    def _place(self, lengths, starts, dtype, allocate: bool = True) -> None:
        """The rows' ``lengths`` (in the order of ids) and ``starts`` (in file order: where their
        entries begin in the stream read)."""
        self.ptr = np.zeros(self.ids.size + 1, np.int64)
        np.cumsum(lengths, out=self.ptr[1:])
        #: the counts' dtype when they do not fit in 16 bits; while they do, they are stored as
        #: uint16 (what corpus.compact_counts would make of them, without the float32 copy first)
        self.wide = dtype
        n = int(self.ptr[-1]) if allocate else 0
        self.data = np.empty(n, np.uint16)
        self.indices = np.empty(n, np.int32)
        self.starts = starts
        self.ends = starts + lengths[self.order]
        self.dest = self.ptr[:-1][self.order]
        self.lo = 0  # first row (in file order) not yet copied completely
        self.stream_starts = None  # (see take)

    def plan(self, data_dtype) -> list[np.ndarray]:
        """What a rank needs to put these rows together from :meth:`take`'s pieces
        (:meth:`from_plan`): their lengths (in the order of ids), their file order, their file
        rows (for messages) and, as an empty array, the file's count dtype."""
        return [np.diff(self.ptr), self.order, self.file_rows, np.zeros(0, data_dtype)]

    @classmethod
    def from_plan(cls, ids, plan) -> "_RowSet":
        """The row set of a :meth:`plan`, filled by ``copy_from(q0, data, indices)`` with the
        pieces :meth:`take` cut on the reading rank: its entries are numbered in the order they are
        read (the rows in file order, one after the other)."""
        lengths, order, file_rows, counts = plan
        want = cls.__new__(cls)
        want.ids, want.file_rows, want.order = ids, np.asarray(file_rows, np.int64), np.asarray(order, np.int64)
        lengths = np.asarray(lengths, np.int64)
        if lengths.size != ids.size or want.order.size != ids.size:
            raise ValueError(f"a plan of {lengths.size} rows for {ids.size} documents")
        starts = np.zeros(ids.size, np.int64)
        np.cumsum(lengths[want.order][:-1], out=starts[1:])
        want._place(lengths, starts, _wide_dtype(counts.dtype))
        return want

    def take(self, p0: int, d: np.ndarray, ix: np.ndarray, out_data: np.ndarray, out_indices: np.ndarray
             ) -> tuple[int, int]:
        """On the reading rank, for rows sent away (:meth:`NpzRows.open_groups`' ``sent``): copy their
        entries that lie in the block p0 .. p0 + d.size into ``out_*``, in file order. Returns
        (q0, n): the rows' entries read before this block, and this block's."""
        if self.stream_starts is None:  # where each row's entries begin among the rows' entries
            self.stream_starts = np.zeros(self.starts.size + 1, np.int64)
            np.cumsum(self.ends - self.starts, out=self.stream_starts[1:])
        q0 = self._stream_position(p0)
        self.lo = _copy_block(d, ix, p0, self.starts, self.ends, self.stream_starts, self.lo, out_data,
                              out_indices, True, q0)[0]
        return q0, self._stream_position(p0 + d.size) - q0

    def _stream_position(self, p: int) -> int:
        """The rows' entries before file position ``p`` (rows before :attr:`lo` are complete)."""
        lo = self.lo
        if lo >= self.starts.size:
            return int(self.stream_starts[-1])
        return int(self.stream_starts[lo]) + max(0, p - int(self.starts[lo]))

    def copy_from(self, p0: int, d: np.ndarray, ix: np.ndarray, largest: float | None = None) -> None:
        """Copy the pieces of the rows that lie in the block of entries p0 .. p0 + d.size (its
        counts checked already: integers >= 0; ``largest``: the block's largest count, if known)."""
        if self.data.dtype == np.uint16 and d.size:
            largest = d.max() if largest is None else largest
            if largest > COMPACT_MAX and _copy_block(d, ix, p0, self.starts, self.ends, self.dest, self.lo,
                                                     self.data, self.indices, False)[1] > COMPACT_MAX:
                self.widen()  # a count of these rows does not fit 16 bits
        self.lo = _copy_block(d, ix, p0, self.starts, self.ends, self.dest, self.lo, self.data, self.indices, True)[0]

    def widen(self) -> None:
        """Store the counts as :attr:`wide` from now on (those copied so far are kept exactly)."""
        if self.data.dtype == np.uint16:
            self.data = self.data.astype(self.wide)

    def gather(self, name: str, member: np.ndarray, indptr: np.ndarray) -> None:
        """Copy the rows' entries of a whole member (``name``: "data" or "indices"), row by row in
        a compiled loop, without temporaries."""
        out = self.data if name == "data" else self.indices
        starts = indptr[self.file_rows]
        _copy_rows(member, starts, indptr[self.file_rows + 1] - starts, out, self.ptr)

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


@njit(nogil=True, cache=True)
def _copy_block(d, ix, p0, starts, ends, dest, lo, out_data, out_indices, copy, base=0):
    """Copy into ``out_*`` the pieces of the rows (``starts``/``ends``: their entries in the file,
    in file order; ``dest``: where each goes, less ``base``) that lie in the block of entries
    p0 .. p0 + d.size, from row ``lo`` (the first not copied completely); returns (the first row
    not complete after this block, the largest count of the pieces). ``copy`` False: only that
    largest count."""
    p1 = p0 + d.size
    r = lo
    largest = 0.0
    while r < starts.size and starts[r] < p1:
        s = max(starts[r], p0)
        e = min(ends[r], p1)
        o = dest[r] - base + (s - starts[r])
        if copy:
            for j in range(e - s):
                out_data[o + j] = d[s - p0 + j]
                out_indices[o + j] = ix[s - p0 + j]
        else:
            for j in range(e - s):
                largest = max(largest, float(d[s - p0 + j]))
        r += 1
    while lo < starts.size and ends[lo] <= p1:
        lo += 1
    return lo, largest


@njit(nogil=True, cache=True)
def _block_stats(d, ix, n_cols):
    """(bad, largest, zeros) of a block of entries: bad when a count is negative, not finite, not an
    integer or beyond float32 (what check_counts rejects) or an index is out of range; the largest
    count; whether a count is an explicit zero."""
    largest = 0.0
    zeros = False
    for i in range(d.size):
        v = float(d[i])
        if not (0.0 <= v <= F32_MAX) or v != np.floor(v):
            return True, largest, zeros
        if v > largest:
            largest = v
        if v == 0.0:
            zeros = True
        c = ix[i]
        if c < 0 or c >= n_cols:
            return True, largest, zeros
    return False, largest, zeros

