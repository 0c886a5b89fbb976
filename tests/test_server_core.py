"""ServerCore bookkeeping without MPI."""

import time

import numpy as np

import dpsgd
from dpsgd.server import ServerCore


def test_a_worker_not_yet_started_is_silent_since_the_server_started():
    """last_push_time began at 0 (boot time for perf_counter): a worker that had not said hello
    within worker_timeout was reported as silent for hours, and an SSGD round could turn fatal."""
    core = ServerCore(np.zeros(4, np.float32), dpsgd.TrainConfig(worker_timeout=1.0), 2)
    assert core.check_silent() == ([], [])
    msgs, _ = core.check_silent(now=time.perf_counter() + 5)
    assert len(msgs) == 2 and all("has not pushed for 5 s" in m or "has not pushed for 4 s" in m for m in msgs), msgs
