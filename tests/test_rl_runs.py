"""Long RL runs a user can watch, stop and resume: live files, SIGTERM, --resume, GIFs, evaluate."""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gymnasium")

from conftest import ROOT, clean_env  # noqa: E402


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _a2c(out, *extra):
    return [sys.executable, "-m", "dpsgd.launch", "a2c", "--env", "CartPole-v1", "--out", str(out),
            "--eval-freq", "5000", "--eval-episodes", "2", "--no-progress", "--seed", "3", *map(str, extra)]


def _wait_for(pred, proc, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended before {what}:\n{out}\n{err}")
        time.sleep(0.2)
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"no {what} after {timeout} s:\n{out}\n{err}")


def test_live_files_sigterm_and_resume(tmp_path):
    """progress.csv, config.json and TensorBoard events exist while the run trains; SIGTERM ends it
    cleanly with a loadable checkpoint and model; every file of the run is 0644 (umask 022);
    --resume continues the step count and the optimizer statistics."""
    from algorithms.hsa2c import HSA2C
    from dpsgd import checkpoint as ckpt

    out = tmp_path / "run"
    # the usual umask, whatever the test runner's (e.g. 077): the run's files must then be 0644
    proc = subprocess.Popen(_a2c(out, "--total-steps", 50_000_000, "--checkpoint-every", 1), cwd=ROOT,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            umask=0o022)
    try:
        def live():
            p = out / "progress.csv"
            if not (p.is_file() and (out / "config.json").is_file()):
                return False
            kinds = {r["kind"] for r in _rows(p)}
            return {"train", "eval"} <= kinds and (out / "checkpoints" / "shard0.npz").is_file()

        _wait_for(live, proc, 120, "live progress.csv rows and a checkpoint")
        assert proc.poll() is None  # still training: the files are live, not written at the end
        tb = [f for f in os.listdir(out / "tb") if f.startswith("events.out.tfevents.")]
        assert tb and os.path.getsize(out / "tb" / tb[0]) > 0
        assert (out / "model.pt").is_file()  # saved at the evaluations: `dpsgd evaluate OUT` works now
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "SIGTERM" in stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["stopped_by_signal"] == "SIGTERM"
    assert 0 < m["env_steps"] < 50_000_000
    arrays, meta = ckpt.load_latest(str(out / "checkpoints"), 0)
    assert meta["total_updates"] * 40 == m["env_steps"]  # the final checkpoint is the final model
    # every file is 0644, those written atomically (model, metrics, config, checkpoints) through
    # mkstemp's 0600 temporary files too
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {"model.pt", "model.json", "metrics.json", "progress.csv", "config.json",
            "checkpoints/shard0.npz", "checkpoints/shard0.prev.npz"} <= set(modes)
    assert all(mode == 0o644 for mode in modes.values()), {f: oct(mode) for f, mode in modes.items()}
    # the worker's RMSprop statistics are in the checkpoint: one per parameter, an average of
    # squared gradients clipped to norm 0.5 (--max-grad-norm), so they sum to at most 0.25
    sq = arrays["local_opt_rmsprop_sq"]
    assert sq.shape == arrays["w"].shape and np.all(sq >= 0) and 0 < sq.sum() <= 0.5 ** 2 * (1 + 1e-5)
    # and they come back on resume: a resumed run with no update left saves them unchanged
    again = HSA2C("CartPole-v1", seed=3, eval_episodes=0)
    cfg = again.train_config(m["env_steps"])
    cfg.resume, cfg.checkpoint_dir = str(out / "checkpoints"), str(tmp_path / "again")
    again.learn(m["env_steps"], config=cfg)
    np.testing.assert_array_equal(ckpt.load_latest(cfg.checkpoint_dir, 0)[0]["local_opt_rmsprop_sq"], sq)
    # the training clock (evaluations excluded) and the evaluation seconds are in it too
    clock = arrays["alg_clock"]
    assert abs(clock[0] - m["train_seconds"]) < 1.0 and abs(clock[1] - m["eval_seconds"]) < 1.0
    agent = HSA2C.load(str(out))
    assert agent.predict(np.zeros(4, np.float32)) in (0, 1)
    last = max(int(r["env_steps"]) for r in _rows(out / "progress.csv"))

    # resume into the same directory: progress.csv goes on from the step count of the checkpoint
    r = subprocess.run(_a2c(out, "--total-steps", m["env_steps"] + 4000, "--resume", out), cwd=ROOT,
                       env=clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "start afresh" not in r.stdout + r.stderr  # the RMSprop statistics came back
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["resumed_at_env_steps"] == m["env_steps"]
    assert m2["env_steps"] == m["env_steps"] + 4000
    # the whole run's training clock goes on from the checkpoint's
    assert abs(m2["train_seconds_total"] - (m["train_seconds"] + m2["train_seconds"])) < 2.0
    rows = _rows(out / "progress.csv")
    assert max(int(r["env_steps"]) for r in rows) > last
    steps = [int(r["env_steps"]) for r in rows]
    assert steps.index(max(steps)) > len([s for s in steps if s <= last]) - 1  # appended, not rewritten


def test_resume_continues_the_training_clock():
    """--resume continues the checkpoint's training clock, not the server's seconds (which include
    the earlier run's evaluations); a checkpoint without a clock falls back to those seconds."""
    from algorithms.hsa2c import HSA2C

    a = HSA2C("CartPole-v1", eval_episodes=0)
    a._reset_run_state()
    a.restore_arrays({"clock": np.array([100.0, 7.0])})
    a.resumed(10, 500.0)
    assert 100.0 <= a._wall() < 101.0 and a._eval_seconds_total() == 7.0
    a._reset_run_state()
    a.restore_arrays({})
    a.resumed(10, 500.0)
    assert 500.0 <= a._wall() < 501.0


def test_losses_rows_have_the_loss_parts(tmp_path, monkeypatch):
    from algorithms.hsa2c import HSA2C, runlog

    out = tmp_path / "r"
    monkeypatch.setattr(runlog, "FLUSH_SECONDS", 0.0)  # a losses row after every update
    monkeypatch.setattr(runlog, "LOSS_SAMPLE_SECONDS", 0.0)  # with every update's loss parts
    HSA2C("CartPole-v1", eval_episodes=0, seed=1).learn(4000, out=str(out))
    rows = [r for r in _rows(out / "progress.csv") if r["kind"] == "losses" and r["entropy"]]
    assert len(rows) > 10
    ent = [float(r["entropy"]) for r in rows]
    assert all(0 < e <= np.log(2) + 1e-6 for e in ent)  # two actions
    assert all(float(r["value_loss"]) >= 0 for r in rows)
    assert any(r["sps"] for r in rows) and all(float(r["sps"]) > 0 for r in rows if r["sps"])


def test_write_gif_makes_an_animated_gif(tmp_path):
    from PIL import Image

    from algorithms.hsa2c.gif import GifError, write_gif

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 10, 3), dtype=np.uint8) for _ in range(5)]
    path = tmp_path / "a.gif"
    assert write_gif(frames, str(path), fps=10, scale=2) == 5
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size == (20, 24)
        im.seek(3)
        assert np.array_equal(np.asarray(im.convert("RGB"))[::2, ::2], frames[3])  # lossless palette
    with pytest.raises(GifError, match="no frames"):
        write_gif([], str(tmp_path / "b.gif"))
    with pytest.raises(GifError, match="uint8"):
        write_gif([np.zeros((4, 4), np.uint8)], str(tmp_path / "c.gif"))


def test_evaluate_a_saved_atari_model_with_a_gif(tmp_path):
    pytest.importorskip("ale_py")
    from PIL import Image

    from algorithms.hsa2c import HSA2C
    from test_rl_cli import dpsgd

    agent = HSA2C("ALE/Pong-v5", n_envs=2)
    agent.params = agent.init_params(np.random.default_rng(0))
    agent.save(str(tmp_path / "pong"))
    gif = tmp_path / "pong.gif"
    r = dpsgd("evaluate", tmp_path / "pong", "--episodes", 1, "--gif", gif, "--gif-frames", 8, "--gif-every", 3)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["episodes"] == 1 and -21 <= res["return_mean"] <= 21
    assert res["gif"]["frames"] == 8 and res["gif"]["episode_steps"] > 24
    with Image.open(gif) as im:
        # the full-colour screen; Pillow merges identical consecutive frames (the serve's pause)
        assert 1 < im.n_frames <= 8 and im.size == (160, 210)
    bad = dpsgd("evaluate", tmp_path / "pong", "--gif", gif, "--gif-frames", 0)
    assert bad.returncode == 2 and "--gif-frames" in bad.stderr


def test_loss_parts_are_sampled(tmp_path, monkeypatch):
    """Only one update per LOSS_SAMPLE_SECONDS computes its loss parts (the rows' means are of a
    sample); the other rows of the run still come, without them."""
    from algorithms.hsa2c import HSA2C, runlog

    out = tmp_path / "r"
    monkeypatch.setattr(runlog, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(runlog, "LOSS_SAMPLE_SECONDS", 1e9)  # the first update only
    HSA2C("CartPole-v1", eval_episodes=0, seed=1).learn(4000, out=str(out))
    rows = [r for r in _rows(out / "progress.csv") if r["kind"] == "losses"]
    assert len(rows) > 10 and len([r for r in rows if r["entropy"]]) == 1
