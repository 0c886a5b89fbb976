"""HSA2C's hyperparameters: one typed dataclass whose fields carry their docs.

Defaults are Stable-Baselines3 A2C's (rl-zoo CartPole-v1). For Atari use the A2C Atari settings
(``n_envs=16, ent_coef=0.01, vf_coef=0.25, optimizer="rmsprop_tf"``; ``benchmarks/atari.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from dpsgd.checks import ConfigError, check_number


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

        num = check_number  # raises ConfigError
        num("eval_episodes", h["eval_episodes"], lo=0, int_type=True)  # 0: no evaluation
        for name in ("n_envs", "n_steps", "eval_freq", "solve_evals", "local_steps"):
            num(name, h[name], lo=0, lo_open=True, int_type=True)
        num("threads", h["threads"], lo=0, lo_open=True, int_type=True, none_ok=True)  # None: see HSA2C.train_config
        num("gamma", h["gamma"], lo=0, hi=1, lo_open=True)
        num("gae_lambda", h["gae_lambda"], lo=0, hi=1)
        num("ent_coef", h["ent_coef"], lo=0)
        num("vf_coef", h["vf_coef"], lo=0)
        num("lr", h["lr"], lo=0, lo_open=True)
        num("rms_alpha", h["rms_alpha"], lo=0, hi=1, hi_open=True)
        num("opt_eps", h["opt_eps"], lo=0, lo_open=True)
        num("eval_seconds", h["eval_seconds"], lo=0, lo_open=True)
        num("max_grad_norm", h["max_grad_norm"], lo=0, lo_open=True, none_ok=True)
        num("target_return", h["target_return"], none_ok=True)
        num("max_seconds", h["max_seconds"], lo=0, lo_open=True, none_ok=True)
        need(h["backend"] in ("auto", "torch"), f"unknown backend {h['backend']!r}; choose auto or torch")
        need(h["env_backend"] in ("auto", "ale", "python"),
             f"unknown env_backend {h['env_backend']!r}; choose auto, ale or python")
        need(h["optimizer"] in ("rmsprop", "rmsprop_tf", "adam", "sgd"),
             f"unknown optimizer {h['optimizer']!r}; choose rmsprop, rmsprop_tf, adam or sgd")
        need(all(isinstance(k, (int, np.integer)) and k > 0 for k in h["hidden"]),
             f"hidden sizes must be positive integers, got {list(h['hidden'])}")


#: the defaults as a dict (for callers that build hyperparameters by name)
DEFAULTS = {f.name: f.default for f in fields(HSA2CConfig)}
