"""Evaluation schedule, the solved rule and the run's summary: one home for HSA2C and A3C.

A run counts as *solved* at the ``solve_evals``-th evaluation in a row whose mean return is at
or above ``target_return`` (a first single pass is mostly luck); with ``early_stop`` it ends there.
Both trainers feed their evaluations to an :class:`EvalTracker` and build ``metrics.json`` with
:func:`run_metrics`, so the two report the same figures the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: the first environment seed of the deterministic evaluation episodes (episode i: EVAL_SEED + i),
#: the default of ``HSA2C.evaluate_returns``, ``dpsgd evaluate --seed`` and the GIF's episode
EVAL_SEED = 10 ** 6


@dataclass
class EvalTracker:
    """When the next evaluation is due, the evaluations so far, and whether the run is solved."""

    #: environment steps between two evaluations
    eval_freq: int
    #: the mean evaluation return that counts towards solved (None: never solved)
    target_return: float | None = None
    #: evaluations in a row at or above the target that make the run solved
    solve_evals: int = 3
    #: stop the run once solved
    early_stop: bool = True
    #: the evaluations: dicts with env_steps, wall_seconds, eval_return_mean, eval_return_std
    log: list = field(default_factory=list)

    def __post_init__(self):
        self.reset()

    def reset(self, env_steps: int = 0) -> None:
        """A new run (or one resumed at ``env_steps``): no evaluation yet."""
        self.take(env_steps)
        self.consecutive = 0
        self.n_evals = 0
        self.stop = False
        self.log = []

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next_eval

    def take(self, env_steps: int) -> None:
        """The evaluation due at ``env_steps`` is being run (or a run starts there): the next one
        is due at the next multiple of ``eval_freq`` after it."""
        self.next_eval = (int(env_steps) // self.eval_freq + 1) * self.eval_freq

    def note(self, mean: float, counts: bool = True) -> bool:
        """Count one evaluation's mean return (``counts=False``: not towards solved, e.g. the
        initial model's); returns whether the run should stop now."""
        self.n_evals += 1
        if self.target_return is None or not counts:
            return self.stop
        self.consecutive = self.consecutive + 1 if mean >= self.target_return else 0
        if self.consecutive >= self.solve_evals and self.early_stop:
            self.stop = True
        return self.stop

    def record(self, env_steps: int, wall: float, mean: float, std: float) -> bool:
        """Log an evaluation and :meth:`note` it; returns whether the run should stop now."""
        self.log.append({"env_steps": int(env_steps), "wall_seconds": float(wall),
                         "eval_return_mean": float(mean), "eval_return_std": float(std)})
        return self.note(mean)

    def solved_at(self, evals: list | None = None) -> dict | None:
        """The evaluation at which the run became solved (``evals``: another log, e.g. the
        server's under MPI; evaluations of the initial model, at 0 steps, never count)."""
        if self.target_return is None:
            return None
        run = 0
        for e in self.log if evals is None else evals:
            if e["env_steps"] == 0:
                continue
            run = run + 1 if e["eval_return_mean"] >= self.target_return else 0
            if run >= self.solve_evals:
                return e
        return None


def run_metrics(*, env: str, algorithm: str, tracker: EvalTracker, evals: list, env_steps: int,
                wall_seconds: float, train_seconds: float, eval_seconds: float, steps_this_run: int,
                final: dict | None, eval_episodes: int, **extra) -> dict:
    """``metrics.json`` of an RL run (HSA2C and A3C): the solved figures, rates and evaluations.

    ``steps_this_run`` is what the rate counts (a resumed run's steps before the resume are not);
    ``final`` holds ``eval_return_mean`` / ``eval_return_std`` of the final model, if evaluated.
    """
    hit = tracker.solved_at(evals)
    train_seconds = max(train_seconds, 1e-9)
    final = final or {}
    out = {
        "env": env,
        "algorithm": algorithm,
        "solved": bool(hit) if tracker.target_return is not None else None,
        "target_return": tracker.target_return,
        "solve_evals": tracker.solve_evals,
        "seconds_to_target": hit["wall_seconds"] if hit else None,
        "env_steps_to_target": hit["env_steps"] if hit else None,
        "env_steps": int(env_steps),
        "wall_seconds": wall_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "env_steps_per_second": steps_this_run / train_seconds,
        "final_eval_return_mean": final.get("eval_return_mean"),
        "final_eval_return_std": final.get("eval_return_std"),
        "final_eval_episodes": eval_episodes,
    }
    out.update(extra)
    out["evaluations"] = evals
    return out
