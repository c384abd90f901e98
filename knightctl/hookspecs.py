"""The plugin contract: hook markers and hook signatures, nothing else.

A plugin is a module (or object) with functions marked `@hookimpl` whose names and arguments match
the specs below. Registration hooks receive a `register` callback; call it once per component.
Built-in layers, losses, optimizers, schedulers and datasets arrive through these same hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from knightctl.registry import DatasetDef, LayerDef, LossDef, OptimizerDef, SchedulerDef

PROJECT_NAME = "knightctl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


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
