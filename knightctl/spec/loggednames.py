"""The names of the metrics a run logs, and how much of that the spec alone tells, without torch.

`logged_metrics` is the whole set once the task metrics' keys are known; training/setup.py checks
`train.monitor` against it after building the data, whose class names end the per-class keys
(`val/f1/<class>`). `spec_logged_metrics` is what the spec and the registry tell before anything
is built: every name but the per-class ones, which it gives as their prefixes. A sweep checks its
`--metric` against that first, and builds the data only when it needs the classes
(sweep/metriccheck.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from knightctl.plugins.registry import Registry
from knightctl.spec.metrics import chosen_metrics

# Logged by every run, validation split or not (system metrics and gradcheck/* aside).
TRAINING_METRICS = ("train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "epoch")


def logged_metrics(*, has_validation: bool, task_keys: Iterable[str] = ()) -> set[str]:
    """The names of the metrics a run logs (system metrics aside): what `train.monitor` may name.
    `task_keys`: the names its task metrics are logged under (`TaskMetrics.keys`), measured on the
    validation split, so only logged with one."""
    names = set(TRAINING_METRICS)
    if has_validation:
        names.add("val/loss")
        names.update(task_keys)
    return names


@dataclass(frozen=True)
class SpecMetrics:
    """What a spec's runs will log, as far as the spec tells: `names` in full, and the per-class
    metrics as `per_class` prefixes (`val/f1`, logged as `val/f1/<class>` for each class)."""

    names: frozenset[str]
    per_class: tuple[str, ...]

    def may_log(self, metric: str) -> bool:
        """Whether `metric` is one of `names` or could be a per-class key (its class not checked)."""
        return metric in self.names or any(metric.startswith(prefix + "/") for prefix in self.per_class)


def spec_logged_metrics(spec: Any, registry: Registry) -> SpecMetrics:
    """The metrics a run of the resolved `spec` logs, told by the spec and `registry` alone: a
    validation split exists exactly when `data.val_fraction` > 0 (training/data.py refuses a split
    that would leave none), and the task metrics are those `metrics:` chooses for the loss's targets."""
    has_validation = spec.data.val_fraction > 0
    loss = registry.get("loss", spec.loss.name)
    chosen = chosen_metrics(spec.metrics, registry, loss.target) if has_validation and loss is not None else []
    scalar = [metric.key for metric in chosen if not metric.per_class]
    per_class = tuple(metric.key for metric in chosen if metric.per_class)
    return SpecMetrics(frozenset(logged_metrics(has_validation=has_validation, task_keys=scalar)), per_class)
