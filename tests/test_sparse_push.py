"""Sparse pushes: block encoding, the server's checks, and real MPI runs whose pushes carry only changed blocks."""

import json
import sys

import numpy as np
import pytest

import dpsgd
from dpsgd import transport as T
from dpsgd.config import ConfigError
from dpsgd.hogwild import merge_pull
from dpsgd.server import ServerCore

from conftest import PROGS, mpirun, run


@pytest.mark.parametrize("block", [1, 3, 8])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_compress_scatter_round_trip(block, density):
    rng = np.random.default_rng(block)
    nblocks = 200
    g = np.zeros(nblocks * block, np.float32)
    for b in np.nonzero(rng.random(nblocks) < density)[0]:
        g[b * block + rng.integers(block)] = rng.normal()  # one non-zero is enough to send the block
    out = np.zeros(g.size + nblocks, np.float32)
    nb = T.compress_blocks(g, block, out, np.empty(nblocks, np.int32), nblocks)
    expect = np.nonzero(g.reshape(nblocks, block).any(axis=1))[0]
    assert nb == expect.size
    np.testing.assert_array_equal(out[:nb].view(np.int32), expect)
    back = np.zeros_like(g)
    assert T.scatter_blocks(out, nb, block, back)
    np.testing.assert_array_equal(back, g)
    T.clear_blocks(out, nb, block, back)
    assert not back.any()
    if nb > 1:  # too many changed blocks: the caller sends dense
        assert T.compress_blocks(g, block, out, np.empty(nblocks, np.int32), nb - 1) == -1


def test_shard_bounds_fall_on_blocks():
    b = T.shard_bounds(1000, 3, 8)
    assert b[0] == 0 and b[-1] == 1000 and all(x % 8 == 0 for x in b)


def _sparse_header(nb, block=4):
    h = np.zeros(T.HEADER_FIELDS)
    h[T.H_KIND], h[T.H_DTYPE], h[T.H_N], h[T.H_BLOCK] = T.KIND_PUSH_SPARSE, T.DTYPE_FLOAT32, nb, block
    h[T.H_LR] = 0.1
    return h


def _payload(ids, values, block=4):
    p = np.zeros(len(ids) * (block + 1), np.float32)
    p[:len(ids)].view(np.int32)[:] = ids
    p[len(ids):] = values
    return p


@pytest.mark.parametrize("ids,values,header_kw,why", [
    ([2, 1], 1.0, {}, "malformed"),       # not increasing
    ([1, 1], 1.0, {}, "malformed"),       # a block twice
    ([25], 1.0, {}, "malformed"),         # beyond the 25 blocks
    ([1], np.nan, {}, "non-finite"),
    ([1], 1.0, {"block": 5}, "malformed"),  # another block size
    ([1], 1.0, {"nb": 2}, "size"),
    ([1], 1.0, {"nb": 0.5}, "malformed"),
])
@pytest.mark.parametrize("rule", ["dc-asgd-a", "asgd"])  # scattered / applied in place
def test_server_refuses_bad_sparse_pushes(ids, values, header_kw, why, rule):
    core = ServerCore(np.zeros(100, np.float32), dpsgd.TrainConfig(rule=dpsgd.RuleConfig(rule)), 1, block=4)
    p = _payload(ids, values)
    h = _sparse_header(header_kw.get("nb", len(ids)), header_kw.get("block", 4))
    d = core.decoder.decode(h, p, T.HEADER_BYTES + 4 * p.size)
    assert d.g is None and d.problem == why
    core.receive(0, h, p, T.HEADER_BYTES + 4 * p.size)
    assert core.rejected[0] == 1 and not core.w.any()


@pytest.mark.parametrize("rule", ["asgd", "dc-asgd-a", "ssgd"])
def test_server_applies_a_sparse_push_like_the_dense_one(rule):
    """asgd applies the received blocks in place (no scatter); rules that need a dense gradient
    get the push scattered into the decoder's dense buffer, which is zero again afterwards."""
    n_workers = 2 if rule == "ssgd" else 1
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=100).astype(np.float32)
    cfg = dpsgd.TrainConfig(rule=dpsgd.RuleConfig(rule))
    dense, sparse = ServerCore(w0, cfg, n_workers), ServerCore(w0, cfg, n_workers, block=4)
    assert sparse.decoder.scatter == (rule != "asgd")
    for ids in ([3, 7], [0, 1, 24], []):
        values = rng.normal(size=4 * len(ids)).astype(np.float32)
        p = _payload(ids, values)
        d = sparse.decoder.decode(_sparse_header(len(ids)), p, T.HEADER_BYTES + 4 * p.size)
        assert d.problem is None
        gd = np.zeros(100, np.float32)
        for k, b in enumerate(ids):
            gd[4 * b:4 * b + 4] = values[4 * k:4 * k + 4]
        if rule == "asgd":
            assert isinstance(d.g, T.SparseBlocks) and d.g.nb == len(ids)
        else:
            np.testing.assert_array_equal(d.g, gd)
        for m in range(n_workers):
            sparse.push(m, d.g, 0, 1, 0.1)
            dense.push(m, gd, 0, 1, 0.1)
        sparse.decoder.release()
        if sparse.decoder.densifier.buf is not None:
            assert not sparse.decoder.densifier.buf.any()
        np.testing.assert_array_equal(sparse.w, dense.w)
    assert sparse.version == dense.version > 0


def test_merge_pull_is_exact_where_nothing_changed():
    rng = np.random.default_rng(0)
    w_new = rng.normal(size=1000).astype(np.float32)
    snap = rng.normal(size=1000).astype(np.float32)
    w = snap.copy()
    w[::10] += 1.0  # changed by other threads since the snapshot
    w_start = np.empty_like(w)
    merge_pull(w, w_start, w_new, snap)
    untouched = np.ones(1000, bool)
    untouched[::10] = False
    np.testing.assert_array_equal(w[untouched], w_new[untouched])  # bit-exact: the next push is 0 there


def test_push_block_must_divide_the_parameters():
    sys.path.insert(0, str(PROGS))
    from train_sparse import Rows

    alg = Rows(n_rows=10, block=8)
    alg.push_block = 3
    with pytest.raises(ConfigError, match="push_block"):
        dpsgd.train(alg, dpsgd.TrainConfig(total_updates=10, threads=1, progress=False))


def _result(proc):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][0][7:])


@pytest.mark.mpi
@pytest.mark.parametrize("n,args", [(3, []), (4, ["--n-servers", 2]), (3, ["--threads", 2, "--local-steps", 4]),
                                    (3, ["--blocks"]), (4, ["--blocks", "--n-servers", 2]),
                                    (3, ["--blocks", "--threads", 2])])
def test_sparse_pushes_over_mpi(n, args):
    """Sparse pushes from a dense g (the worker finds the changed blocks) and from an algorithm's
    own SparseBlocks (sent as they are; scattered for two shards)."""
    r = _result(mpirun(n, [PROGS / "train_sparse.py", *args]))
    assert r["rejected_pushes"] == 0 and r["final"]["dist"] < 0.01
    assert r["sparse_pushes"] == r["pushes"] * (2 if "--n-servers" in args else 1)  # every push, every shard
    # 5 of 500 rows per update: a push carries a few blocks, not the 16 kB of the whole model
    assert r["push_bytes_mean"] < r["dense_push_bytes"] / 5
    assert r["pull_bytes_mean"] == r["dense_push_bytes"]  # replies stay dense


@pytest.mark.mpi
def test_sparse_blocks_of_most_rows_go_dense():
    """An algorithm's SparseBlocks with more blocks than a sparse push may carry (60 %) go as a
    dense push."""
    r = _result(mpirun(3, [PROGS / "train_sparse.py", "--blocks", "--per-update", 400, "--updates", 300]))
    assert r["rejected_pushes"] == 0 and r["final"]["dist"] < 0.01
    assert r["sparse_pushes"] == 0 and r["push_bytes_mean"] == r["dense_push_bytes"]


@pytest.mark.parametrize("args", [[], ["--blocks"]])
def test_sparse_algorithm_runs_in_one_process(args):
    r = _result(run([sys.executable, str(PROGS / "train_sparse.py"), *args]))
    assert r["final"]["dist"] < 0.01 and r["n_workers"] == 1


class _RecordingComm:
    """Stands in for an MPI communicator: records what each Isend was given."""

    def __init__(self):
        self.sent = []

    def Isend(self, buf, dest, tag):
        self.sent.append((np.array(buf, copy=True), buf, tag))
        return None  # the request


@pytest.mark.parametrize("n,inline", [(10, True), (300, False)])
def test_send_message_sends_a_large_payload_from_the_gradient(monkeypatch, n, inline):
    """send_message(values=g): an inline payload is copied into the message (one message); one sent
    apart goes straight from g (no model-sized copy) after its header, as the same bytes."""
    monkeypatch.setattr(T, "INLINE_PAYLOAD_BYTES", 4 * 100)
    msg = T.Message(n)
    msg.payload[:] = -7.0  # a copy into the message would overwrite this
    g = np.arange(n, dtype=np.float32)
    T.encode_header(msg.header, T.KIND_PUSH, version=3, nsteps=1, n=n, lr=0.1)
    comm = _RecordingComm()
    nbytes, reqs = T.send_message(comm, msg, n, 0, values=g)
    assert nbytes == msg.nbytes_for(n) and len(reqs) == len(comm.sent)
    if inline:
        (data, _, tag), = comm.sent
        assert tag == T.TAG_PUSH and not T.payload_apart(msg.header)
        np.testing.assert_array_equal(data[T.HEADER_BYTES:].view(np.float32), g)
    else:
        (head, _, tag0), (data, view, tag1) = comm.sent
        assert (tag0, tag1) == (T.TAG_PUSH, T.TAG_PUSH_PAYLOAD) and T.payload_apart(msg.header)
        assert head.size == T.HEADER_BYTES and data.dtype == np.uint8
        np.testing.assert_array_equal(data.view(np.float32), g)
        assert np.shares_memory(view, g) and (msg.payload == -7.0).all()  # sent from g, not copied


def _blocks(ids, block=4, values=None):
    nb = len(ids)
    p = np.zeros(nb * (block + 1) + 3, np.float32)  # a larger buffer than the push, as an algorithm's
    p[:nb].view(np.int32)[:] = ids
    p[nb:nb * (block + 1)] = np.arange(1, nb * block + 1) if values is None else values
    return T.SparseBlocks(p, nb, block)


def test_checked_update_takes_the_algorithms_sparse_blocks():
    """compute_update may return SparseBlocks of its push_block with strictly increasing ids below
    n / block; anything else is refused with the algorithm's name."""
    from dpsgd.plugin import checked_update

    class Alg:
        push_block = 4

    sb = _blocks([0, 2, 4])
    assert checked_update(sb, 20, Alg()) is sb
    assert checked_update(_blocks([]), 20, Alg()).nb == 0
    for bad in (_blocks([2, 2]), _blocks([3, 1]), _blocks([5]), _blocks([1], block=2),
                T.SparseBlocks(sb.payload, 9, 4), T.SparseBlocks(sb.payload.astype(np.float64), 3, 4)):
        with pytest.raises(TypeError, match="Alg.compute_update"):
            checked_update(bad, 20, Alg())
    Alg.push_block = None
    with pytest.raises(TypeError, match="push_block is None"):
        checked_update(sb, 20, Alg())


def test_densifier_scatters_one_sparse_update_at_a_time():
    """The dense form of SparseBlocks is as_dense's; release (or the next scatter, after the payload
    changed) zeroes exactly the blocks written."""
    d = T.Densifier(20)
    a = _blocks([0, 3])
    g = d.dense(a)
    np.testing.assert_array_equal(g, T.as_dense(a, 20))
    a.payload[:2].view(np.int32)[:] = [1, 4]  # the algorithm reuses its buffer for the next update
    a.payload[2:10] = 7.0
    g = d.dense(a)
    np.testing.assert_array_equal(g, T.as_dense(a, 20))
    assert g[:4].sum() == 0 and g[12:16].sum() == 0
    d.release()
    assert not d.buf.any()
    dense = np.ones(20, np.float32)
    assert d.dense(dense) is dense
    with pytest.raises(ValueError):
        T.as_dense(_blocks([2, 1]), 20)
