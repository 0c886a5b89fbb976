"""TensorBoard logs of `dpsgd a2c` (written when tensorboard is installed; `make test` installs it)."""

import json
import sys

import pytest

from conftest import dpsgd_cmd, run


def test_a2c_writes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = run(dpsgd_cmd("a2c", "--env", "CartPole-v1", "--total-steps", 3000, "--eval-freq", 1000,
                      "--eval-episodes", 2, "--out", tmp_path, "--no-progress"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"charts/episodic_return", "eval/episodic_return", "charts/SPS"} <= tags, tags
    m = json.loads((tmp_path / "metrics.json").read_text())
    sps = ea.Scalars("charts/SPS")
    assert len(sps) == 1 and abs(sps[0].value - m["env_steps_per_second"]) < 1e-3 * m["env_steps_per_second"]
    train = ea.Scalars("charts/episodic_return")
    assert len(train) >= 10 and all(e.value >= 1 for e in train)  # CartPole returns are >= 1
    assert [e.step for e in train] == sorted(e.step for e in train)
