"""``dpsgd a3c``: the A3C baseline (torch.multiprocessing Hogwild workers, shared RMSprop).

Importing this module is cheap: torch and gymnasium load only when the command runs.
"""

from __future__ import annotations

import sys

from algorithms.hsa2c.cli import EXIT_USAGE, add_rl_options, hparams_from_args, summary_line


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "a3c", help="A3C baseline: worker processes, shared model and RMSprop (Mnih et al. 2016)",
        description="Train the A3C baseline: --threads worker processes (default: one per core) update a "
                    "shared model lock-free with a shared-statistics RMSprop. Run it without mpiexec.")
    add_rl_options(p, n_envs=1, threads_help="worker processes (default: one per core)")
    p.add_argument("--workers", dest="threads", type=int, help="same as --threads")
    p.add_argument("--start-method", default=None, help="fork (default on Linux) | spawn | forkserver")
    p.set_defaults(func=run, threads=None)


def run(args) -> int:
    from dpsgd.config import ConfigError
    from dpsgd.runner import mpi_world_size_from_env

    from algorithms.hsa2c.cli import require_rl

    require_rl("a3c")
    from algorithms.hsa2c.envs import EnvError
    from algorithms.hsa2c.nets import UnsupportedSpace

    if mpi_world_size_from_env() > 1:
        raise ConfigError("a3c is the single-machine baseline: run it without mpiexec (use a2c under MPI)")
    if args.total_steps is None or args.total_steps <= 0:
        raise ConfigError(f"--total-steps must be a positive integer, got {args.total_steps}")
    if args.start_method not in (None, "fork", "spawn", "forkserver"):
        raise ConfigError(f"unknown --start-method {args.start_method!r}; choose fork, spawn or forkserver")
    from .a3c import A3C

    h = hparams_from_args(args)
    h["progress"] = not args.no_progress
    workers = h.pop("threads")
    try:
        a3c = A3C(args.env, workers=workers, start_method=args.start_method, **h)
    except (EnvError, UnsupportedSpace) as e:
        raise ConfigError(str(e)) from None
    import json
    import os

    from dpsgd.checkpoint import atomic_write_text

    os.makedirs(args.out, exist_ok=True)  # the run directory exists from the start
    cfg = {"command": "a3c", "argv": sys.argv[1:], "env": args.env, "total_steps": args.total_steps,
           "workers": a3c.workers, "start_method": a3c.start_method,
           "hyperparameters": a3c.agent.config_dict()["hyperparameters"]}
    atomic_write_text(os.path.join(args.out, "config.json"), json.dumps(cfg, indent=1, default=str))
    a3c.learn(args.total_steps, out=args.out)
    a3c.write_run(args.out)
    print(summary_line("a3c", a3c.metrics))
    return 0


__all__ = ["register", "run", "EXIT_USAGE"]
