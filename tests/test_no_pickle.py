"""Crafted malicious pickles where a model or checkpoint is expected are refused, never executed."""

import os
import pickle

import numpy as np
import pytest


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling would create the marker file
        return (open, (self.marker, "w"))


def test_checkpoint_with_a_pickle_inside_is_refused(tmp_path):
    from dpsgd import checkpoint as ckpt

    marker = tmp_path / "pwned"
    path = tmp_path / "shard0.npz"
    np.savez(path, w=np.array([Payload(str(marker))], dtype=object))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_npz(str(path))
    assert not marker.exists()


def test_checkpoint_file_that_is_a_raw_pickle_is_refused(tmp_path):
    from dpsgd import checkpoint as ckpt

    marker = tmp_path / "pwned"
    path = tmp_path / "shard0.npz"
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_npz(str(path))
    assert not marker.exists()


def test_rl_model_with_a_malicious_pickle_is_refused(tmp_path):
    pytest.importorskip("torch")
    from algorithms.hsa2c import HSA2C
    from algorithms.hsa2c.agent import MODEL_FILE

    agent = HSA2C("CartPole-v1", seed=0, eval_episodes=0)
    agent.learn(agent.samples_per_update * 2)
    agent.save(str(tmp_path))
    marker = tmp_path / "pwned"
    (tmp_path / MODEL_FILE).write_bytes(pickle.dumps({"w": Payload(str(marker))}))
    with pytest.raises(Exception) as e:
        HSA2C.load(str(tmp_path))
    assert "weights_only" in str(e.value) or "Unsupported" in str(e.value) or "pickle" in str(e.value).lower()
    assert not marker.exists()


def test_lda_model_with_a_pickle_is_refused(tmp_path):
    from algorithms.dpsvi import DPSVI

    marker = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    np.savez(path, components_=np.array([Payload(str(marker))], dtype=object))
    with pytest.raises(Exception):
        DPSVI.load(str(path))
    assert not marker.exists()
    assert not os.path.exists(marker)
