"""Run configuration of the framework, validated before any MPI work starts."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .checks import ConfigError, check_number  # noqa: F401 (ConfigError: re-exported)
from .rules import RuleConfig

SCHEDULES = ("constant", "power", "linear")
LOCAL_OPTIMIZERS = ("sgd", "rmsprop", "rmsprop_tf", "adam")


@dataclass
class TrainConfig:
    """Everything the framework needs to run an algorithm."""

    #: server update rule (sgd, asgd, ssgd, dc-asgd-c, dc-asgd-a) and its parameters
    rule: RuleConfig = field(default_factory=RuleConfig)
    #: base step size
    lr: float = 0.01
    #: step-size schedule: constant lr; power lr*(tau0 + t)^-kappa; linear decay to 0 at the end
    schedule: str = "constant"
    tau0: float = 1.0
    kappa: float = 0.0
    #: rule applied by each thread to the rank's local buffer: sgd, or rmsprop/adam with
    #: statistics shared lock-free by the rank's threads (the A3C "shared RMSprop")
    local_optimizer: str = "sgd"
    rms_alpha: float = 0.99
    adam_betas: tuple = (0.9, 0.999)
    opt_eps: float = 1e-5
    #: local updates (summed over a rank's threads) between two pushes
    local_steps: int = 1
    #: a one-thread worker keeps computing while its push and pull are in flight: a communication
    #: thread does the exchange, and the answer is merged when the next local updates are done
    #: (pipelined, depth 1: each push's gradients were computed one exchange earlier; deterministic,
    #: and modelled by ``simulate(..., overlap=True)``). Workers with several threads already
    #: overlap (one thread pushes while the others compute) and ignore it.
    overlap: bool = False
    #: threads per rank (None: cores // ranks on this machine, at least 1)
    threads: int | None = None
    #: stop after this many updates in total (all workers, all threads)
    total_updates: int = 1000
    #: stop after this many seconds (None: no limit)
    max_seconds: float | None = None
    #: drop pushes whose staleness exceeds this bound (None: no bound)
    max_staleness: int | None = None
    #: number of server ranks that each own a slice of the parameters
    n_servers: int = 1
    #: seconds without a push after which the server reports a worker; for SSGD, whose rounds
    #: wait for every worker, it is also the deadline after which the run stops with an error
    worker_timeout: float | None = 120.0
    #: consecutive rejected (NaN/Inf, wrong size or dtype) pushes from one worker that stop the run
    max_bad_pushes: int = 10
    #: seconds between checkpoints (None: only at the end when checkpoint_dir is set)
    checkpoint_every: float | None = None
    checkpoint_dir: str | None = None
    #: directory of a checkpoint to continue from
    resume: str | None = None
    #: seconds between evaluations of the server's model with Algorithm.evaluate (None: never)
    eval_every: float | None = None
    #: updates (all workers) between evaluations, an alternative to eval_every (None: never)
    eval_every_updates: int | None = None
    #: with eval_every: evaluate the starting model too, before any worker computes (the workers
    #: wait for it; off: the first evaluation comes eval_every seconds into training)
    eval_initial: bool = True
    #: evaluate the final model once more at the end (into metrics["final"])
    final_eval: bool = True
    seed: int = 0
    #: show a progress bar on the root rank
    progress: bool = True

    def validate(self, n_ranks: int = 1) -> "TrainConfig":
        """Raise ConfigError (one line) when the configuration cannot run on ``n_ranks``."""
        try:
            self.rule.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None

        def positive(name, value, integer=False):
            check_number(name, value, lo=0, lo_open=True, integer=integer)

        positive("lr", self.lr)
        positive("local_steps", self.local_steps, integer=True)
        positive("total_updates", self.total_updates, integer=True)
        positive("n_servers", self.n_servers, integer=True)
        positive("max_bad_pushes", self.max_bad_pushes, integer=True)
        if self.threads is not None:
            positive("threads", self.threads, integer=True)
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.local_optimizer not in LOCAL_OPTIMIZERS:
            raise ConfigError(
                f"unknown local optimizer {self.local_optimizer!r}; choose one of {', '.join(LOCAL_OPTIMIZERS)}"
            )
        if self.schedule == "power":
            if not self.tau0 > 0 or not self.kappa >= 0:
                raise ConfigError(f"power schedule needs tau0 > 0 and kappa >= 0, got {self.tau0}, {self.kappa}")
        for name in ("max_seconds", "checkpoint_every", "eval_every", "worker_timeout"):
            v = getattr(self, name)
            if v is not None:
                positive(name, v)
        if self.eval_every_updates is not None:
            positive("eval_every_updates", self.eval_every_updates, integer=True)
        check_number("max_staleness", self.max_staleness, lo=0, integer=True, none_ok=True)
        if n_ranks > 1:
            n_workers = n_ranks - self.n_servers
            if n_workers < 1:
                raise ConfigError(
                    f"{n_ranks} MPI ranks with {self.n_servers} server rank(s) leave no worker; "
                    f"run with at least {self.n_servers + 1} ranks"
                )
        elif self.n_servers > 1:
            raise ConfigError(
                f"n_servers={self.n_servers} needs an MPI run with at least {self.n_servers + 1} ranks "
                "(mpiexec -n N); one process has one in-process server"
            )
        n_workers = max(1, n_ranks - self.n_servers) if n_ranks > 1 else 1
        try:
            self.rule.validate(n_workers)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.resume is not None and not os.path.isdir(self.resume):
            raise ConfigError(f"--resume {self.resume}: no such directory")
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["rule"] = RuleConfig(**d.get("rule", {}))
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads(n_ranks_on_node: int = 1) -> int:
    """Threads per rank so that ranks x threads <= cores."""
    return max(1, available_cores() // max(1, n_ranks_on_node))


def ranks_on_this_node(world_size: int) -> int:
    """The ranks of a job of ``world_size`` on this host (MPICH's MPI_LOCALNRANKS, else all of them)."""
    return max(1, min(int(os.environ.get("MPI_LOCALNRANKS", world_size)), world_size))


def lr_at(config: TrainConfig, t: int) -> float:
    """Step size after ``t`` updates in total."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "power":
        return config.lr * (config.tau0 + t) ** (-config.kappa)
    return config.lr * max(0.0, 1.0 - t / config.total_updates)
