"""Message layout over mpi4py buffers: no pickle ever touches the parameters.

Every message is one contiguous byte buffer: a 64-byte header of eight float64 fields
followed by a float32 payload (a slice of the parameters or of a pushed gradient) - except a
push whose payload exceeds ``INLINE_PAYLOAD_BYTES``, which sends its payload as a second
message after the header (``PAYLOAD_APART`` in ``H_FLAGS``; see :func:`send_message`). The
receiver preallocates the largest buffer it can get and reads the header's ``n`` field;
MPI's status tells the bytes really received, so a short or oversized push is detected.

Ranks: 0..S-1 are server shards, S..N-1 workers. Shard ``s`` owns parameters
``[bounds[s], bounds[s+1])``.

Sparse pushes (``KIND_PUSH_SPARSE``): when an algorithm declares ``push_block = B`` (its
parameters are blocks of B values, e.g. one word's K topic weights) and a push changes few
blocks, the worker sends only those: ``H_N`` holds the number of blocks nb, ``H_BLOCK`` the
block size, and the payload is nb block indices (int32, strictly increasing, stored in float32
slots) followed by the nb * B values. The server scatters them into a zeroed buffer and applies
its rule as for a dense push (a zero gradient leaves a parameter unchanged under every rule but
momentum). A push that changes more than ``SPARSE_MAX_FRACTION`` of the blocks goes dense.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np
from numba import njit

from .rules import all_finite

HEADER_FIELDS = 8
HEADER_BYTES = 8 * HEADER_FIELDS

# tags
TAG_PUSH = 11  # worker -> server: a message's header
TAG_PUSH_PAYLOAD = 111  # worker -> server: the gradient slice that follows a push's header
TAG_REPLY = 12  # server -> worker: reply header
TAG_REPLY_PARAMS = 112  # server -> worker: the parameter slice that follows the header
TAG_FINAL = 13  # server shard -> rank 0: final parameter slice

# header fields (float64 slots)
H_KIND, H_VERSION, H_NSTEPS, H_DTYPE, H_N, H_LR, H_FLAGS, H_TOTAL = range(HEADER_FIELDS)
H_BLOCK = H_TOTAL  # in a sparse push (H_TOTAL is a reply field): the block size

# kinds
KIND_HELLO = 1.0  # first pull: no payload
KIND_PUSH = 2.0
KIND_DONE = 3.0  # worker leaves: no payload
KIND_PUSH_SPARSE = 4.0  # the changed blocks only (see the module docstring)
KIND_PARAMS = 10.0
PUSH_KINDS = (KIND_PUSH, KIND_PUSH_SPARSE)  # the messages that carry a payload

DTYPE_FLOAT32 = 1.0

# reply flags (bit set)
FLAG_STOP = 1
FLAG_REJECTED = 2
FLAG_DROPPED_STALE = 4
FLAG_FATAL = 8


#: a push's payload up to this size travels in its header's message; a larger one apart (H_FLAGS)
INLINE_PAYLOAD_BYTES = int(os.environ.get("DPSGD_INLINE_PAYLOAD_BYTES", 1 << 20))
PAYLOAD_APART = 1

#: a sparse push is sent only when it changes at most this fraction of the blocks
SPARSE_MAX_FRACTION = 0.6

#: seconds a waiting rank yields its core before it starts to sleep (see :class:`Backoff`): long
#: where the rank's threads have cores of their own, short where ranks share cores (set by
#: :func:`set_spin` at the start of an MPI run; the environment's DPSGD_SPIN_SECONDS wins)
SPIN_SHARED, SPIN_DEDICATED = 100e-6, 1e-3
SPIN_SECONDS = float(os.environ.get("DPSGD_SPIN_SECONDS", SPIN_SHARED))


def set_spin(dedicated: bool) -> float:
    """:data:`SPIN_SECONDS` for a rank whose threads have cores of their own (``dedicated``: the
    node's ranks x threads fit its cores) or not, unless DPSGD_SPIN_SECONDS is set. Yielding
    costs nothing where no other task wants the core, and sleeping adds its overshoot and wake-up
    to every wait: a 1e6-parameter round trip (~1 ms) with one worker and the server on two
    cores made 285-429 pushes/s spinning 100 us and 387-634 spinning 1 ms (3 alternated pairs);
    where ranks share cores a longer spin takes CPU from the others (LDA under mpiexec -n 3 on two
    cores: 0.5-1.7 % fewer documents/s, 3 pairs)."""
    global SPIN_SECONDS
    if "DPSGD_SPIN_SECONDS" not in os.environ:
        SPIN_SECONDS = SPIN_DEDICATED if dedicated else SPIN_SHARED
    return SPIN_SECONDS


def shard_bounds(n_params: int, n_servers: int, block: int = 1) -> np.ndarray:
    """Slice boundaries of the server shards, on multiples of ``block``."""
    nb = n_params // block
    b = np.linspace(0, nb, n_servers + 1).astype(np.int64) * block
    b[-1] = n_params
    return b


@njit(nogil=True, cache=True, error_model="numpy")
def compress_blocks(g, block, out, ids, max_blocks):
    """Write the blocks of ``g`` that hold a non-zero into ``out`` (indices, then values).

    Returns the number of blocks nb, or -1 when more than ``max_blocks`` are non-zero (send dense).
    ``ids`` is int32 scratch of length len(g) // block. A block is non-zero when any of its
    values is not +-0 (NaN counts as non-zero: it is sent, and the server rejects it). The test
    ORs the values' bits without the sign (vectorizes, unlike an early exit per value) and the
    copies are slice assignments: 3x faster than value-by-value loops at V 50k, K 100.
    """
    nblocks = g.shape[0] // block
    bits = g.view(np.int32)
    nb = 0
    for b in range(nblocks):
        base = b * block
        acc = 0
        for j in range(block):
            acc |= bits[base + j] & 0x7FFFFFFF
        if acc != 0:
            if nb == max_blocks:
                return -1
            ids[nb] = b
            nb += 1
    out_ids = out[:nb].view(np.int32)
    for k in range(nb):
        out_ids[k] = ids[k]
        out[nb + k * block:nb + (k + 1) * block] = g[ids[k] * block:(ids[k] + 1) * block]
    return nb


@njit(nogil=True, cache=True)
def valid_block_ids(payload, nb, nblocks):
    """The nb indices at the start of a sparse payload are strictly increasing and below
    ``nblocks`` (so no block is written twice and none lies outside the parameters)."""
    ids = payload[:nb].view(np.int32)
    prev = -1
    for k in range(nb):
        b = ids[k]
        if b <= prev or b >= nblocks:
            return False
        prev = b
    return True


@njit(nogil=True, cache=True, error_model="numpy")
def scatter_blocks(payload, nb, block, g):
    """Inverse of compress_blocks into the zeroed ``g``. False when the indices are invalid
    (see :func:`valid_block_ids`)."""
    if not valid_block_ids(payload, nb, g.shape[0] // block):
        return False
    ids = payload[:nb].view(np.int32)
    for k in range(nb):
        g[ids[k] * block:(ids[k] + 1) * block] = payload[nb + k * block:nb + (k + 1) * block]
    return True


@njit(nogil=True, cache=True, error_model="numpy")
def clear_blocks(payload, nb, block, g):
    """Zero the blocks of ``g`` that scatter_blocks wrote."""
    ids = payload[:nb].view(np.int32)
    for k in range(nb):
        g[ids[k] * block:(ids[k] + 1) * block] = 0.0


def encode_header(h: np.ndarray, kind: float, *, version: int = 0, nsteps: int = 0, n: int = 0, lr: float = 0.0,
                  flags: int = 0, total: int = 0, block: int = 0) -> np.ndarray:
    """Fill the header ``h`` (8 float64 slots) of a message: the one place a header is written.

    Pushes (``KIND_PUSH``, ``KIND_PUSH_SPARSE``, ``KIND_HELLO``, ``KIND_DONE``) carry the
    version their update started from, its local steps, the payload size ``n`` (values, or
    blocks of a sparse push, whose ``block`` size goes in ``H_BLOCK``) and the step size;
    replies (``KIND_PARAMS``) carry the server's version, flags and total updates.
    """
    h[:] = 0
    h[H_KIND] = kind
    h[H_VERSION] = version
    h[H_N] = n
    if kind == KIND_PARAMS:
        h[H_FLAGS] = flags
        h[H_TOTAL] = total
    else:
        h[H_NSTEPS] = nsteps
        h[H_DTYPE] = DTYPE_FLOAT32
        h[H_LR] = lr
        if kind == KIND_PUSH_SPARSE:
            h[H_BLOCK] = block
    return h


class SparseBlocks(NamedTuple):
    """A sparse push: ``payload`` holds nb block indices (int32 in float32 slots, strictly
    increasing) followed by the nb * ``block`` values. The server's decoder hands one over as
    received (indices checked); an algorithm that declares ``push_block`` may return one from
    ``compute_update`` (see :mod:`dpsgd.plugin`), which a worker then sends as it is."""

    payload: np.ndarray
    nb: int
    block: int


class Push(NamedTuple):
    """A decoded message from a worker: a hello, a leave, or a push (or a rejected one)."""

    kind: float  # KIND_HELLO, KIND_DONE, KIND_PUSH or KIND_PUSH_SPARSE (as received, when malformed)
    #: a push's gradient: dense (the payload, or a sparse push scattered), or the sparse push's
    #: blocks as received (:class:`SparseBlocks`, when the decoder does not scatter)
    g: np.ndarray | SparseBlocks | None
    version: int  # the server version the update started from
    nsteps: int  # its local steps
    lr: float  # its step size
    problem: str | None = None  # why the push is rejected (malformed, size, dtype, non-finite, step size)


class Densifier:
    """Sparse blocks scattered into a zeroed model-sized buffer (made when first needed), and
    zeroed again by :meth:`release`: the dense gradient of a sparse push, for a rule or a path that
    needs one. One buffer, one sparse push at a time."""

    def __init__(self, n_params: int):
        self.n = int(n_params)
        self.buf: np.ndarray | None = None
        self._ids: np.ndarray | None = None  # the blocks written (a copy: the payload may change)
        self._block = 0

    def scatter(self, payload: np.ndarray, nb: int, block: int) -> np.ndarray | None:
        """The dense form of the nb blocks of ``payload`` (see :class:`SparseBlocks`), or None
        when their indices are invalid (see :func:`valid_block_ids`)."""
        self.release()
        if self.buf is None:
            self.buf = np.zeros(self.n, np.float32)
        if not scatter_blocks(payload, nb, block, self.buf):
            return None
        self._ids, self._block = payload[:nb].copy(), block
        return self.buf

    def dense(self, g):
        """``g`` itself when it is dense; a sparse update (:class:`SparseBlocks`, checked) scattered."""
        return g if not isinstance(g, SparseBlocks) else self.scatter(g.payload, g.nb, g.block)

    def release(self) -> None:
        if self._ids is not None:
            clear_blocks(self._ids, self._ids.size, self._block, self.buf)
            self._ids = None


def as_dense(g, n_params: int) -> np.ndarray:
    """A new dense array of a sparse update (:class:`SparseBlocks`); a dense ``g`` as it is."""
    if not isinstance(g, SparseBlocks):
        return g
    out = np.zeros(int(n_params), np.float32)
    if not scatter_blocks(g.payload, g.nb, g.block, out):
        raise ValueError("sparse update with invalid block indices")
    return out


class PushDecoder:
    """The one place a worker's message is read: header fields, sizes, dtype, sparse blocks,
    finiteness and step size, for a shard of ``n_params`` parameters (``block``: the sparse
    pushes' block size, 0 for none).

    ``scatter``: a sparse push is scattered into a dense buffer shared by all pushes (call
    :meth:`release` once the push has been applied), for rules that need a dense gradient;
    without it the push's blocks are handed over as received (:class:`SparseBlocks`), for a rule
    that applies them in place (``UpdateRule.applies_blocks``)."""

    def __init__(self, n_params: int, block: int = 0, scatter: bool = True):
        self.n = int(n_params)
        self.block = int(block or 0)
        self.scatter = bool(scatter)
        self.densifier = Densifier(self.n)

    def decode(self, header: np.ndarray, payload: np.ndarray, nbytes: int) -> Push:
        """``nbytes``: the bytes received, header included (MPI's status)."""
        kind = float(header[H_KIND])
        version, nsteps, lr = int(header[H_VERSION]), int(header[H_NSTEPS]), float(header[H_LR])
        if kind in (KIND_HELLO, KIND_DONE):
            return Push(kind, None, version, nsteps, lr)
        if kind not in PUSH_KINDS or nbytes < HEADER_BYTES or (nbytes - HEADER_BYTES) % 4:
            return Push(kind, None, version, nsteps, lr, "malformed")
        n_recv = (nbytes - HEADER_BYTES) // 4
        if header[H_DTYPE] != DTYPE_FLOAT32:
            return Push(kind, None, version, nsteps, lr, "dtype")
        if kind == KIND_PUSH_SPARSE:
            g, problem = self._sparse(payload, header, n_recv)
        elif header[H_N] != self.n or n_recv != self.n:
            g, problem = None, "size"
        else:
            g, problem = payload[:n_recv], None
            if not all_finite(g):
                problem = "non-finite"
        if problem is None and not (lr > 0 and np.isfinite(lr)):
            problem = "step size"
        return Push(kind, g, version, nsteps, lr, problem)

    def _sparse(self, payload, header, n_recv):
        B, nb = header[H_BLOCK], header[H_N]
        if not self.block or B != self.block or not (nb == int(nb) and 0 <= nb <= self.n // self.block):
            return None, "malformed"
        nb = int(nb)
        if n_recv != nb * (self.block + 1):
            return None, "size"
        if not all_finite(payload[nb:n_recv]):
            return None, "non-finite"
        if not self.scatter:
            if not valid_block_ids(payload, nb, self.n // self.block):
                return None, "malformed"
            return SparseBlocks(payload, nb, self.block), None
        g = self.densifier.scatter(payload, nb, self.block)
        return (None, "malformed") if g is None else (g, None)

    def release(self) -> None:
        """Zero the dense buffer's blocks the last sparse push wrote."""
        self.densifier.release()


def payload_apart(header: np.ndarray) -> bool:
    """The push's payload follows its header as a message of its own (see :func:`send_message`)."""
    return float(header[H_KIND]) in PUSH_KINDS and header[H_FLAGS] == PAYLOAD_APART


def send_message(comm, msg: "Message", n: int, dest: int, values: np.ndarray | None = None) -> tuple[int, list]:
    """Post the sends of a worker's message with ``n`` payload values: header and payload in one
    message when the payload is at most ``INLINE_PAYLOAD_BYTES``; a larger push's payload goes as a
    message of its own after the header (marked in ``H_FLAGS``), which the server receives once the
    header is there and drives to the end - one large message left a push over a network path
    waiting for the server's next poll at every chunk, while a second message costs small pushes
    their latency (1e4 parameters over shared memory: ~40 % fewer pushes/s). ``values``: the n
    values when they are not in ``msg.payload`` (a slice of the pushed gradient): an inline payload
    is copied into the message, one sent apart goes straight from them (a model-sized copy fewer
    per push).

    Returns (bytes sent, the send requests). The caller completes the requests with :func:`wait`
    before it touches ``msg`` or ``values`` again: a blocking send of a large payload spins in
    MPI's progress loop until the server has read it (MPICH's single-copy path: the receiver
    copies), a core an oversubscribed machine's other ranks need."""
    apart = float(msg.header[H_KIND]) in PUSH_KINDS and 4 * int(n) > INLINE_PAYLOAD_BYTES
    msg.header[H_FLAGS] = PAYLOAD_APART if apart else 0
    if values is not None and not apart:
        msg.payload[:n] = values
    if not apart:
        return msg.nbytes_for(n), [comm.Isend(msg.view_bytes(n), dest=dest, tag=TAG_PUSH)]
    reqs = [comm.Isend(msg.view_bytes(0), dest=dest, tag=TAG_PUSH)]
    if values is None:
        data = msg.buf[HEADER_BYTES:msg.nbytes_for(n)]
    else:
        data = np.ascontiguousarray(values[:n], dtype=np.float32).view(np.uint8)
    reqs.append(comm.Isend(data, dest=dest, tag=TAG_PUSH_PAYLOAD))  # bytes, as received
    return msg.nbytes_for(n), reqs


def is_leaving(header: np.ndarray) -> bool:
    """The worker's message says it leaves (KIND_DONE): it sends nothing more."""
    return float(header[H_KIND]) == KIND_DONE


def decode_reply(header: np.ndarray) -> tuple[int, int, int]:
    """(flags, server version, total updates) of a server's reply header."""
    return int(header[H_FLAGS]), int(header[H_VERSION]), int(header[H_TOTAL])


class Message:
    """A preallocated buffer with header and float32 payload views."""

    __slots__ = ("buf", "header", "payload")

    def __init__(self, n_payload: int):
        self.buf = np.zeros(HEADER_BYTES + 4 * int(n_payload), np.uint8)
        self.header = self.buf[:HEADER_BYTES].view(np.float64)
        self.payload = self.buf[HEADER_BYTES:].view(np.float32)

    def nbytes_for(self, n: int) -> int:
        return HEADER_BYTES + 4 * int(n)

    def view_bytes(self, n: int) -> np.ndarray:
        """The first ``n`` payload elements with the header, as a sendable byte buffer."""
        return self.buf[: self.nbytes_for(n)]


def _status_type():
    """``MPI.Status``, imported once: an import statement in :func:`wait` cost ~2-9 us a call (two
    waits a push; a 1e4-parameter push takes ~70 us), and this module must import without MPI."""
    global _STATUS
    if _STATUS is None:
        from mpi4py import MPI

        _STATUS = MPI.Status
    return _STATUS


_STATUS = None


def wait(req, max_sleep: float = 1e-3, spin: float = None):
    """Wait for an MPI request without burning a core: Test with a backing-off sleep.

    A rank blocked in MPI_Wait/Recv spins at 100 % in MPICH and Open MPI; sleeping releases
    the core (and the GIL, so the rank's other threads keep computing). ``spin``: seconds to
    yield before the first sleep (default ``SPIN_SECONDS``; ``inf`` for a transfer known to be
    under way, which over a network path advances only while this rank calls into MPI).
    """
    status = _status_type()()
    if req.Test(status):
        return status
    backoff = Backoff(max_sleep=max_sleep, spin=spin)
    while not req.Test(status):
        backoff.idle()
    return status


class Backoff:
    """Wait politely: ``os.sched_yield`` for the first ``spin`` seconds of a wait, then sleeps
    that grow from ~10 us to ``max_sleep`` but never past ``OVERSLEEP`` of the time waited so far
    (or 100 us); :meth:`reset` on activity.

    An answer usually lands within tens of microseconds, but the shortest sleep lasts ~60-110 us
    here (timer slack and the scheduler), so sleeping at once adds that to every round trip; a
    yield gives the core to any other runnable task (another rank on an oversubscribed machine)
    and comes straight back when there is none. After ``spin`` the rank sleeps: an idle server
    costs a few % of a core, not 100 % as a rank blocked in MPI_Recv does. The last sleep of a
    wait overshoots its end by up to that sleep: capped at 5 % of the wait, an answer that takes
    6 ms (a 1e7-parameter model) is seen ~0.3 ms late, not up to 1 ms (1e7 parameters, one worker:
    pushes/s +0.5 to +22 %, 3 alternated pairs).
    """

    #: longest sleep, as a fraction of the time waited so far (beyond the first 100 us of sleep)
    OVERSLEEP = 0.05

    def __init__(self, min_sleep=1e-5, max_sleep=1e-3, spin=None):
        self.min_sleep, self.max_sleep = min_sleep, max_sleep
        self.spin = SPIN_SECONDS if spin is None else spin
        self.sleep = min_sleep
        self.waiting_since = None

    def idle(self):
        now = time.perf_counter()
        if self.waiting_since is None:
            self.waiting_since = now
        if now - self.waiting_since < self.spin:
            os.sched_yield()
            return
        time.sleep(min(self.sleep, max(1e-4, self.OVERSLEEP * (now - self.waiting_since))))
        self.sleep = min(self.sleep * 2, self.max_sleep)

    def reset(self):
        self.sleep = self.min_sleep
        self.waiting_since = None
