"""Message layout over mpi4py buffers: no pickle ever touches the parameters.

Every message is one contiguous byte buffer: a 64-byte header of eight float64 fields
followed by a float32 payload (a slice of the parameters or of a pushed gradient). The
receiver preallocates the largest buffer it can get and reads the header's ``n`` field;
MPI's status tells the bytes really received, so a short or oversized push is detected.

Ranks: 0..S-1 are server shards, S..N-1 workers. Shard ``s`` owns parameters
``[bounds[s], bounds[s+1])``.
"""

from __future__ import annotations

import time

import numpy as np

HEADER_FIELDS = 8
HEADER_BYTES = 8 * HEADER_FIELDS

# tags
TAG_PUSH = 11  # worker -> server: header + gradient slice
TAG_REPLY = 12  # server -> worker: reply header
TAG_REPLY_PARAMS = 112  # server -> worker: the parameter slice that follows the header
TAG_FINAL = 13  # server shard -> rank 0: final parameter slice

# header fields (float64 slots)
H_KIND, H_VERSION, H_NSTEPS, H_DTYPE, H_N, H_LR, H_FLAGS, H_TOTAL = range(HEADER_FIELDS)

# kinds
KIND_HELLO = 1.0  # first pull: no payload
KIND_PUSH = 2.0
KIND_DONE = 3.0  # worker leaves: no payload
KIND_PARAMS = 10.0

DTYPE_FLOAT32 = 1.0

# reply flags (bit set)
FLAG_STOP = 1
FLAG_REJECTED = 2
FLAG_DROPPED_STALE = 4
FLAG_FATAL = 8


def shard_bounds(n_params: int, n_servers: int) -> np.ndarray:
    return np.linspace(0, n_params, n_servers + 1).astype(np.int64)


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


def wait(req, max_sleep: float = 1e-3):
    """Wait for an MPI request without burning a core: Test with a backing-off sleep.

    A rank blocked in MPI_Wait/Recv spins at 100 % in MPICH and Open MPI; sleeping releases
    the core (and the GIL, so the rank's other threads keep computing).
    """
    from mpi4py import MPI

    status = MPI.Status()
    backoff = Backoff(max_sleep=max_sleep)
    while not req.Test(status):
        backoff.idle()
    return status


class Backoff:
    """Sleep that grows from ~10 us to ``max_sleep`` while idle and resets on activity."""

    def __init__(self, min_sleep=1e-5, max_sleep=1e-3):
        self.min_sleep, self.max_sleep = min_sleep, max_sleep
        self.sleep = min_sleep

    def idle(self):
        time.sleep(self.sleep)
        self.sleep = min(self.sleep * 2, self.max_sleep)

    def reset(self):
        self.sleep = self.min_sleep
