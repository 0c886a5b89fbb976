"""TensorBoard logs of the RL commands (written when tensorboard is installed; `make test` installs it).

The event files are read back with TensorBoard's own EventAccumulator, the way the tensorboard
UI loads them.
"""

import json

import pytest

from conftest import dpsgd_cmd, run

TAGS = {"charts/episodic_return", "eval/episodic_return", "charts/SPS"}


def _accumulator(tb_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir))
    ea.Reload()
    return ea


def _check_run(out, min_train_episodes):
    """Every expected tag has values, and they agree with metrics.json / progress.csv."""
    ea = _accumulator(out / "tb")
    tags = set(ea.Tags()["scalars"])
    assert TAGS <= tags, tags
    m = json.loads((out / "metrics.json").read_text())
    sps = ea.Scalars("charts/SPS")  # live runs add one every flush; the last is the whole run's rate
    assert sps and abs(sps[-1].value - m["env_steps_per_second"]) < 1e-3 * m["env_steps_per_second"]
    assert sps[-1].step == m["env_steps"]
    train = ea.Scalars("charts/episodic_return")
    assert len(train) >= min_train_episodes and all(e.value >= 1 for e in train)  # CartPole returns are >= 1
    assert [e.step for e in train] == sorted(e.step for e in train)
    evals = ea.Scalars("eval/episodic_return")
    assert [(e.step, pytest.approx(e.value)) for e in evals] == [
        (r["env_steps"], r["eval_return_mean"]) for r in m["evaluations"]]
    rows = (out / "progress.csv").read_text().splitlines()[1:]
    assert len(train) == sum(r.startswith("train,") for r in rows)
    return ea


def test_a2c_writes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    def cmd(steps):
        return dpsgd_cmd("a2c", "--env", "CartPole-v1", "--total-steps", steps, "--eval-freq", 1000,
                         "--eval-episodes", 2, "--out", tmp_path, "--no-progress")

    r = run(cmd(3000), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _check_run(tmp_path, 10)
    # a second run into the same --out replaces the logs, as it replaces progress.csv (it used to
    # add a second event file, and TensorBoard showed both runs' points as one run)
    r = run(cmd(1600), timeout=300)  # 8 envs x 5 steps = 40 steps per update
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    ea = _check_run(tmp_path, 5)
    assert ea.Scalars("charts/SPS")[-1].step == 1600


def test_a3c_writes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    r = run(dpsgd_cmd("a3c", "--env", "CartPole-v1", "--threads", 2, "--total-steps", 3000, "--eval-freq", 1000,
                      "--eval-episodes", 2, "--out", tmp_path, "--no-progress"), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _check_run(tmp_path, 10)
