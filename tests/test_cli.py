"""The dpsgd command line: info, one-line errors with exit code 2, runs with and without mpiexec."""

import json
import sys

import pytest

from conftest import dpsgd_cmd, mpirun, run


def test_info_reports_versions_and_mpi():
    p = run(dpsgd_cmd("info", "--json"))
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    for key in ("numpy", "numba", "mpi4py", "mpi_library", "numba_threading_layer", "cores",
                "threads_per_rank_default", "mpi_world_size"):
        assert key in d
    assert not d["numba_threading_layer"].startswith("workqueue")


def test_info_under_mpiexec_sees_the_world():
    p = mpirun(2, ["-m", "dpsgd.launch", "info", "--json"], timeout=60)
    assert p.returncode == 0, p.stderr
    sizes = {json.loads(chunk)["mpi_world_size"] for chunk in p.stdout.split("\n}") if chunk.strip()
             for chunk in [chunk + "\n}"]}
    assert sizes == {2}


@pytest.mark.parametrize("args,msg", [
    (["--rule", "nope"], "unknown rule 'nope'"),
    (["--threads", "0"], "threads must be a positive integer"),
    (["--threads", "-3"], "threads must be a positive integer"),
    (["--lam", "-1", "--rule", "dc-asgd-c"], "lambda must be a finite number >= 0"),
    (["--lr", "nan"], "lr must be a positive finite number"),
    (["--n-servers", "2"], "needs an MPI run"),
    (["--local-steps", "0"], "local_steps must be a positive integer"),
    (["--resume", "/nonexistent/dir"], "no such directory"),
])
def test_invalid_configuration_is_one_line_exit_2(args, msg):
    p = run(dpsgd_cmd("run", "--problem", "least-squares", *args))
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0], p.stderr


def test_unknown_problem_is_exit_2():
    p = run(dpsgd_cmd("run", "--problem", "nope"))
    assert p.returncode == 2 and "nope" in p.stderr


def test_too_few_ranks_for_the_servers():
    p = mpirun(2, ["-m", "dpsgd.launch", "run", "--problem", "least-squares", "--n-servers", "2"], timeout=60)
    assert p.returncode == 2 and "leave no worker" in p.stderr


def test_run_without_mpiexec(tmp_path):
    p = run(dpsgd_cmd("run", "--problem", "softmax", "--updates", "1500", "--no-progress", "--out", tmp_path))
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["n_workers"] == 1 and m["final"]["test_error"] < 0.2


def test_corrupted_checkpoint_under_mpiexec_ends_the_job_with_a_clear_message(tmp_path):
    out = tmp_path / "out"
    # lr 0.02: at the default 0.1 an unlucky interleaving of the two workers diverged once (this test is about
    # the checkpoint, not the step size)
    p = mpirun(3, ["-m", "dpsgd.launch", "run", "--problem", "least-squares", "--updates", "500", "--no-progress",
                   "--lr", "0.02", "--out", out], timeout=60)
    assert p.returncode == 0, p.stderr
    ck = out / "checkpoints"
    (ck / "shard0.npz").write_bytes(b"not a zip")
    (ck / "shard0.prev.npz").unlink(missing_ok=True)
    p = mpirun(3, ["-m", "dpsgd.launch", "run", "--problem", "least-squares", "--updates", "900", "--no-progress",
                   "--resume", out], timeout=60)
    assert p.returncode != 0
    assert "truncated or corrupted checkpoint" in p.stderr and "rank 0" in p.stderr


def test_console_script_exists():
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).parent / "dpsgd"
    assert exe.exists() or shutil.which("dpsgd"), "pip install -e . installs the dpsgd console script"
    p = run([str(exe) if exe.exists() else "dpsgd", "--help"])
    assert p.returncode == 0 and "info" in p.stdout and "run" in p.stdout


def test_framework_and_dpsvi_do_not_import_torch_or_gymnasium():
    """`pip install .` (no rl extra) gives the framework and DPSVI: neither may import torch or gymnasium."""
    code = ("import sys, dpsgd, dpsgd.runner, dpsgd.simulate, algorithms.dpsvi, algorithms.dpsvi.cli, "
            "algorithms.hsa2c.cli, algorithms.a3c.cli\n"
            "from dpsgd.launch import build_parser\n"
            "build_parser()\n"
            "bad = [m for m in ('torch', 'gymnasium') if m in sys.modules]\n"
            "assert not bad, bad\n")
    p = run([sys.executable, "-c", code])
    assert p.returncode == 0, p.stderr


def test_rl_commands_without_the_rl_extra_are_a_one_line_error(monkeypatch, tmp_path):
    import contextlib
    import importlib.util
    import io

    from dpsgd.launch import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    for cmd in (["a2c", "--env", "CartPole-v1", "--out", str(tmp_path)], ["a3c", "--env", "CartPole-v1", "--out",
                str(tmp_path)], ["evaluate", str(tmp_path)]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(cmd)
        assert code == 2, err.getvalue()
        assert "pip install 'dpsgd[rl]'" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1
