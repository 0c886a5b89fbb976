"""The run plan of DPSVI: one home for what the estimator (``DPSVI.fit``) and ``dpsgd lda`` compute
before training - how many updates a pass is, the step-size schedule, the push layout.

A *pass* gives every reader (a worker rank's thread) all of its documents once, in minibatches of
``batch_size``: the updates of a pass are the sum over readers of ceil(share / batch_size), the
shares being the worker ranks' contiguous slices of the training documents, each cut again
between the rank's threads (``np.linspace``, as :meth:`SVIAlgorithm.make_thread_state` and the
CLI's corpus plan cut them). The step size is scikit-learn's rho_t = (tau0 + t)^-kappa with
tau0 = learning_offset + the minibatches already done (1 at the start, as scikit-learn counts).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


def reader_shares(n_docs: int, n_workers: int, threads: int) -> list[int]:
    """Documents per reader: the workers' slices, each cut between the rank's threads."""
    out = []
    wb = np.linspace(0, n_docs, n_workers + 1).astype(np.int64)
    for w in range(n_workers):
        n = int(wb[w + 1] - wb[w])
        tb = np.linspace(0, n, threads + 1).astype(np.int64)
        out += [int(b - a) for a, b in zip(tb[:-1], tb[1:])]
    return out


@dataclass(frozen=True)
class RunPlan:
    """What a DPSVI run does, fixed before it starts."""

    #: minibatches (updates) that make one pass over the training documents
    updates_per_pass: int
    #: updates of the run (passes x updates_per_pass, at least 1)
    total_updates: int
    #: rho_t = (tau0 + t)^-kappa
    tau0: float
    kappa: float
    #: the lazy-decay layout whose pushes carry only the minibatch's words
    sparse_push: bool
    #: framework threads per rank (readers of their own minibatches) and the team that shares
    #: each minibatch's E-step (thread mode "minibatch": one framework thread, a team of all threads)
    threads: int = 1
    team: int = 1

    def rhos(self) -> np.ndarray:
        return (self.tau0 + np.arange(self.total_updates)) ** -self.kappa

    def documents(self, updates: int, n_docs: int) -> int:
        """Documents seen after ``updates`` updates (minibatches of a pass average n_docs / updates_per_pass)."""
        return int(round(updates * n_docs / self.updates_per_pass))


def split_threads(threads: int, thread_mode: str = "minibatch") -> tuple[int, int]:
    """(framework threads, team size) of a rank with ``threads`` threads: "hogwild" - each thread
    reads its own minibatches; "minibatch" - one framework thread whose minibatches a team of
    ``threads`` shares."""
    threads = max(1, int(threads))
    return (1, threads) if thread_mode == "minibatch" else (threads, 1)


def make_plan(n_docs: int, batch_size: int, passes: float, *, n_workers: int = 1, threads: int = 1,
              thread_mode: str = "minibatch", learning_offset: float = 10.0, learning_decay: float = 0.7,
              batches_done: int = 1, sparse_push="auto", rule: str = "asgd", distributed: bool = False) -> RunPlan:
    """The plan of ``passes`` passes over ``n_docs`` documents (see the module doc), ``threads``
    threads per worker rank in ``thread_mode`` (:func:`split_threads`).

    ``sparse_push``: True, False or "auto" (:func:`.model.choose_sparse_push`; ValueError when the
    layout cannot serve the rule or the run).
    """
    from .svi import choose_sparse_push

    threads, team = split_threads(threads, thread_mode)
    shares = reader_shares(int(n_docs), max(1, int(n_workers)), max(1, int(threads)))
    per_pass = max(1, sum(math.ceil(s / batch_size) for s in shares))
    total = max(1, int(round(passes * per_pass)))
    plan = RunPlan(per_pass, total, float(learning_offset) + float(batches_done), float(learning_decay), False,
                   threads=threads, team=team)
    sparse = choose_sparse_push(sparse_push, rule, plan.rhos(), distributed=distributed)
    return dataclasses.replace(plan, sparse_push=bool(sparse))
