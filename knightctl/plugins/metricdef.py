"""`MetricDef`: a task metric a plugin registers (`register_metrics`), the name it is logged under,
and what the registry checks of it; with `TargetKind`, the targets a loss trains on and a metric fits.

Nothing here imports torch: `fn` does, when a run measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from knightctl.errors import PluginError

TargetKind = Literal["binary", "class", "real"]
Goal = Literal["min", "max"]
TARGETS: tuple[TargetKind, ...] = ("binary", "class", "real")
# Characters in a metric's name. MLflow refuses a metric key over 250 characters; the longest key
# knightctl makes of a name is a sweep parent's `sweep/best_val_<name>_<class>` (tracking/sweeps.py):
# 16 characters around the name and a class key of at most 60, plus `_N` for a repeated class
# (training/taskmetrics.py), so 128 leaves room. Every other MLflow rule the registry's names
# already keep: letters, digits, '_', '.', '-' only ('::' is logged as '.'), never a path such as '..'.
MAX_NAME_LENGTH = 128


class _NoOptions(BaseModel):
    """What a spec may set on a metric: nothing (it names metrics, under `metrics:`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, kw_only=True)
class MetricDef:
    """A metric computed on the validation split at each evaluation and logged as `val/<name>`.

    - `fn(outputs, targets)`: the model's outputs and the targets of the validation split (shaped
      as the loss gets them); returns a number, or a 0-dim tensor, which stays on the device until
      the evaluation's one read-back. With `per_class=True` it returns one value per class (a 1-D
      tensor), logged as `val/<name>/<class>`.
    - `goal`: "max" or "min", whichever is better: `train.monitor_mode: auto` and sweeps use it.
    - `targets`: the loss targets it applies to ("binary", "class", "real"; default all).
    - `default`: computed when a spec lists no `metrics:` (knightctl's own task metrics are).
    A value that is not a finite number fails the run, naming the plugin and the metric.
    """

    name: str
    fn: Callable[[Any, Any], Any]
    goal: Goal
    targets: tuple[TargetKind, ...] = TARGETS
    per_class: bool = False
    default: bool = False
    description: str = ""
    plugin: str = ""

    kind = "metric"
    params: ClassVar[type[BaseModel]] = _NoOptions  # as every definition has: here, no options

    @property
    def key(self) -> str:
        """The logged name: `val/<name>`, with a namespace's "::" as "." (MLflow keys on Windows refuse ':')."""
        return metric_key(self.name)


def metric_key(name: str) -> str:
    """`val/macro_f1` for the metric `macro_f1`, `val/mylab.iou` for `mylab::iou`."""
    return "val/" + name.replace("::", ".")


def check_metric(definition: MetricDef, what: str) -> None:
    """Refuse a metric whose name is too long for MLflow's keys, or whose `fn`, `goal` or `targets` is not
    what the run will need (`what` names it)."""
    if len(definition.name) > MAX_NAME_LENGTH:
        raise PluginError(
            f"{what}: the name has {len(definition.name)} characters; a metric's name may have at most "
            f"{MAX_NAME_LENGTH}, so that every key it is logged under (val/<name>/<class>, eval/..., sweep/...) "
            "is one MLflow takes (250 characters at most)"
        )
    if not callable(definition.fn):
        raise PluginError(f"{what}: fn is not callable")
    if definition.goal not in ("min", "max"):
        raise PluginError(f"{what}: goal is {definition.goal!r}; use 'min' or 'max' (whichever value is better)")
    targets = definition.targets
    if not isinstance(targets, tuple) or not targets or any(target not in TARGETS for target in targets):
        raise PluginError(f"{what}: targets is {targets!r}; use a non-empty tuple of {', '.join(map(repr, TARGETS))}")
