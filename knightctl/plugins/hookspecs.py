"""The plugin contract: hook markers and hook signatures, nothing else.

A plugin is a module (or object) with functions marked `@hookimpl` whose names and arguments match
the specs below (an implementation may take fewer arguments, never others). Registration hooks
receive a `register` callback; call it once per component. Built-in layers, losses, optimizers,
schedulers, datasets and metrics arrive through these same hooks. Event hooks are named in the past tense
and are called in plugin load order; an exception in one fails the run, naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from knightctl.plugins.events import RunInfo, RunResult
    from knightctl.plugins.registry import (
        DatasetDef,
        LayerDef,
        LossDef,
        MetricDef,
        OpDef,
        OptimizerDef,
        SchedulerDef,
    )

PROJECT_NAME = "knightctl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_ops(register: Callable[[OpDef], None]) -> None:
    """Register differentiable ops (an `OpDef` each, or a PyTorch `OpInfo` entry, taken as
    `OpDef.from_opinfo(entry)`): gradient-checked, and usable as layers."""


@hookspec
def register_layers(register: Callable[[LayerDef], None]) -> None:
    """Register model layers (a `LayerDef` each) that specs name under `model:`."""


@hookspec
def register_losses(register: Callable[[LossDef], None]) -> None:
    """Register loss functions (a `LossDef` each) that specs name under `loss:`."""


@hookspec
def register_optimizers(register: Callable[[OptimizerDef], None]) -> None:
    """Register optimizers (an `OptimizerDef` each) that specs name under `optimizer:`."""


@hookspec
def register_schedulers(register: Callable[[SchedulerDef], None]) -> None:
    """Register learning-rate schedulers (a `SchedulerDef` each) for `optimizer.scheduler:`."""


@hookspec
def register_datasets(register: Callable[[DatasetDef], None]) -> None:
    """Register datasets (a `DatasetDef` each) that specs name under `data:`."""


@hookspec
def register_metrics(register: Callable[[MetricDef], None]) -> None:
    """Register metrics (a `MetricDef` each) computed on the validation split, that specs name
    under `metrics:` and `train.monitor` may pick."""


@hookspec
def train_started(info: RunInfo) -> None:
    """A run has its device, seed, data and MLflow run, and is about to take its first step."""


@hookspec
def epoch_completed(epoch: int, step: int, metrics: Mapping[str, float] | None) -> None:
    """An epoch ended; `metrics` holds the latest values if it was evaluated, else None."""


@hookspec
def train_finished(result: RunResult) -> None:
    """A run finished and its MLflow run was closed as FINISHED."""


@hookspec
def gradcheck_completed(reports: Sequence[Any]) -> None:
    """`knightctl gradcheck` checked its ops; `reports` holds one report per op."""
