"""The Atari training environments on ale-py's C++ vector environment (AleVecEnv) against the
Python wrappers (VecEnv + make_env): same spaces, same episode semantics, same autoreset contract."""

import numpy as np
import pytest

pytest.importorskip("gymnasium")
pytest.importorskip("ale_py")
envs = pytest.importorskip("algorithms.hsa2c.envs")
if not envs.ale_vector_available():
    pytest.skip("ale-py without its vector environment", allow_module_level=True)

from algorithms.hsa2c.envs import AleVecEnv, EnvError, VecEnv, make_vec_env  # noqa: E402


def _roll(env_id, n, env_seed, steps, seed=0):
    """Random actions for ``steps`` steps in a fresh AleVecEnv (closed afterwards); counts."""
    v = AleVecEnv(env_id, n, seed=env_seed)
    try:
        return _roll_env(v, steps, seed)
    finally:
        v.close()


def _roll_env(v, steps, seed):
    rng = np.random.default_rng(seed)
    n_act = v.action_space.n
    out = {"term": 0, "trunc": 0, "finals": 0, "episodes": [], "rewards": set()}
    for _ in range(steps):
        prev = v.obs.copy()
        obs, r, term, trunc, finals, eps = v.step(rng.integers(0, n_act, v.n))
        assert obs.shape == prev.shape and obs.dtype == np.uint8
        for i in finals:
            assert term[i] or trunc[i]
            assert finals[i].shape == obs.shape[1:]
        out["term"] += int(term.sum())
        out["trunc"] += int(trunc.sum())
        out["finals"] += len(finals)
        out["episodes"] += eps
        out["rewards"] |= set(np.unique(r).tolist())
    return out


def test_same_spaces_as_the_python_wrappers():
    a, p = AleVecEnv("ALE/Pong-v5", 2, seed=0), VecEnv("ALE/Pong-v5", 2, seed=0)
    try:
        assert a.obs.shape == p.obs.shape == (2, 4, 84, 84) and a.obs.dtype == p.obs.dtype == np.uint8
        assert a.action_space == p.action_space
    finally:
        a.close()
        p.close()


def test_breakout_lives_end_training_episodes_but_not_the_game():
    r = _roll("ALE/Breakout-v5", 4, 1, 1500)
    assert r["rewards"] <= {-1.0, 0.0, 1.0}  # clipped for training
    games = r["finals"]
    assert games >= 4 and len(r["episodes"]) == games
    # 5 lives: every game over follows four lost lives that were terminations without a reset
    assert r["term"] >= 5 * games
    assert all(e["l"] > 0 for e in r["episodes"])


def test_pong_episode_returns_are_unclipped_game_scores():
    r = _roll("ALE/Pong-v5", 4, 2, 1200)
    assert r["episodes"], "random Pong games last ~800-1200 agent steps"
    for e in r["episodes"]:
        assert -21 <= e["r"] <= 21 and float(e["r"]).is_integer()
        assert e["r"] <= -15  # a random player loses (the winner needs 21 points)
    assert r["term"] == r["finals"]  # Pong has no lives: every termination is a game over


def test_make_vec_env_chooses_the_backend():
    v = make_vec_env("ALE/Pong-v5", 1, 0)
    assert isinstance(v, AleVecEnv)
    v.close()
    for kw in (dict(backend="python"), dict(train=False), dict(obs_type="rgb")):
        v = make_vec_env("ALE/Pong-v5", 1, 0, **kw)
        assert isinstance(v, VecEnv)
        v.close()
    v = make_vec_env("CartPole-v1", 1, 0)
    assert isinstance(v, VecEnv)
    v.close()
    with pytest.raises(EnvError, match="backend 'ale'"):
        make_vec_env("CartPole-v1", 1, 0, backend="ale")
    with pytest.raises(EnvError, match="unknown environment backend"):
        make_vec_env("ALE/Pong-v5", 1, 0, backend="gpu")


@pytest.mark.parametrize("backend", ["ale", "python"])
def test_hsa2c_trains_on_either_backend(backend):
    torch = pytest.importorskip("torch")
    from algorithms.hsa2c.agent import HSA2C

    torch.set_num_threads(1)
    a = HSA2C("ALE/Pong-v5", n_envs=2, eval_episodes=0, env_backend=backend, threads=1)
    a.learn(100)
    assert a.metrics["env_steps"] >= 100 and np.isfinite(a.params).all()
