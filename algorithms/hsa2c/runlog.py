"""Files a run writes into ``--out`` *while* it trains (rank 0), so a long run can be watched.

* ``progress.csv``  one row per finished training episode (``train``), evaluation (``eval``) and
  periodic summary of the updates since the last one (``losses``: policy loss, value loss,
  entropy, training steps per second); flushed at least every ``flush_seconds``.
* ``tb/``           the same as TensorBoard scalars with CleanRL's names
  (``charts/episodic_return``, ``eval/episodic_return``, ``charts/SPS``, ``losses/policy_loss``,
  ``losses/value_loss``, ``losses/entropy``), when tensorboard is installed.

The CSV keeps one column layout for every kind of row, so ``pandas.read_csv`` or a spreadsheet
reads it as it grows. At the end of the run the agent replaces it with the complete, sorted file.
"""

from __future__ import annotations

import csv
import os
import threading
import time

COLUMNS = ["kind", "env_steps", "wall_seconds", "episode_return", "episode_length", "return_std",
           "policy_loss", "value_loss", "entropy", "sps"]
#: TensorBoard tags (CleanRL's names)
TB_TAGS = {"train": "charts/episodic_return", "eval": "eval/episodic_return", "sps": "charts/SPS",
           "policy_loss": "losses/policy_loss", "value_loss": "losses/value_loss", "entropy": "losses/entropy"}
LOSS_PARTS = ("policy_loss", "value_loss", "entropy")
#: seconds between two flushes (and ``losses`` rows) of a live log
FLUSH_SECONDS = 10.0
#: the loss parts are computed for at most one update in this many seconds (each costs a few numpy
#: reductions, ~20 us: 2-4 % of a CartPole update, nothing next to a Pong one)
LOSS_SAMPLE_SECONDS = 0.05


def _fmt(x):
    return "" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))


def clear_event_files(tb: str) -> None:
    """Remove earlier runs' event files from ``tb`` (two runs in one directory would show as one)."""
    if os.path.isdir(tb):
        for name in os.listdir(tb):
            if name.startswith("events.out.tfevents."):
                os.unlink(os.path.join(tb, name))


class LiveLog:
    """Append-as-you-go writer of ``OUT/progress.csv`` and ``OUT/tb``; thread-safe."""

    def __init__(self, out: str, flush_seconds: float | None = None, tensorboard: bool = True,
                 append: bool = False):
        os.makedirs(out, exist_ok=True)
        self.out = out
        self.flush_seconds = float(FLUSH_SECONDS if flush_seconds is None else flush_seconds)
        self._lock = threading.Lock()
        path = os.path.join(out, "progress.csv")
        keep = append and os.path.isfile(path) and os.path.getsize(path) > 0
        self._f = open(path, "a" if keep else "w", newline="")
        self._w = csv.writer(self._f)
        if not keep:
            self._w.writerow(COLUMNS)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # noqa: BLE001 - tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                tb = os.path.join(out, "tb")
                if not append:
                    clear_event_files(tb)
                self._tb = SummaryWriter(tb, flush_secs=max(1, int(min(self.flush_seconds, 120))))
        self._last_flush = time.monotonic()
        self._sums = {k: 0.0 for k in LOSS_PARTS}
        self._n_loss = 0
        self._last_loss = -float("inf")
        self._tb_episodes: list[tuple[float, int]] = []  # (return, env steps) not yet in tb/
        self._last_summary = (time.monotonic(), None)
        self.closed = False

    # -- rows ---------------------------------------------------------------------------
    def _row(self, **kw):
        self._w.writerow([_fmt(kw.get(c)) for c in COLUMNS])

    def episode(self, env_steps: int, wall: float, ret: float, length: int) -> None:
        with self._lock:
            if self.closed:
                return
            self._row(kind="train", env_steps=env_steps, wall_seconds=round(wall, 4), episode_return=ret,
                      episode_length=length)
            if self._tb is not None:
                # written at the next flush: one scalar at a time woke TensorBoard's writer thread
                # (pure-Python CRC-32C, holding the GIL) after every episode; with that and every
                # update's loss parts CartPole trained at 0.80x (22.2k against 27.8k steps/s)
                self._tb_episodes.append((ret, env_steps))

    def evaluation(self, env_steps: int, wall: float, mean: float, std: float) -> None:
        with self._lock:
            if self.closed:
                return
            self._row(kind="eval", env_steps=env_steps, wall_seconds=round(wall, 4), episode_return=mean,
                      return_std=std)
            if self._tb is not None:
                self._tb.add_scalar(TB_TAGS["eval"], mean, env_steps)
            self._flush_locked()

    def want_losses(self) -> bool:
        """Whether the next update should compute its loss parts for :meth:`losses` (at most one
        update every :data:`LOSS_SAMPLE_SECONDS`: the ``losses`` row is the mean of a sample)."""
        now = time.monotonic()
        if now - self._last_loss < LOSS_SAMPLE_SECONDS:
            return False
        self._last_loss = now
        return True

    def losses(self, parts: dict) -> None:
        """Accumulate one update's loss parts (averaged into the next ``losses`` row)."""
        with self._lock:
            for k in LOSS_PARTS:
                self._sums[k] += float(parts[k])
            self._n_loss += 1

    def tick(self, env_steps: int, wall: float) -> None:
        """Write the ``losses`` row and flush when ``flush_seconds`` have passed (cheap otherwise)."""
        if time.monotonic() - self._last_flush < self.flush_seconds:
            return
        with self._lock:
            if self.closed or time.monotonic() - self._last_flush < self.flush_seconds:
                return
            t_prev, s_prev = self._last_summary
            now = time.monotonic()
            sps = None
            if s_prev is not None and now > t_prev:
                sps = (env_steps - s_prev) / (now - t_prev)
            self._last_summary = (now, env_steps)
            self._losses_row_locked(env_steps, wall, sps)
            self._flush_locked()

    def _losses_row_locked(self, env_steps, wall, sps):
        """The ``losses`` row: the mean loss parts since the previous one, and a rate."""
        row = dict(kind="losses", env_steps=env_steps, wall_seconds=None if wall is None else round(wall, 4), sps=sps)
        if self._n_loss:
            row.update({k: self._sums[k] / self._n_loss for k in LOSS_PARTS})
        self._row(**row)
        if self._tb is not None:
            if sps is not None:
                self._tb.add_scalar(TB_TAGS["sps"], sps, env_steps)
            if self._n_loss:
                for k in LOSS_PARTS:
                    self._tb.add_scalar(TB_TAGS[k], row[k], env_steps)
        self._sums = {k: 0.0 for k in LOSS_PARTS}
        self._n_loss = 0

    def _flush_locked(self):
        self._f.flush()
        if self._tb is not None:
            for ret, steps in self._tb_episodes:
                self._tb.add_scalar(TB_TAGS["train"], ret, steps)
            self._tb_episodes.clear()
            self._tb.flush()
        self._last_flush = time.monotonic()

    def close(self, env_steps: int | None = None, wall: float | None = None, sps: float | None = None) -> None:
        """Write the last ``losses`` row (the updates since the previous one, and ``sps``, the
        whole run's training rate, when given) and close the files."""
        with self._lock:
            if self.closed:
                return
            if env_steps is not None:
                self._losses_row_locked(env_steps, wall, sps)
            self._flush_locked()
            self.closed = True
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def write_progress(out: str, episodes, metrics: dict) -> None:
    """``progress.csv`` and ``tb/`` at the end of a run that did not write them live: the training
    ``episodes`` (env steps, wall seconds, return, length), ``metrics["evaluations"]`` and the
    run's rate, in the live files' layout (the same reader serves both)."""
    log = LiveLog(out, flush_seconds=float("inf"))
    rows = [(st, 1, "train", (st, wt, r, ln)) for st, wt, r, ln in episodes]
    rows += [(e["env_steps"], 0, "eval", e) for e in metrics.get("evaluations", [])]
    rows.sort(key=lambda r: r[:2])
    for _, _, kind, x in rows:
        if kind == "train":
            log.episode(*x)
        else:
            log.evaluation(x["env_steps"], x["wall_seconds"], x["eval_return_mean"], x["eval_return_std"])
    log.close(int(metrics.get("env_steps", 0)), metrics.get("train_seconds"), metrics.get("env_steps_per_second"))
