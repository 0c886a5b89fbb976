"""A 'worker' that sends malformed pushes by hand (wrong size, dtype, sparse block indices), then leaves.

Run as: mpiexec -n 2 python -m mpi4py tests/progs/bad_push.py  (rank 0 serves, rank 1 misbehaves)
"""

import json

import numpy as np
from mpi4py import MPI

from dpsgd import TrainConfig, transport as T
from dpsgd.server import ServerCore, serve

comm = MPI.COMM_WORLD
N = 100
B = 10  # sparse pushes: blocks of 10
if comm.Get_rank() == 0:
    core = ServerCore(np.zeros(N, np.float32), TrainConfig(total_updates=10**6, max_bad_pushes=100), 1, block=B)
    serve(comm, core, [1])
    changed = np.nonzero(core.w.reshape(-1, B).any(axis=1))[0].tolist()
    print("RESULT " + json.dumps({"rejected": int(core.rejected.sum()), "reasons": core.reject_reasons,
                                  "version": core.version, "changed_blocks": changed,
                                  "sparse_block5": core.w[5 * B:6 * B].tolist()}))
else:
    hdr = np.zeros(T.HEADER_FIELDS)
    w = np.zeros(N, np.float32)

    def exchange(m):
        r1 = comm.Irecv(hdr, source=0, tag=T.TAG_REPLY)
        r2 = comm.Irecv(w, source=0, tag=T.TAG_REPLY_PARAMS)
        for r in T.send_message(comm, m, m.payload.size, 0)[1]:
            T.wait(r)
        T.wait(r1), T.wait(r2)
        return int(hdr[T.H_FLAGS])

    def push(n, dtype=T.DTYPE_FLOAT32, kind=T.KIND_PUSH, declared=None, value=0.01):
        m = T.Message(n)
        m.header[T.H_KIND], m.header[T.H_DTYPE] = kind, dtype
        m.header[T.H_N] = n if declared is None else declared
        m.header[T.H_LR], m.header[T.H_NSTEPS] = 0.1, 1
        m.payload[:] = value
        return exchange(m)

    def sparse(ids, values=0.5, block=B, declared=None, n_payload=None):
        nb = len(ids)
        m = T.Message(nb * (B + 1) if n_payload is None else n_payload)
        m.header[T.H_KIND], m.header[T.H_DTYPE], m.header[T.H_BLOCK] = T.KIND_PUSH_SPARSE, T.DTYPE_FLOAT32, block
        m.header[T.H_N] = nb if declared is None else declared
        m.header[T.H_LR], m.header[T.H_NSTEPS] = 0.1, 1
        m.payload[nb:] = values
        m.payload[:nb].view(np.int32)[:] = ids
        return exchange(m)

    flags = [push(0, kind=T.KIND_HELLO), push(N - 1), push(N, dtype=7.0), push(N, declared=N + 5),
             push(N, value=np.inf), push(N)]
    assert [bool(f & T.FLAG_REJECTED) for f in flags] == [False, True, True, True, True, False], flags
    flags = [sparse([5, 5]), sparse([10]), sparse([-1]), sparse([1], block=7), sparse([1, 2], n_payload=11),
             sparse([3], values=np.nan), sparse([5])]
    assert [bool(f & T.FLAG_REJECTED) for f in flags] == [True] * 6 + [False], flags
    done = T.Message(0)
    done.header[T.H_KIND] = T.KIND_DONE
    for r in T.send_message(comm, done, 0, 0)[1]:
        T.wait(r)
