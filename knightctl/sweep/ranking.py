"""A sweep's results and their ranking: each trial by the best value its metric reached.

A trial is ranked by the best value of the metric over its whole history (the lowest for goal min,
the highest for max), not by its last: a trial that overshoots at the end still had that model at
its best step, and that step's weights are the ones it keeps (best.pt). A pruned trial ranks by the
best value it reached before it was stopped. Ties are broken by the earlier step at which the best
was reached (it got there faster), then by the trial's place in the sweep (the grid's order, or
the order the study drew them in). Trials without a value (FAILED, KILLED, or finished without
ever logging the metric) come after those with one, in the sweep's order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from knightctl.spec.monitor import Goal
from knightctl.sweep.space import Axis, Trial

TIE_RULE = (
    "Ranked by each trial's best {metric} over its history ({goal}), not its last value; ties go to "
    "the earlier step at which the best was reached, then to the earlier trial in the sweep's order. "
    "Trials without a value (failed, stopped, or never logged it) come last, shown as -."
)
_SCORED = ("FINISHED", "SKIPPED", "PRUNED")  # the statuses whose value counts


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    status: str  # FINISHED, PRUNED, FAILED, KILLED; or SKIPPED: finished by an earlier run or another process
    run_id: str | None
    value: float | None  # the metric's best value over the trial's history; None unless it finished
    error: str | None = None  # why it failed, was stopped or was pruned
    step: int | None = None  # the first step at which `value` was reached
    number: int | None = None  # the trial's number in the study (from 0)


@dataclass
class SweepResult:
    parent_run_id: str
    tracking_uri: str
    metric: str
    goal: Goal
    results: list[TrialResult] = field(default_factory=list)
    trials: Sequence[Trial] = ()  # every trial of the sweep, in its order (the last tie-break)
    axes: Sequence[Axis] = ()  # the swept paths
    spec_name: str = ""
    experiment_id: str = ""  # the MLflow experiment of the parent and its trials
    total: int = 0  # the trials the sweep holds when done: the grid's size, or --trials
    study: str = ""  # the Optuna study's name
    numbers: dict[str, int] = field(default_factory=dict)  # a drawn trial's key -> its number in the study

    def ranked(self) -> list[TrialResult]:
        """Trials with a value, best first by the rule in the module's docstring; then those without."""
        order = {trial.key: self.numbers.get(trial.key, place) for place, trial in enumerate(self.trials)}
        return rank(self.results, self.goal, order)

    def scored(self) -> list[TrialResult]:
        """The ranked trials that have a value, best first."""
        return [result for result in self.ranked() if has_value(result)]

    def number_of(self, trial: Trial) -> int | None:
        """The trial's number in the sweep, from 1 (its place in the grid, or the study's number of a
        draw); None if not one of its own."""
        if trial.key in self.numbers:
            return self.numbers[trial.key] + 1
        for place, own in enumerate(self.trials, start=1):
            if own.key == trial.key:
                return place
        return None

    def tally(self) -> dict[str, int]:
        """How many trials ended with each status so far, SKIPPED (finished by an earlier run) included."""
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts

    @property
    def best(self) -> TrialResult | None:
        scored = self.scored()
        return scored[0] if scored else None


def best_point(history: Iterable[tuple[int, float]], goal: Goal) -> tuple[float, int] | None:
    """The best finite value of (step, value) points and the first step that reached it; None when
    there is no finite value (a metric never logged, or only NaN)."""
    best: tuple[float, int] | None = None
    for step, value in sorted(history):
        if not math.isfinite(value):
            continue
        if best is None or (value < best[0] if goal == "min" else value > best[0]):
            best = (value, step)
    return best


def rank(results: Iterable[TrialResult], goal: Goal, order: Mapping[str, int]) -> list[TrialResult]:
    """`results` best first: by value (lowest for min), then the earlier step, then `order` (trial key
    -> place in the sweep); results without a value after those with one, by `order`."""

    def place(result: TrialResult) -> int:
        return order.get(result.trial.key, len(order))

    results = list(results)
    scored = [r for r in results if has_value(r)]
    scored.sort(
        key=lambda r: (
            r.value if goal == "min" else -r.value,  # type: ignore[operator]
            r.step if r.step is not None else math.inf,
            place(r),
        )
    )
    rest = sorted((r for r in results if not has_value(r)), key=place)
    return scored + rest


def has_value(result: TrialResult) -> bool:
    """Whether `result` ranks by its value: a finished trial (now or earlier) that logged the metric."""
    return result.status in _SCORED and result.value is not None and math.isfinite(result.value)
