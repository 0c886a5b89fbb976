"""``dpsgd a2c`` (HSA2C training) and ``dpsgd evaluate`` (a saved model's deterministic return).

Importing this module is cheap: torch and gymnasium load only when a command runs.
"""

from __future__ import annotations

import argparse
import sys

from .tracker import EVAL_SEED

EXIT_USAGE = 2


def _hidden(s: str):
    try:
        out = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hidden takes comma-separated integers, got {s!r}") from None
    return out


def add_rl_options(p: argparse.ArgumentParser, *, n_envs: int = 8, n_steps: int = 5, lr: float = 7e-4,
                   threads_help: str = "threads per rank (default: 1 for vector observations, where the GIL "
                                       "serialises threads; cores / ranks on this machine for images)") -> None:
    """Options shared by ``a2c`` and ``a3c`` (the same network and loss code)."""
    p.add_argument("--env", required=True, help="Gymnasium id: CartPole-v1, ALE/Pong-v5, MinAtar/Breakout-v1 ...")
    p.add_argument("--total-steps", type=int, default=500_000, help="environment steps in total (default 5e5)")
    p.add_argument("--out", required=True, help="directory for metrics.json, progress.csv, the model and config")
    p.add_argument("--target-return", type=float, default=None,
                   help="solved when the mean evaluation return reaches this --solve-evals times in a row")
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--seed", type=int, default=0)
    h = p.add_argument_group("algorithm (defaults: Stable-Baselines3 A2C / rl-zoo CartPole)")
    h.add_argument("--n-envs", type=int, default=n_envs, help=f"environments per thread (default {n_envs})")
    h.add_argument("--n-steps", type=int, default=n_steps, help=f"rollout length (default {n_steps})")
    h.add_argument("--gamma", type=float, default=0.99)
    h.add_argument("--gae-lambda", type=float, default=1.0, help="1 = n-step returns (default), <1 = GAE")
    h.add_argument("--ent-coef", type=float, default=0.0)
    h.add_argument("--vf-coef", type=float, default=0.5)
    h.add_argument("--max-grad-norm", type=float, default=0.5)
    h.add_argument("--lr", type=float, default=lr, help=f"step size (default {lr})")
    h.add_argument("--optimizer", default="rmsprop",
                   help="rmsprop (default; torch's: eps outside the root, statistics from 0) | rmsprop_tf "
                        "(TensorFlow's / SB3's RMSpropTFLike: eps inside, statistics from 1; use it for Atari) "
                        "| adam | sgd")
    h.add_argument("--rms-alpha", type=float, default=0.99)
    h.add_argument("--opt-eps", type=float, default=1e-5)
    h.add_argument("--normalize-advantage", action="store_true")
    h.add_argument("--hidden", type=_hidden, default=(64, 64), help="MLP sizes, e.g. 64,64")
    h.add_argument("--activation", default="tanh", help="tanh | relu (MLP)")
    h.add_argument("--env-backend", default="auto", choices=("auto", "ale", "python"),
                   help="Atari training environments: auto/ale = ale-py's C++ vector environment (default), "
                        "python = one Gymnasium env per slot with Python wrappers")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-freq", type=int, default=5000, help="env steps between evaluations (default 5000)")
    e.add_argument("--eval-episodes", type=int, default=10, help="deterministic episodes per evaluation")
    e.add_argument("--solve-evals", type=int, default=3, help="evaluations in a row at the target (default 3)")
    e.add_argument("--no-early-stop", action="store_true", help="keep training after solving")
    e.add_argument("--max-seconds", type=float, default=None, help="stop after this wall time")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "a2c", help="HSA2C: advantage actor-critic on the parameter server (Gymnasium envs)",
        description="Train HSA2C (one process = synchronous A2C; under mpiexec -n N: N-1 asynchronous "
                    "workers around a DC-ASGD parameter server).")
    add_rl_options(p)
    g = p.add_argument_group("parameter server")
    g.add_argument("--rule", default="dc-asgd-a", help="sgd | asgd | ssgd | dc-asgd-c | dc-asgd-a (default) | dc-asgd-i")
    g.add_argument("--lam", type=float, default=None, help="DC-ASGD lambda (default: the rule's)")
    g.add_argument("--local-steps", type=int, default=1, help="local updates per rank between pushes")
    g.add_argument("--overlap", action="store_true",
                   help="a one-thread worker keeps computing while its push/pull is in flight (pipelined)")
    g.add_argument("--eval-seconds", type=float, default=5.0,
                   help="under MPI: seconds between evaluations of the server's model on rank 0")
    g.add_argument("--checkpoint-every", type=float, default=None,
                   help="seconds between checkpoints of the server's model (OUT/checkpoints)")
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from the checkpoints of an earlier run's --out DIR (the workers' "
                        "optimizer statistics start afresh)")
    p.set_defaults(func=run)


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="deterministic evaluation of a model saved by a2c or a3c",
                              description="Mean and std of the return of deterministic episodes.")
    p.add_argument("dir", help="run directory (model.pt + model.json)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="episode i uses seed + i")
    p.add_argument("--env", default=None, help="evaluate on another (compatible) environment id")
    p.add_argument("--gif", default=None, metavar="FILE",
                   help="also write an animated GIF of one deterministic episode (seed --seed) to FILE")
    p.add_argument("--gif-frames", type=int, default=600,
                   help="at most this many GIF frames (default 600), one every --gif-every agent steps")
    p.add_argument("--gif-every", type=int, default=2, help="agent steps between two GIF frames (default 2)")
    p.add_argument("--gif-fps", type=float, default=30.0, help="GIF frames per second (default 30)")
    p.set_defaults(func=run_evaluate)


def require_rl(cmd: str) -> None:
    """ConfigError (one line) when torch or gymnasium, the RL extra, is not installed."""
    import importlib.util

    from dpsgd.config import ConfigError

    missing = [m for m in ("torch", "gymnasium") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"dpsgd {cmd} needs {' and '.join(missing)}: pip install 'dpsgd[rl]' (torch==2.13.0 CPU, "
                          "gymnasium, ale-py, minatar)")


def _err(cmd: str, msg: str) -> int:
    print(f"dpsgd {cmd}: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def hparams_from_args(args) -> dict:
    return dict(n_envs=args.n_envs, n_steps=args.n_steps, gamma=args.gamma, gae_lambda=args.gae_lambda,
                ent_coef=args.ent_coef, vf_coef=args.vf_coef, max_grad_norm=args.max_grad_norm, lr=args.lr,
                optimizer=args.optimizer, rms_alpha=args.rms_alpha, opt_eps=args.opt_eps,
                normalize_advantage=args.normalize_advantage, hidden=args.hidden, activation=args.activation,
                seed=args.seed, threads=args.threads, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                target_return=args.target_return, solve_evals=args.solve_evals,
                early_stop=not args.no_early_stop, max_seconds=args.max_seconds, env_backend=args.env_backend)


def run(args) -> int:
    import os

    from dpsgd.config import ConfigError
    from dpsgd.launch import is_root_rank

    require_rl("a2c")
    from .envs import EnvError
    from .nets import UnsupportedSpace

    if args.total_steps is None or args.total_steps <= 0:
        return _err("a2c", f"--total-steps must be a positive integer, got {args.total_steps}")
    try:
        from .agent import HSA2C

        h = hparams_from_args(args)
        h.update(rule=args.rule, lam=args.lam, local_steps=args.local_steps, overlap=args.overlap,
                 eval_seconds=args.eval_seconds,
                 progress=not args.no_progress and is_root_rank())
        agent = HSA2C(args.env, **h)
        cfg = agent.train_config(args.total_steps)
        if args.checkpoint_every is not None:
            cfg.checkpoint_every = args.checkpoint_every
            cfg.checkpoint_dir = os.path.join(args.out, "checkpoints")
        if args.resume is not None:
            sub = os.path.join(args.resume, "checkpoints")
            cfg.resume = sub if os.path.isdir(sub) else args.resume
        from dpsgd.runner import mpi_world_size_from_env

        cfg.validate(mpi_world_size_from_env())
    except (EnvError, UnsupportedSpace) as e:
        raise ConfigError(str(e)) from None
    if is_root_rank():  # the run directory exists from the start (config.json; progress.csv as it trains)
        write_run_config(args.out, "a2c", args, agent, cfg)
    agent.learn(args.total_steps, config=cfg, out=args.out, append=args.resume is not None)
    if agent.metrics:
        agent.write_run(args.out)
        print(summary_line("a2c", agent.metrics))
    return 0


def write_run_config(out: str, command: str, args, agent, cfg) -> None:
    """OUT/config.json: the command line, the hyperparameters and the framework configuration."""
    import json
    import os

    from dpsgd.checkpoint import atomic_write_text

    os.makedirs(out, exist_ok=True)
    run_cfg = {"command": command, "argv": sys.argv[1:], "env": args.env, "total_steps": args.total_steps,
               "hyperparameters": agent.config_dict()["hyperparameters"],
               "train_config": cfg.to_dict() if cfg is not None else None}
    atomic_write_text(os.path.join(out, "config.json"), json.dumps(run_cfg, indent=1, default=str))


def summary_line(cmd: str, m: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    solved = "" if m.get("target_return") is None else (
        f" solved={m['solved']} at {f(m['env_steps_to_target'], 'd')} steps / {f(m['seconds_to_target'], '.1f')} s")
    return (f"{cmd} {m['env']}: {m['env_steps']} env steps in {m['train_seconds']:.1f} s "
            f"({m['env_steps_per_second']:.0f} steps/s){solved}; final eval "
            f"{f(m['final_eval_return_mean'], '.1f')} +- {f(m['final_eval_return_std'], '.1f')}")


def run_evaluate(args) -> int:
    import json
    import os

    require_rl("evaluate")
    from .envs import EnvError

    if args.episodes <= 0:
        return _err("evaluate", f"--episodes must be a positive integer, got {args.episodes}")
    for name in ("gif_frames", "gif_every"):
        if getattr(args, name) <= 0:
            return _err("evaluate", f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if not args.gif_fps > 0:
        return _err("evaluate", f"--gif-fps must be > 0, got {args.gif_fps}")
    if not os.path.isfile(os.path.join(args.dir, "model.json")):
        return _err("evaluate", f"{args.dir}: no model.json (not a run directory of dpsgd a2c/a3c)")
    from .agent import HSA2C

    try:
        agent = HSA2C.load(args.dir)
        if args.env:
            from .envs import env_spaces
            from .nets import model_config

            c = model_config(*env_spaces(args.env), hidden=agent.config.hidden, activation=agent.config.activation)
            if (c["obs"], c["action"]) != (agent.model_config["obs"], agent.model_config["action"]):
                return _err("evaluate", f"{args.env} has other spaces than {agent.env_id}, the model's environment")
            agent.env_id = args.env
        rets = agent.evaluate_returns(None, args.episodes, seed=args.seed)
        gif = None
        if args.gif:
            from .gif import record_episode, write_gif

            frames, ret, steps = record_episode(agent, seed=args.seed, max_frames=args.gif_frames,
                                                every=args.gif_every)
            n = write_gif(frames, args.gif, fps=args.gif_fps)
            gif = {"file": args.gif, "frames": n, "episode_return": ret, "episode_steps": steps}
    except (EnvError, ValueError, OSError) as e:
        return _err("evaluate", str(e).splitlines()[0] if str(e) else type(e).__name__)
    out = {"env": agent.env_id, "episodes": int(args.episodes), "return_mean": float(rets.mean()),
           "return_std": float(rets.std()), "return_min": float(rets.min()), "return_max": float(rets.max())}
    if gif is not None:
        out["gif"] = gif
    print(json.dumps(out))
    return 0
