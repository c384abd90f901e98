"""The task metrics a run measures on its validation split: which, under what names, and checked.

At each evaluation every chosen `MetricDef` runs on the validation outputs the loss was computed
from, and its value joins the loss as a device tensor, read back with it in the evaluation's one
transfer (`StepMetrics.collect`), then checked here: a plugin's metric that is not a finite number
fails the run, naming the plugin and the metric; a built-in one that is undefined (NaN: recall of
a class absent from the split, ROC AUC with one class) is left out of that point, n/a. After the
loop, `final_evaluation` measures them all again on the model of record's weights, with the
confusion matrix of a classifier.
"""

from __future__ import annotations

import copy
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from knightctl.errors import KnightctlError, PluginError
from knightctl.plugins.events import EvaluationReport
from knightctl.plugins.metricdef import Goal, MetricDef
from knightctl.plugins.registry import Registry
from knightctl.spec.metrics import chosen_metrics
from knightctl.training.best import choose

BUILT_IN_PLUGIN = "builtin.metrics"  # the default plugin's name (plugins/loader.py), whose NaN means n/a

Values = dict[str, torch.Tensor | float]


@dataclass(frozen=True)
class TaskMetrics:
    """The chosen metrics, the task they measure, and the class names their per-class keys use."""

    definitions: tuple[MetricDef, ...]
    target: str  # the loss's target kind: binary, class or real
    class_names: tuple[str, ...] = ()  # as the data names them, in index order (classification)
    class_keys: tuple[str, ...] = ()  # the same, made safe for metric names
    _owners: dict[str, MetricDef] = field(default_factory=dict, repr=False)
    _plan: list[tuple[MetricDef, list[str]]] = field(default_factory=list, repr=False)  # each metric's keys

    def __post_init__(self) -> None:
        for metric in self.definitions:
            keys = self.keys_of(metric)
            for key in keys:
                if key in self._owners:
                    raise PluginError(
                        f"plugin {metric.plugin!r}: metric {metric.name!r} would be logged as {key!r}, which "
                        f"metric {self._owners[key].name!r} of plugin {self._owners[key].plugin!r} logs already"
                    )
                self._owners[key] = metric
            self._plan.append((metric, keys))

    def keys_of(self, metric: MetricDef) -> list[str]:
        return [f"{metric.key}/{name}" for name in self.class_keys] if metric.per_class else [metric.key]

    @property
    def keys(self) -> list[str]:
        """Every name these metrics are logged under."""
        return list(self._owners)

    def goal_of(self, key: str) -> Goal | None:
        """The declared goal of the metric logged as `key`, or None if none of these logs it."""
        metric = self._owners.get(key)
        return metric.goal if metric is not None else None

    def compute(self, outputs: torch.Tensor, targets: torch.Tensor) -> Values:
        """Every metric on these outputs, as device tensors (or a plugin's plain numbers); no read-back."""
        values: Values = {}
        for metric, keys in self._plan:
            try:
                value = metric.fn(outputs, targets)
            except KnightctlError:
                raise
            except Exception as exc:
                raise PluginError(f"{_named(metric)} raised {type(exc).__name__}: {exc}") from exc
            if metric.per_class:
                vector = _vector(value, metric, len(self.class_keys), outputs.device)
                values.update(zip(keys, vector.unbind(), strict=False))
            else:
                values[keys[0]] = _scalar(value, metric, outputs.device)
        return values

    def check(self, step: int, values: dict[str, float]) -> dict[str, float]:
        """A point's values once read back: undefined built-in values left out, a plugin's refused."""
        kept = {}
        for key, value in values.items():
            metric = self._owners.get(key)
            if metric is not None and not math.isfinite(value):
                if metric.plugin != BUILT_IN_PLUGIN:
                    raise PluginError(
                        f"{_named(metric)} returned {value} for {key} at step {step}; a metric must be a finite number"
                    )
                continue
            kept[key] = value
        return kept


def task_metrics(names: Sequence[str] | None, registry: Registry, target: str, data: Any) -> TaskMetrics:
    """The metrics `names` chooses (None: the task's defaults), for the split `data` (none without a
    validation split)."""
    definitions = tuple(chosen_metrics(names, registry, target)) if data.val_x is not None else ()
    if target == "real":
        return TaskMetrics(definitions, target)
    if data.class_names:
        names_in_order = tuple(data.class_names)
    elif target == "binary":
        names_in_order = ("0", "1")
    else:  # class indices without names: as many classes as the largest index says
        largest = max(int(t.max()) for t in (data.train_y, data.val_y) if t is not None and t.numel())
        names_in_order = tuple(str(i) for i in range(largest + 1))
    return TaskMetrics(definitions, target, names_in_order, class_keys(names_in_order))


def class_keys(names: Sequence[str]) -> tuple[str, ...]:
    """Class names as the last part of a metric name: letters, digits, '_', '.', '-' (MLflow's keys,
    portable), at most 60 characters, distinct (`a b` -> `a_b`, a second `a_b` -> `a_b_2`)."""
    keys: list[str] = []
    for index, name in enumerate(names):
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_.")[:60] or f"class{index}"
        unique, copy_number = key, 2
        while unique in keys:
            unique, copy_number = f"{key}_{copy_number}", copy_number + 1
        keys.append(unique)
    return tuple(keys)


def final_evaluation(parts: Any, position: Any, log_model: bool | str) -> EvaluationReport | None:
    """The task metrics of the model of record (training/best.py) on the whole validation split, and a
    classifier's confusion matrix: one forward pass and one read-back, after the loop."""
    task: TaskMetrics | None = parts.task_metrics
    x, y = parts.data.val_x, parts.data.val_y
    if task is None or x is None:
        return None
    choice = choose(log_model, position.best, position.step)
    model = parts.model
    if choice.kind == "best" and position.best is not None and choice.step != position.step:
        model = copy.deepcopy(parts.model)  # on the model's device; the trained model is left alone
        model.load_state_dict(position.best.weights)
    return measure(task, _outputs(model, x), y, choice.why(), choice.step)


def measure(task: TaskMetrics, outputs: torch.Tensor, y: torch.Tensor, weights: str, step: int) -> EvaluationReport:
    """Every metric of `task` on `outputs` against `y`, and a classifier's confusion matrix, in one
    read-back; `weights` says whose outputs they are (the run's model of record, a logged model)."""
    computed = task.compute(outputs, y)
    tensors = [v.reshape(()).float() for v in computed.values() if isinstance(v, torch.Tensor)]
    counts = None
    if task.target != "real":
        from knightctl.plugins.builtin.metricmath import confusion

        counts = confusion(outputs, y)[: len(task.class_keys), : len(task.class_keys)]
        tensors.append(counts.reshape(-1).float())
    flat = torch.cat([t.reshape(-1) for t in tensors]).tolist() if tensors else []  # the one read-back
    read = iter(flat)
    floats = {key: (next(read) if isinstance(v, torch.Tensor) else float(v)) for key, v in computed.items()}
    rest = list(read)
    kept = task.check(step, floats)
    values: dict[str, float | None] = {key: kept.get(key) for key in floats}
    per_class = {
        metric.name: {name: values[key] for name, key in zip(task.class_names, task.keys_of(metric), strict=True)}
        for metric in task.definitions
        if metric.per_class
    }
    n = len(task.class_keys)
    confusion_rows = (
        tuple(tuple(int(c) for c in rest[i * n : (i + 1) * n]) for i in range(n)) if counts is not None else None
    )
    return EvaluationReport(weights, step, values, per_class, task.class_names, confusion_rows)


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(was_training)


def _named(metric: MetricDef) -> str:
    return f"plugin {metric.plugin!r}: metric {metric.name!r}"


def _scalar(value: Any, metric: MetricDef, device: torch.device) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        return value if value.device == device and value.dim() == 0 else value.reshape(()).to(device)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
    raise PluginError(f"{_named(metric)} returned {shown}; a metric returns a number or a 0-dim tensor")


def _vector(value: Any, metric: MetricDef, n_classes: int, device: torch.device) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            value = None
    if value is None or value.dim() != 1 or value.numel() < n_classes or value.dtype.is_complex:
        shown = "nothing usable" if value is None else f"shape {tuple(value.shape)}"
        raise PluginError(
            f"{_named(metric)} is per class and returned {shown}; it returns a 1-D tensor of one value per "
            f"class ({n_classes})"
        )
    value = value[:n_classes] if value.numel() > n_classes else value
    return value if value.device == device else value.to(device)
