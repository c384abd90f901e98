"""What a training run reports: RunInfo before the first step, RunResult at the end, and the
Observer protocol. Plain data, no torch: the plugin contract and `import knightctl` stay cheap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do; observers receive it before the first step."""

    spec_name: str
    device: str
    device_reason: str
    seed: int
    epochs: int
    steps_per_epoch: int
    n_train: int
    n_val: int
    tracking_uri: str | None
    run_id: str | None
    experiment_id: str | None
    notices: tuple[str, ...] = ()  # about the tracking store, worth a line on screen
    resumed_from: str | None = None  # "step 340 of checkpoint PATH" when the run goes on from one
    first_epoch: int = 1
    world_size: int = 1  # processes training together (distributed data parallel when over 1)


@dataclass(frozen=True)
class BestStep:
    """The model of record's step: where the monitored metric was best, and every metric logged there."""

    metric: str
    goal: str  # "min" or "max"
    step: int
    value: float
    metrics: dict[str, float]  # all metrics logged at `step`


@dataclass(frozen=True)
class EvaluationReport:
    """The task metrics of the model of record on the whole validation split, measured after the loop.

    `weights` says whose weights they are (`the best val/loss (0.11, lower is better) at step 40 of
    100`, or the last step's); `values` maps each logged name (`val/macro_f1`, `val/f1/<class>`) to
    its value, None where it is undefined (n/a); `per_class` maps a per-class metric's name to its
    values by class name. `confusion[i][j]` counts rows of class i predicted as class j
    (classification only; classes in `class_names` order).
    """

    weights: str
    step: int
    values: dict[str, float | None]
    per_class: dict[str, dict[str, float | None]]
    class_names: tuple[str, ...] = ()
    confusion: tuple[tuple[int, ...], ...] | None = None

    def overall(self) -> dict[str, float | None]:
        """The values that are not per class: the few a summary shows."""
        return {key: value for key, value in self.values.items() if key.count("/") == 1}


@dataclass
class RunResult:
    """What a finished run did: final metrics, every logged point, timings and the model."""

    info: RunInfo
    final_metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]]
    steps: int
    seconds: float
    loop_seconds: float
    model: nn.Module
    model_uri: str | None = None
    tracking_uri_source: str = ""
    store_wait_seconds: float = 0.0  # after the loop, until every queued metric was stored
    checkpoint: Path | None = None  # the final checkpoint
    step_losses: list[float] | None = None  # every step's loss, in order, when asked for (record_losses)
    pending_sync: str | None = None  # what waits in the local journal for a tracking server that went away
    best: BestStep | None = None  # the best step by train.monitor, beside `final_metrics` (the last)
    best_checkpoint: Path | None = None  # best.pt: the best step's weights
    model_of_record: str | None = None  # which weights were logged as the model: "best", "final", or None
    evaluation: EvaluationReport | None = None  # the task metrics of the model of record, after the loop
    stopped_early: str | None = None  # why train.early_stopping ended the run before its last epoch

    @property
    def run_id(self) -> str | None:
        return self.info.run_id


class Observer(Protocol):
    """Watches a run; the console's progress bar is one. Called on the training thread."""

    def run_started(self, info: RunInfo) -> None: ...

    def epoch_completed(self, epoch: int, step: int, metrics: Mapping[str, float] | None) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...
