"""HSA2C's hyperparameters: one typed dataclass whose fields carry their docs.

Defaults are Stable-Baselines3 A2C's (rl-zoo CartPole-v1). For Atari use the A2C Atari settings
(``n_envs=16, ent_coef=0.01, vf_coef=0.25, optimizer="rmsprop_tf"``; ``benchmarks/atari.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from dpsgd.config import ConfigError


@dataclass
class HSA2CConfig:
    #: environments per framework thread (stepped as one batch)
    n_envs: int = 8
    #: rollout length T: each update uses T * n_envs transitions
    n_steps: int = 5
    #: discount
    gamma: float = 0.99
    #: 1: n-step returns bootstrapped at the end of the rollout (A2C/A3C); < 1: GAE(lambda)
    gae_lambda: float = 1.0
    #: weight of the policy's entropy bonus
    ent_coef: float = 0.0
    #: weight of the value loss
    vf_coef: float = 0.5
    #: clip the update's gradient to this L2 norm (None: no clipping)
    max_grad_norm: float | None = 0.5
    #: step size of the rank's local optimizer and the server
    lr: float = 7e-4
    #: rmsprop (torch's: eps outside the root, statistics from 0) | rmsprop_tf (TensorFlow's /
    #: SB3's RMSpropTFLike: eps inside, statistics from 1; use it for Atari) | adam | sgd
    optimizer: str = "rmsprop"
    #: RMSprop's decay of the squared-gradient statistics
    rms_alpha: float = 0.99
    #: RMSprop/Adam epsilon
    opt_eps: float = 1e-5
    #: normalise the advantages of each update to mean 0, std 1
    normalize_advantage: bool = False
    #: MLP layer sizes (vector observations)
    hidden: tuple = (64, 64)
    #: MLP activation: tanh | relu
    activation: str = "tanh"
    #: network: None (from the observation space) | mlp | nature_cnn | minatar_cnn
    arch: str | None = None
    #: initial log standard deviation of a Gaussian (Box) policy
    log_std_init: float = 0.0
    #: seed of the network, the environments and the threads' random streams
    seed: int = 0
    #: threads per rank (None: 1 for MLPs, where the GIL serialises them; cores / ranks for CNNs)
    threads: int | None = None
    #: server rule: sgd | asgd | ssgd | dc-asgd-c | dc-asgd-a | dc-asgd-i
    rule: str = "dc-asgd-a"
    #: DC-ASGD lambda (None: the rule's default)
    lam: float | None = None
    #: local updates of a rank between two pushes
    local_steps: int = 1
    #: one-thread workers keep computing while their push/pull is in flight (``TrainConfig.overlap``)
    overlap: bool = False
    #: step-size schedule: constant | power | linear
    schedule: str = "constant"
    #: env steps between two evaluations (one process)
    eval_freq: int = 5000
    #: deterministic episodes per evaluation (0: no evaluation)
    eval_episodes: int = 10
    #: under MPI: seconds between two evaluations of the server's model on rank 0
    eval_seconds: float = 5.0
    #: the run is solved when the mean evaluation return reaches this solve_evals times in a row
    target_return: float | None = None
    #: evaluations in a row at or above target_return
    solve_evals: int = 3
    #: stop once solved
    early_stop: bool = True
    #: extra keyword arguments of the environments (forces the Python wrappers for Atari)
    env_kwargs: dict | None = None
    #: show a progress bar
    progress: bool = False
    #: stop after this many seconds (None: no limit)
    max_seconds: float | None = None
    #: MLP gradient: auto (the hand-derived numpy one) | torch (autograd)
    backend: str = "auto"
    #: Atari training environments: auto/ale (ale-py's C++ vector env) | python (Gymnasium wrappers)
    env_backend: str = "auto"

    def __post_init__(self):
        try:
            self.hidden = tuple(self.hidden)
        except TypeError:
            raise ConfigError(f"hidden must be a sequence of layer sizes, got {self.hidden!r}") from None
        self.validate()

    @classmethod
    def from_dict(cls, d: dict, strict: bool = True) -> "HSA2CConfig":
        """``strict``: unknown names are an error (else ignored, e.g. an older model.json's extras)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown and strict:
            raise ConfigError(f"unknown hyperparameter(s): {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def validate(self) -> None:
        """Raise ConfigError (one line) for an invalid hyperparameter."""
        h = asdict(self)

        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        def finite(name):
            v = h[name]
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                 f"{name} must be a finite number, got {v!r}")
            return v

        need(isinstance(h["eval_episodes"], (int, np.integer)) and not isinstance(h["eval_episodes"], bool)
             and h["eval_episodes"] >= 0, f"eval_episodes must be an integer >= 0 (0: no evaluation), "
             f"got {h['eval_episodes']!r}")
        for name in ("n_envs", "n_steps", "eval_freq", "solve_evals", "local_steps", "threads"):
            v = h[name]
            if name == "threads" and v is None:
                continue  # chosen from the network: see HSA2C.train_config
            need(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0,
                 f"{name} must be a positive integer, got {v!r}")
        need(0 < finite("gamma") <= 1, f"gamma must be in (0, 1], got {h['gamma']}")
        need(0 <= finite("gae_lambda") <= 1, f"gae_lambda must be in [0, 1], got {h['gae_lambda']}")
        need(finite("ent_coef") >= 0, f"ent_coef must be >= 0, got {h['ent_coef']}")
        need(finite("vf_coef") >= 0, f"vf_coef must be >= 0, got {h['vf_coef']}")
        need(finite("lr") > 0, f"lr must be > 0, got {h['lr']}")
        need(0 <= finite("rms_alpha") < 1, f"rms_alpha must be in [0, 1), got {h['rms_alpha']}")
        need(finite("opt_eps") > 0, f"opt_eps must be > 0, got {h['opt_eps']}")
        need(finite("eval_seconds") > 0, f"eval_seconds must be > 0, got {h['eval_seconds']}")
        if h["max_grad_norm"] is not None:
            need(finite("max_grad_norm") > 0, f"max_grad_norm must be > 0 (or None), got {h['max_grad_norm']}")
        if h["target_return"] is not None:
            finite("target_return")
        if h["max_seconds"] is not None:
            need(finite("max_seconds") > 0, f"max_seconds must be > 0, got {h['max_seconds']}")
        need(h["backend"] in ("auto", "torch"), f"unknown backend {h['backend']!r}; choose auto or torch")
        need(h["env_backend"] in ("auto", "ale", "python"),
             f"unknown env_backend {h['env_backend']!r}; choose auto, ale or python")
        need(h["optimizer"] in ("rmsprop", "rmsprop_tf", "adam", "sgd"),
             f"unknown optimizer {h['optimizer']!r}; choose rmsprop, rmsprop_tf, adam or sgd")
        need(all(isinstance(k, (int, np.integer)) and k > 0 for k in h["hidden"]),
             f"hidden sizes must be positive integers, got {list(h['hidden'])}")


#: the defaults as a dict (for callers that build hyperparameters by name)
DEFAULTS = {f.name: f.default for f in fields(HSA2CConfig)}
