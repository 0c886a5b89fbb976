"""Shared helpers: launching real MPI jobs with a timeout (a hang fails, never blocks CI)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROGS = Path(__file__).resolve().parent / "progs"


def mpiexec_path():
    cand = Path(sys.executable).parent / "mpiexec"
    return str(cand) if cand.exists() else shutil.which("mpiexec")


#: MPICH off shared memory, over TCP loopback: the path messages take between hosts (MPICH's
#: NOLOCAL sends every message through its network module; UCX would still pick its own
#: shared-memory transport without UCX_TLS). DPSGD_TEST_NETWORK=1 runs every MPI test this way.
NETWORK_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDRA_", "MPI_LOCAL"))}
    if os.environ.get("DPSGD_TEST_NETWORK") == "1":
        env.update(NETWORK_ENV)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def run(cmd, timeout=120, env_extra=None, **kw):
    """Run a command; a timeout is a test failure with the output so far."""
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                              env=clean_env(**(env_extra or {})), cwd=ROOT, **kw)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout}s: {' '.join(map(str, cmd))}\n{e.stdout}\n{e.stderr}")


def mpirun(n, args, timeout=120, env_extra=None):
    exe = mpiexec_path()
    if exe is None:
        pytest.fail("mpiexec not found: install the mpich wheel (make test does)")
    return run([exe, "-n", str(n), sys.executable, "-m", "mpi4py", *map(str, args)], timeout=timeout,
               env_extra=env_extra)


def dpsgd_cmd(*args):
    return [sys.executable, "-m", "dpsgd.launch", *map(str, args)]


@pytest.fixture
def mpi():
    return mpirun
