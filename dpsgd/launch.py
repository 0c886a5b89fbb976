"""The ``dpsgd`` command line: ``info``, ``run`` (the framework's example problems) and the
sub-commands algorithms register through the ``dpsgd.commands`` entry-point group.

Under ``mpiexec -n N dpsgd ...`` an uncaught exception on any rank prints the rank and the
error and aborts the whole job (as ``python -m mpi4py`` does) instead of leaving the other
ranks waiting forever. Invalid configuration is a one-line error with exit code 2, found
before MPI is initialised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import traceback
from importlib import metadata

from .config import ConfigError, TrainConfig, available_cores, default_threads
from .rules import RULES, RuleConfig
from .runner import mpi_world_size_from_env

EXIT_USAGE = 2


def rank_from_env() -> int:
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return 0


def is_root_rank() -> bool:
    return rank_from_env() == 0


# ---------------------------------------------------------------------------- shared options


def add_framework_options(p: argparse.ArgumentParser, *, lr: float = 0.1, updates: int = 2000,
                          rule: str = "dc-asgd-a") -> None:
    """Options every training command shares (rule, step size, threads, checkpoints...)."""
    g = p.add_argument_group("parameter server and threads")
    g.add_argument("--rule", default=rule, help=f"server update rule: {', '.join(RULES)} (default {rule})")
    g.add_argument("--lam", type=float, default=None, help="DC-ASGD lambda (default: 0.04 for -c, 2 for -a, 1 for -i)")
    g.add_argument("--momentum", type=float, default=0.0, help="server momentum (default 0)")
    g.add_argument("--lr", type=float, default=lr, help=f"step size (default {lr})")
    g.add_argument("--schedule", default="constant", help="constant | power | linear")
    g.add_argument("--local-steps", type=int, default=1, help="local updates per rank between pushes")
    g.add_argument("--threads", type=int, default=None, help="threads per rank (default: cores / ranks)")
    g.add_argument("--overlap", action="store_true",
                   help="a one-thread worker keeps computing while its push/pull is in flight (pipelined)")
    g.add_argument("--n-servers", type=int, default=1, help="server ranks, each owning a slice (MPI only)")
    g.add_argument("--max-staleness", type=int, default=None, help="drop pushes staler than this")
    g.add_argument("--max-bad-pushes", type=int, default=10,
                   help="consecutive rejected pushes from one worker that stop the run")
    g.add_argument("--max-seconds", type=float, default=None, help="stop after this wall time")
    g.add_argument("--worker-timeout", type=float, default=120.0,
                   help="report workers silent this long; SSGD stops with an error (default 120 s)")
    g.add_argument("--checkpoint-every", type=float, default=None, help="seconds between checkpoints")
    g.add_argument("--resume", default=None, metavar="DIR", help="continue from the checkpoints in DIR")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args, *, total_updates: int, out: str | None, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        rule=RuleConfig(name=args.rule, lam=args.lam, momentum=args.momentum),
        lr=args.lr, schedule=args.schedule, local_steps=args.local_steps, threads=args.threads,
        overlap=getattr(args, "overlap", False), total_updates=total_updates, max_seconds=args.max_seconds,
        max_staleness=args.max_staleness,
        n_servers=args.n_servers, max_bad_pushes=args.max_bad_pushes, worker_timeout=args.worker_timeout,
        checkpoint_every=args.checkpoint_every,
        checkpoint_dir=os.path.join(out, "checkpoints") if out else None,
        resume=os.path.join(args.resume, "checkpoints") if args.resume and
        os.path.isdir(os.path.join(args.resume, "checkpoints")) else args.resume,
        seed=args.seed, progress=not args.no_progress and is_root_rank(),
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg.validate(mpi_world_size_from_env())


# ---------------------------------------------------------------------------- info


def info_dict() -> dict:
    import numba
    import numpy

    d = {"dpsgd": metadata.version("dpsgd") if _installed("dpsgd") else "not installed",
         "python": platform.python_version(), "platform": platform.platform(),
         "cores": os.cpu_count(), "cores_available": available_cores(),
         "numpy": numpy.__version__, "numba": numba.__version__}
    for mod in ("scipy", "sklearn", "torch", "gymnasium", "mpi4py"):
        try:
            d[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 - report, never fail
            d[mod] = f"unavailable ({type(e).__name__})"
    d["numba_threading_layer"] = _numba_layer()
    size = mpi_world_size_from_env()
    d["mpi_world_size"] = size
    d["threads_per_rank_default"] = default_threads(size)
    try:
        from mpi4py import MPI

        d["mpi_library"] = MPI.Get_library_version().strip().splitlines()[0]
        d["mpi_vendor"] = "%s %s" % (MPI.get_vendor()[0], ".".join(map(str, MPI.get_vendor()[1])))
        d["mpi_world_size"] = MPI.COMM_WORLD.Get_size()
        d["mpi_thread_level"] = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                                 MPI.THREAD_SERIALIZED: "serialized",
                                 MPI.THREAD_MULTIPLE: "multiple"}.get(MPI.Query_thread(), "?")
    except Exception as e:  # noqa: BLE001
        d["mpi_library"] = f"unavailable ({type(e).__name__}: {e})"
    return d


def _installed(name):
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _numba_layer() -> str:
    import numpy as np
    from numba import njit, prange, threading_layer

    @njit(parallel=True)
    def _probe(x):
        s = 0.0
        for i in prange(x.size):
            s += x[i]
        return s

    try:
        _probe(np.ones(64))
        return f"{threading_layer()} (NUMBA_THREADING_LAYER={os.environ.get('NUMBA_THREADING_LAYER', '')})"
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({e})"


def cmd_info(args) -> int:
    d = info_dict()
    if args.json:
        print(json.dumps(d, indent=1))
    elif is_root_rank():
        width = max(map(len, d))
        for k, v in d.items():
            print(f"{k:<{width}}  {v}")
    return 0


# ---------------------------------------------------------------------------- run (examples)


def cmd_run(args) -> int:
    """Train one of the framework's example problems (digits softmax/MLP, least squares)."""
    cfg = config_from_args(args, total_updates=args.updates, out=args.out, eval_every=args.eval_every)
    from . import problems
    from .runner import train, write_metrics

    alg = problems.make_problem(args.problem, batch_size=args.batch_size, seed=args.seed)
    result = train(alg, cfg)
    if result.is_root:
        m = result.metrics
        final = m.get("final", {})
        print(f"{args.problem}: rule={cfg.rule.name} workers={m['n_workers']} threads={m['threads_per_worker']} "
              f"updates={m['total_updates']} pushes={m['pushes']} staleness mean={m['staleness_mean']:.2f} "
              f"max={m['staleness_max']} rejected={m['rejected_pushes']} "
              + " ".join(f"{k}={v:.4g}" for k, v in final.items()))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            write_metrics(os.path.join(args.out, "metrics.json"), m)
            from .checkpoint import atomic_write_bytes
            import numpy as np

            atomic_write_bytes(os.path.join(args.out, "model.npz"), lambda f: np.savez(f, params=result.params))
    return 0


# ---------------------------------------------------------------------------- parser / main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpsgd", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="dpsgd 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    pi = sub.add_parser("info", help="versions, MPI, threading layer, cores (paste into bug reports)")
    pi.add_argument("--json", action="store_true")
    pi.set_defaults(func=cmd_info)
    pr = sub.add_parser("run", help="train an example problem (digits softmax/MLP, least squares)")
    pr.add_argument("--problem", default="softmax", choices=["softmax", "mlp", "least-squares"],
                    help="example problem (default softmax)")
    pr.add_argument("--updates", type=int, default=3000, help="updates in total (all workers)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--eval-every", type=float, default=None, help="seconds between evaluations")
    pr.add_argument("--out", default=None, help="directory for metrics.json, model.npz, checkpoints")
    add_framework_options(pr)
    pr.set_defaults(func=cmd_run)
    for ep in sorted(metadata.entry_points(group="dpsgd.commands"), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the others
            bad = sub.add_parser(ep.name, help=f"(unavailable: {type(e).__name__})")
            bad.set_defaults(func=_unavailable(ep.name, e))
    return p


def _unavailable(name, err):
    def run(args):
        print(f"dpsgd {name}: unavailable: {type(err).__name__}: {err}", file=sys.stderr)
        return 1

    return run


#: seconds a worker told to stop by a failing server waits for that server to report and abort
SECONDARY_FATAL_GRACE = 10.0


def _abort_mpi(code: int) -> None:
    """Abort every rank of the job when launched by mpiexec with several ranks."""
    if mpi_world_size_from_env() <= 1:
        return
    from mpi4py import MPI  # initialises MPI if this rank had not yet: the others may wait on it

    if not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
        from . import deathwatch

        deathwatch.disarm()  # this rank said what went wrong itself
        sys.stdout.flush()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(code)


#: glibc's mallopt parameter M_MMAP_THRESHOLD and the fixed threshold of return_large_frees
_M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 1 << 20


def return_large_frees() -> bool:
    """Let glibc serve every allocation of >= 1 MB with its own mmap, so that freeing it gives the
    memory back. By default glibc raises that threshold (up to 32 MB) after the first large free;
    the model-sized temporaries of evaluations and exchanges (20 MB at V 50k, K 100) then come from
    the threads' heaps, which keep them: `dpsgd lda` on 100k documents grew by ~150 MB of RSS
    during training that way (979 against 830 MB at the peak), at no measured cost in speed. Not for
    every command: torch allocates its activations with malloc, and each of them then costs an mmap
    and its page faults - Pong (`dpsgd a2c`, 2 threads x 16 envs) trained at 966 instead of 1,358
    agent steps/s (medians of 3 alternated runs). `dpsgd lda` calls it. No-op off glibc, when
    MALLOC_MMAP_THRESHOLD_ is set (the user's choice) or with DPSGD_MALLOPT=0."""
    if (os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("DPSGD_MALLOPT") == "0"
            or not sys.platform.startswith("linux")):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    rank = rank_from_env()
    where = f"rank {rank}: " if mpi_world_size_from_env() > 1 else ""
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"dpsgd {args.command}: error: {where}{e}", file=sys.stderr)
        _abort_mpi(EXIT_USAGE)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"dpsgd {args.command}: {where}interrupted", file=sys.stderr)
        _abort_mpi(130)
        return 130
    except Exception as e:  # noqa: BLE001
        from .checkpoint import CheckpointError
        from .server import FatalRunError

        if isinstance(e, FatalRunError) and e.secondary and mpi_world_size_from_env() > 1:
            # a worker that was told to stop: give the server rank that knows why the time to say
            # so and end the job; speak up only if it has not done that after a while
            import time

            time.sleep(SECONDARY_FATAL_GRACE)
        if isinstance(e, (CheckpointError, FatalRunError)):
            print(f"dpsgd {args.command}: error: {where}{e}", file=sys.stderr)
        else:
            traceback.print_exc()
            print(f"dpsgd {args.command}: {where}{type(e).__name__}: {e}; aborting the job", file=sys.stderr)
        _abort_mpi(1)
        return 1


def cli() -> None:
    """The ``dpsgd`` program: :func:`main`, then the process ends without the interpreter's final
    garbage collections over every object it made (``gc.freeze``): with Numba's and LLVM's objects
    loaded they took 0.27 s at the end of every run, 0.33 s from the last output to the end of an
    ``mpiexec -n 3`` job (0.05 / 0.07 s now). Exit handlers and module teardown still run; the
    outputs are written and closed before ``main`` returns."""
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    cli()
