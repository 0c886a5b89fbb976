"""Environment creation: any Gymnasium id, Atari (ale-py) with the A2C/A3C preprocessing, MinAtar.

* ``ALE/<Game>-v5`` (and the old ``<Game>NoFrameskip-v4`` ids): the standard preprocessing of
  the A2C/A3C literature - no-op starts (30), frame skip 4 with max-pooling, 84x84 grey, frame
  stack 4; for training also reward clipping to {-1, 0, 1}, episodic life (a lost life ends the
  training episode, the game goes on) and FIRE on reset where the game needs it.
* ``MinAtar/<Game>-v0|v1``: registered through ``minatar.gym.register_envs()``; observations are
  turned from 10x10xC booleans into C x 10 x 10 uint8 (values 0/1, not scaled).
* Anything else: ``gymnasium.make(id)``.

Every environment is wrapped by :class:`EpisodeMonitor` first, which records the true episode
return and length (before reward clipping and episodic life) in ``info["episode"]``.

:class:`VecEnv` steps a list of environments with "same-step" autoreset: when an episode ends,
its final observation is kept (for bootstrapping on truncation) and the environment is reset
at once, so the observation returned is the first of the next episode. :class:`AleVecEnv` does
the same for Atari training with ale-py's C++ vector environment (emulators and preprocessing
outside the GIL); :func:`make_vec_env` picks between the two (``env_backend`` of the agent).
"""

from __future__ import annotations

import difflib

import numpy as np


class EnvError(ValueError):
    """An environment id that cannot be made, or unsupported spaces (one-line message)."""


_registered: set = set()


def _register_all(env_id: str = "") -> None:
    """Register the test envs, and ale-py's / MinAtar's ids when ``env_id`` needs them (imports are slow)."""
    import gymnasium

    if "base" not in _registered:
        if "dpsgd/Identity-v0" not in gymnasium.registry:
            gymnasium.register("dpsgd/Identity-v0", entry_point="algorithms.hsa2c.envs:IdentityEnv",
                               max_episode_steps=20)
            gymnasium.register("dpsgd/IdentityBox-v0", entry_point="algorithms.hsa2c.envs:IdentityBoxEnv",
                               max_episode_steps=20)
        _registered.add("base")
    if is_atari(env_id) and "ale" not in _registered:
        try:
            import ale_py

            gymnasium.register_envs(ale_py)
            _registered.add("ale")
        except ImportError:
            pass
    if is_minatar(env_id) and "minatar" not in _registered:
        try:
            import minatar.gym as mgym

            if "MinAtar/Breakout-v1" not in gymnasium.registry:
                mgym.register_envs()
            _registered.add("minatar")
        except ImportError:
            pass


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")


def check_env_id(env_id: str) -> None:
    """Raise EnvError with a one-line message when ``env_id`` is not a registered id."""
    import gymnasium

    if not isinstance(env_id, str) or not env_id:
        raise EnvError(f"environment id must be a non-empty string, got {env_id!r}")
    _register_all(env_id)
    if env_id in gymnasium.registry:
        return
    hint = ""
    if is_atari(env_id):
        try:
            import ale_py  # noqa: F401
        except ImportError:
            raise EnvError(f"unknown environment {env_id!r}: Atari needs ale-py (pip install 'dpsgd[rl]')") from None
    if is_minatar(env_id):
        try:
            import minatar  # noqa: F401
        except ImportError:
            raise EnvError(f"unknown environment {env_id!r}: MinAtar needs minatar (pip install 'dpsgd[rl]')") from None
    close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3, cutoff=0.6)
    if close:
        hint = "; did you mean " + " or ".join(close) + "?"
    raise EnvError(f"unknown environment {env_id!r}{hint}")


# ----------------------------------------------------------------------------- tiny test envs


def _identity_classes():
    import gymnasium as gym

    class IdentityEnv(gym.Env):
        """Observe a one-hot class, get reward 1 for naming it (Discrete): learned in seconds."""

        def __init__(self, n: int = 4):
            self.n = n
            self.observation_space = gym.spaces.Box(0.0, 1.0, (n,), np.float32)
            self.action_space = gym.spaces.Discrete(n)
            self.k = 0

        def _obs(self):
            o = np.zeros(self.n, np.float32)
            o[self.k] = 1.0
            return o

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.k = int(self.np_random.integers(self.n))
            return self._obs(), {}

        def step(self, action):
            r = 1.0 if int(action) == self.k else 0.0
            self.k = int(self.np_random.integers(self.n))
            return self._obs(), r, False, False, {}

    class IdentityBoxEnv(gym.Env):
        """Observe x in [-1, 1], act a in [-1, 1], reward -|a - x| (Box actions)."""

        def __init__(self):
            self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.x = np.zeros(1, np.float32)

        def reset(self, seed=None, options=None):
            super().reset(seed=seed)
            self.x = self.np_random.uniform(-1, 1, 1).astype(np.float32)
            return self.x.copy(), {}

        def step(self, action):
            r = -float(abs(float(np.asarray(action).reshape(-1)[0]) - self.x[0]))
            self.x = self.np_random.uniform(-1, 1, 1).astype(np.float32)
            return self.x.copy(), r, False, False, {}

    return IdentityEnv, IdentityBoxEnv


def __getattr__(name):  # the env classes are built lazily (gymnasium is imported on demand)
    if name in ("IdentityEnv", "IdentityBoxEnv"):
        a, b = _identity_classes()
        globals().update(IdentityEnv=a, IdentityBoxEnv=b)
        return globals()[name]
    raise AttributeError(name)


# ----------------------------------------------------------------------------- wrappers


def _wrappers():
    import gymnasium as gym

    class EpisodeMonitor(gym.Wrapper):
        """info["episode"] = {"r": return, "l": length} when a true episode ends."""

        def __init__(self, env):
            super().__init__(env)
            self._ret, self._len = 0.0, 0

        def reset(self, **kw):
            self._ret, self._len = 0.0, 0
            return self.env.reset(**kw)

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            self._ret += float(r)
            self._len += 1
            if term or trunc:
                info = dict(info)
                info["episode"] = {"r": self._ret, "l": self._len}
            return obs, r, term, trunc, info

    class EpisodicLife(gym.Wrapper):
        """A lost life ends the training episode; reset() continues the game unless it is over."""

        def __init__(self, env):
            super().__init__(env)
            self.lives = 0
            self.game_over = True

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            self.game_over = term or trunc
            lives = self.env.unwrapped.ale.lives()
            if 0 < lives < self.lives:
                term = True
            self.lives = lives
            return obs, r, term, trunc, info

        def reset(self, **kw):
            if self.game_over:
                obs, info = self.env.reset(**kw)
            else:
                obs, _, term, trunc, info = self.env.step(0)  # no-op: continue after the lost life
                if term or trunc:
                    obs, info = self.env.reset(**kw)
            self.game_over = False
            self.lives = self.env.unwrapped.ale.lives()
            return obs, info

    class FireReset(gym.Wrapper):
        """Press FIRE after reset in games that wait for it (Breakout...)."""

        def reset(self, **kw):
            obs, info = self.env.reset(**kw)
            obs, _, term, trunc, info = self.env.step(1)
            if term or trunc:
                obs, info = self.env.reset(**kw)
            return obs, info

    class ClipReward(gym.RewardWrapper):
        def reward(self, r):
            return float(np.sign(r))

    class ChannelsFirst(gym.ObservationWrapper):
        """H x W x C booleans (MinAtar) -> C x H x W uint8."""

        def __init__(self, env):
            super().__init__(env)
            h, w, c = env.observation_space.shape
            self.observation_space = gym.spaces.Box(0, 1, (c, h, w), np.uint8)

        def observation(self, obs):
            return np.ascontiguousarray(np.transpose(obs, (2, 0, 1)), dtype=np.uint8)

    return EpisodeMonitor, EpisodicLife, FireReset, ClipReward, ChannelsFirst


def make_env(env_id: str, train: bool = True, seed: int | None = None, **kwargs):
    """One environment with the right preprocessing (``train`` adds Atari's clipping and lives)."""
    import gymnasium as gym

    check_env_id(env_id)
    EpisodeMonitor, EpisodicLife, FireReset, ClipReward, ChannelsFirst = _wrappers()
    try:
        if is_atari(env_id):
            from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

            kw = dict(kwargs)
            kw.setdefault("frameskip", 1)  # AtariPreprocessing does the frame skip (with max-pooling)
            env = gym.make(env_id, **kw)
            env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
                                     terminal_on_life_loss=False, scale_obs=False)
            env = EpisodeMonitor(env)
            if train:
                env = EpisodicLife(env)
            meanings = env.unwrapped.get_action_meanings()
            if len(meanings) >= 3 and meanings[1] == "FIRE":
                env = FireReset(env)
            if train:
                env = ClipReward(env)
            env = FrameStackObservation(env, 4)
        elif is_minatar(env_id):
            env = ChannelsFirst(EpisodeMonitor(gym.make(env_id, **kwargs)))
        else:
            env = EpisodeMonitor(gym.make(env_id, **kwargs))
    except EnvError:
        raise
    except Exception as e:  # noqa: BLE001 - a one-line reason
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EnvError(f"cannot make environment {env_id!r}: {msg}") from None
    if seed is not None:
        env.action_space.seed(int(seed))
    return env


def env_spaces(env_id: str):
    """(observation_space, action_space) after preprocessing."""
    env = make_env(env_id, train=True)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


class VecEnv:
    """A list of environments stepped in turn, with same-step autoreset.

    ``step(actions)`` returns ``obs, rewards, terminated, truncated, final_obs, episodes`` where
    ``final_obs`` maps env index -> last observation of an episode that ended (truncated or
    terminated) at this step and ``episodes`` lists the ``info["episode"]`` dicts of true episode ends.
    """

    def __init__(self, env_id: str, n: int, seed: int, train: bool = True, **kwargs):
        self.envs = [make_env(env_id, train=train, **kwargs) for _ in range(n)]
        self.n = n
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        first = [e.reset(seed=int(seed) + i)[0] for i, e in enumerate(self.envs)]
        for i, e in enumerate(self.envs):
            e.action_space.seed(int(seed) + i)
        self.obs = np.stack([np.asarray(o) for o in first])
        self.rewards = np.zeros(n, np.float32)
        self.terminated = np.zeros(n, bool)
        self.truncated = np.zeros(n, bool)

    def step(self, actions):
        final_obs = {}
        episodes = []
        obs = self.obs
        for i, env in enumerate(self.envs):
            # a numpy scalar (not .item()): Discrete.contains checks a Python int much more slowly
            o, r, term, trunc, info = env.step(actions[i])
            self.rewards[i] = r
            self.terminated[i] = term
            self.truncated[i] = trunc
            if term or trunc:
                final_obs[i] = np.asarray(o)
                ep = info.get("episode")
                if ep is not None:
                    episodes.append(ep)
                o, _ = env.reset()
            obs[i] = o
        return obs, self.rewards, self.terminated, self.truncated, final_obs, episodes

    def close(self):
        for e in self.envs:
            e.close()


class AleVecEnv:
    """Atari training environments stepped by ale-py's C++ vector environment.

    The same preprocessing as :func:`make_env` (``train=True``) - no-op starts, frame skip 4 with
    max-pooling, 84x84 grey, frame stack 4, rewards clipped to {-1, 0, 1}, a lost life ends the
    training episode while the game goes on, FIRE on reset - but the emulators, the preprocessing
    and the frame stack run in C++ outside the GIL (``num_threads`` threads, default 1: the
    framework's threads are the parallelism). Two differences from the Python wrappers: after a
    lost life the game continues without pressing FIRE (the agent has FIRE among its actions), and
    no-op starts draw 0-29 no-ops instead of 1-30.

    The interface and the autoreset are :class:`VecEnv`'s: episodes end in ``terminated`` /
    ``truncated``; a game that is over (or cut at the frame limit) has its final observation in
    ``final_obs`` and is reset at once. ``episodes`` carries the true (unclipped) game returns.
    """

    def __init__(self, env_id: str, n: int, seed: int, num_threads: int = 1):
        import gymnasium
        from ale_py.vector_env import AtariVectorEnv

        check_env_id(env_id)
        spec = gymnasium.spec(env_id).kwargs
        self.v = AtariVectorEnv(
            spec["game"], n, num_threads=num_threads, repeat_action_probability=spec.get("repeat_action_probability", 0.0),
            full_action_space=spec.get("full_action_space", False),
            max_num_frames_per_episode=spec.get("max_num_frames_per_episode", 108_000),
            autoreset_mode="NextStep", img_height=84, img_width=84, grayscale=True, stack_num=4, frameskip=4,
            maxpool=True, noop_max=30, episodic_life=False, life_loss_info=True, reward_clipping=False,
            use_fire_reset=True)
        self.n = n
        self.observation_space = self.v.single_observation_space
        self.action_space = self.v.single_action_space
        obs, info = self.v.reset(seed=int(seed))
        self.obs = np.array(obs)
        self.lives = np.array(info["lives"])
        self.rewards = np.zeros(n, np.float32)
        self._ret = np.zeros(n)
        self._len = np.zeros(n, np.int64)

    def step(self, actions):
        obs, r, term, trunc, info = self.v.step(np.asarray(actions, np.int64))
        obs = np.array(obs)
        r = np.asarray(r, np.float64)
        term = np.asarray(term, bool).copy()
        trunc = np.asarray(trunc, bool).copy()
        lives = np.array(info["lives"])  # a copy: reset below writes into it
        self._ret += r
        self._len += 1
        np.sign(r, out=r)
        self.rewards[:] = r
        final_obs, episodes = {}, []
        # a termination with a life lost and lives left is the end of a training episode only: the
        # game goes on (no reset); anything else that ends (game over, frame limit) is reset now
        life_lost = term & (lives > 0) & (lives < self.lives)
        over = (term & ~life_lost) | trunc
        self.lives = lives
        if over.any():
            idx = np.flatnonzero(over)
            for i in idx:
                final_obs[int(i)] = obs[i].copy()
                episodes.append({"r": float(self._ret[i]), "l": int(self._len[i])})
            self._ret[idx] = 0.0
            self._len[idx] = 0
            # ale-py returns every environment's observation and lives, the reset ones new
            o2, info2 = self.v.reset(options={"reset_mask": over})
            obs[idx] = np.asarray(o2)[idx]
            self.lives[idx] = np.asarray(info2["lives"])[idx]
        self.obs = obs
        return obs, self.rewards, term, trunc, final_obs, episodes

    def close(self):
        self.v.close()


def ale_vector_available() -> bool:
    try:
        from ale_py.vector_env import AtariVectorEnv  # noqa: F401
    except ImportError:
        return False
    return True


def make_vec_env(env_id: str, n: int, seed: int, train: bool = True, backend: str = "auto", **kwargs):
    """:class:`AleVecEnv` for Atari training (``backend`` "auto" or "ale") when ale-py has its vector
    environment and no extra environment arguments are given; :class:`VecEnv` otherwise."""
    if backend not in ("auto", "ale", "python"):
        raise EnvError(f"unknown environment backend {backend!r}; choose auto, ale or python")
    use_ale = backend != "python" and train and is_atari(env_id) and not kwargs and ale_vector_available()
    if backend == "ale" and not use_ale:
        raise EnvError(f"environment backend 'ale' needs an Atari id without extra arguments and ale-py >= 0.10 "
                       f"(got {env_id!r})")
    if use_ale:
        return AleVecEnv(env_id, n, seed)
    return VecEnv(env_id, n, seed=seed, train=train, **kwargs)
