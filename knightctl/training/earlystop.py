"""Early stopping: end training once the monitored metric has stopped improving.

`train.early_stopping` names a metric (auto: `train.monitor`), its goal, a patience and a least
improvement. Patience counts evaluations, not epochs: an evaluation is every
`train.eval_every_n_epochs` epochs, and only there is the metric measured. An evaluation improves
on the best so far when it beats it by more than `min_delta` (lower for min, higher for max); a
missing or non-finite value never does. After `patience` evaluations in a row without one, the loop
ends at that epoch: the run is FINISHED, not failed, and its model of record is still the best step
by `train.monitor` (training/best.py), whose weights were kept when they were reached.

The count travels in every checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from knightctl.spec.monitor import Goal

StopRule = Callable[[int, Mapping[str, float]], "str | None"]
"""Asked after each evaluation with its step and metrics: why training should end there (a sweep's
pruner, sweep/study.py), or None to go on. `train(stop_rule=...)`; not for distributed jobs."""


@dataclass(frozen=True)
class EndedByRule:
    """Where a stop rule ended training, and why."""

    epoch: int
    step: int
    reason: str

    def ending(self, epochs: int) -> str:
        """`stopped early at epoch 5 of 300 (step 20): pruned by ...`."""
        return f"stopped early at epoch {self.epoch} of {epochs} (step {self.step:,}): {self.reason}"


@dataclass
class EarlyStopping:
    """The best value of `metric` so far (by more than `min_delta`), and the evaluations since."""

    metric: str
    goal: Goal
    patience: int
    min_delta: float
    best: float | None = None
    best_step: int | None = None
    stale: int = 0  # evaluations in a row without an improvement
    stopped_at: int | None = None  # the step it ran out of patience at
    stopped_epoch: int | None = None  # the epoch training ended at, when that was before the last

    def offer(self, step: int, value: float | None) -> bool:
        """Take the evaluation at `step`; whether training should stop after it."""
        if value is not None and math.isfinite(value) and self._improves(value):
            self.best, self.best_step, self.stale = float(value), step, 0
        else:
            self.stale += 1
        if self.stale >= self.patience:
            self.stopped_at = step
        return self.stopped_at is not None

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self.goal == "min" else value > self.best + self.min_delta

    def reason(self) -> str:
        """`val/loss did not improve for 20 evaluations (best 0.1551 at step 30)`."""
        since = (
            f" (best {self.best:.4g} at step {self.best_step:,})"
            if self.best is not None and self.best_step is not None
            else " (it was never measured as a finite number)"
        )
        word = "evaluation" if self.patience == 1 else "evaluations"
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return f"{self.metric} did not improve{by} for {self.patience} {word}{since}"

    def ending(self, epochs: int) -> str | None:
        """`stopped early at epoch 37 of 300 (step 370): val/loss did not improve ...`, or None."""
        if self.stopped_epoch is None or self.stopped_at is None:
            return None
        return f"stopped early at epoch {self.stopped_epoch} of {epochs} (step {self.stopped_at:,}): {self.reason()}"

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: plain values only."""
        return {
            "metric": self.metric,
            "goal": self.goal,
            "best": self.best,
            "best_step": self.best_step,
            "stale": self.stale,
            "stopped_at": self.stopped_at,
        }

    @classmethod
    def from_spec(cls, spec: Any, metric: str, goal: Goal, saved: dict[str, Any] | None = None) -> EarlyStopping | None:
        """The spec's early stopping (None when off), going on from a checkpoint's count when it watched
        the same metric the same way; with a new metric or goal it starts counting afresh."""
        early = spec.train.early_stopping
        if early is None:
            return None
        stopping = cls(metric, goal, int(early.patience), float(early.min_delta))
        if saved and saved.get("metric") == metric and saved.get("goal") == goal:
            stopping.best, stopping.best_step = saved["best"], saved["best_step"]
            stopping.stale = int(saved["stale"])
            # A patience raised on resume (--allow-spec-change) lets a stopped run go on.
            stopping.stopped_at = saved["stopped_at"] if stopping.stale >= stopping.patience else None
        return stopping
