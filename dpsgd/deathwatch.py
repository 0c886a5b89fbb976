"""Name the rank that died when a rank of an MPI job is killed (``kill -9``, the OOM killer).

MPICH's launcher then kills every other rank at once with SIGKILL (no handler runs) and its
"BAD TERMINATION ... PID n" message often names a rank it killed itself, not the one that died
first. So every rank starts a tiny watcher process (a separate session, untouched by the
launcher's clean-up) that holds the read end of a pipe from the rank. A rank that ends normally
(or reports its own error) writes ``OK`` first. When the pipe closes without ``OK``, the watcher
tries to create the job's token file (``O_EXCL``): the ranks the launcher kills die after the one
that died first, so the first watcher to get the token is that rank's, and only it speaks, on
the job's stderr, which the launcher is still forwarding. (A crash leaves the token, an empty file,
in the temporary directory for 10 s.)
"""

from __future__ import annotations

import os
import subprocess
import sys

_WATCHER = r"""
import os, sys
rank, what, token = sys.argv[1], sys.argv[2], sys.argv[3]
data = sys.stdin.buffer.read()
if data.endswith(b"OK"):
    sys.exit(0)
# the first watcher of the job to get here speaks: the ranks the launcher kills die after the
# one that died first, so their watchers wake later and find the token taken
try:
    os.close(os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
except OSError:
    sys.exit(0)
sys.stderr.write(f"dpsgd: rank {rank} ({what}) ended without finishing: killed by a signal "
                 "(kill -9, the OOM killer) or crashed; the launcher now stops the other ranks\n")
sys.stderr.flush()
# close the descriptors themselves (sys.stderr.close() leaves fd 2 open): the launcher forwards this
# stderr and waits for its end before it exits, so an open fd 2 kept the job alive for the sleep below
for fd in (0, 1, 2):
    try:
        os.close(fd)
    except OSError:
        pass
import time
time.sleep(10)  # long after the other watchers of the job have looked for the token
os.unlink(token)
"""

_proc: subprocess.Popen | None = None


def start(rank: int, what: str, job: str) -> None:
    """Watch this rank (``what``: its role and PID, for the message; ``job``: an id shared by the
    job's ranks on this host)."""
    global _proc
    if _proc is not None or not sys.platform.startswith("linux"):
        return
    try:
        import tempfile

        token = os.path.join(tempfile.gettempdir(), f"dpsgd-deathwatch-{job}")
        _proc = subprocess.Popen([sys.executable, "-S", "-c", _WATCHER, str(rank), what, token],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                                 close_fds=True)
    except OSError:
        _proc = None


def disarm() -> None:
    """This rank ends normally or has reported its own error: the watcher stays silent."""
    global _proc
    if _proc is None:
        return
    try:
        _proc.stdin.write(b"OK")
        _proc.stdin.close()
    except OSError:
        pass
    _proc = None
