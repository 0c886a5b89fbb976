"""Atomic checkpoints: round trip, corruption and mismatch detection, resume."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import dpsgd
from dpsgd import checkpoint as ckpt

sys.path.insert(0, str(Path(__file__).parent / "progs"))
from train_ls import LS  # noqa: E402


def test_round_trip_and_previous_kept(tmp_path):
    p = str(tmp_path / "shard0.npz")
    a = {"w": np.arange(10, dtype=np.float32), "w_bak": np.ones((2, 10), np.float32)}
    ckpt.save_npz(p, a, {"version": 1})
    ckpt.save_npz(p, {k: v * 2 for k, v in a.items()}, {"version": 2})
    arrays, meta = ckpt.load_npz(p)
    assert meta["version"] == 2
    np.testing.assert_array_equal(arrays["w"], a["w"] * 2)
    prev, pmeta = ckpt.load_npz(str(tmp_path / "shard0.prev.npz"))
    assert pmeta["version"] == 1
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_truncated_and_corrupted_are_refused(tmp_path):
    p = str(tmp_path / "shard0.npz")
    ckpt.save_npz(p, {"w": np.arange(1000, dtype=np.float32)}, {"version": 1})
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupted"):
        ckpt.load_npz(p)
    # flip bytes inside the array data: the zip still opens, the checksum catches it
    ckpt.save_npz(p, {"w": np.arange(1000, dtype=np.float32)}, {"version": 1})
    data = bytearray(open(p, "rb").read())
    i = data.find(np.arange(1000, dtype=np.float32)[500:504].tobytes())
    data[i:i + 4] = b"\xff\xff\xff\xff"
    open(p, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum|corrupted"):
        ckpt.load_npz(p)


def test_load_latest_falls_back_to_previous(tmp_path):
    d = str(tmp_path)
    ckpt.save_npz(ckpt.shard_path(d, 0), {"w": np.zeros(4, np.float32)}, {"version": 1})
    ckpt.save_npz(ckpt.shard_path(d, 0), {"w": np.ones(4, np.float32)}, {"version": 2})
    open(ckpt.shard_path(d, 0), "wb").write(b"garbage")
    msgs = []
    arrays, meta = ckpt.load_latest(d, 0, warn=msgs.append)
    assert meta["version"] == 1 and "refusing" in msgs[0]


def test_pickle_is_never_loaded(tmp_path):
    p = str(tmp_path / "shard0.npz")
    np.savez(p, w=np.array([object()], dtype=object))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_npz(p)


def cfg(tmp_path, **kw):
    base = dict(rule=dpsgd.RuleConfig("dc-asgd-a"), lr=0.02, total_updates=300, threads=1, progress=False,
                checkpoint_dir=str(tmp_path / "ck"))
    base.update(kw)
    return dpsgd.TrainConfig(**base)


def test_resume_continues_the_run(tmp_path):
    first = dpsgd.train(LS(), cfg(tmp_path))
    assert first.metrics["checkpoints_written"] >= 1
    arrays, meta = ckpt.load_npz(ckpt.shard_path(str(tmp_path / "ck"), 0))
    assert meta["total_updates"] == 300
    np.testing.assert_array_equal(arrays["w"], first.params)
    resumed = dpsgd.train(LS(), cfg(tmp_path, total_updates=600, resume=str(tmp_path / "ck"),
                                    checkpoint_dir=str(tmp_path / "ck2")))
    assert resumed.metrics["total_updates"] == 600
    assert resumed.metrics["final"]["dist"] < first.metrics["final"]["dist"]


def test_resume_refuses_another_model(tmp_path):
    dpsgd.train(LS(), cfg(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="n_params"):
        dpsgd.train(LS(d=41), cfg(tmp_path, resume=str(tmp_path / "ck"), checkpoint_dir=None))


def test_periodic_checkpoints(tmp_path):
    res = dpsgd.train(LS(), cfg(tmp_path, total_updates=3000, checkpoint_every=0.01))
    assert res.metrics["checkpoints_written"] >= 2
