"""The task metrics a spec chooses under `metrics:`: names checked against the registry and the task.

A spec that lists none gets the registered metrics marked `default` that fit its loss's targets
(knightctl's own: accuracy, precision, recall, F1, macro F1 and, for binary targets, ROC AUC; MAE,
RMSE and R² for real ones). An empty list means none. Torch-free, for `knightctl validate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from knightctl.plugins.metricdef import Goal, MetricDef
from knightctl.plugins.registry import Registry
from knightctl.spec.problems import Problem


def chosen_metrics(names: Sequence[str] | None, registry: Registry, target: str) -> list[MetricDef]:
    """The metrics a run computes: those named (in order), or the defaults that fit `target`."""
    if names is None:
        return [metric for metric in registry.metrics() if metric.default and target in metric.targets]
    return [registry.get("metric", name) for name in names]


def metric_problems(raw: dict[str, Any], registry: Registry) -> list[Problem]:
    """An unknown, repeated or misfitting name under `metrics:`, each at its entry (the structural
    pass reports a `metrics:` that is not a list of names)."""
    names = raw.get("metrics")
    if not isinstance(names, list):
        return []
    loss = raw.get("loss", {})
    loss_name = loss.get("name") if isinstance(loss, dict) else loss
    loss_def = registry.get("loss", loss_name) if isinstance(loss_name, str) else None
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        metric = registry.get("metric", name)
        if metric is None:
            problems.append(Problem(("metrics", index), registry.unknown_name_message("metric", name)))
        elif name in seen:
            problems.append(Problem(("metrics", index), f"metric {name!r} is listed twice"))
        elif loss_def is not None and loss_def.target not in metric.targets:
            fits = ", ".join(metric.targets)
            problems.append(
                Problem(
                    ("metrics", index),
                    f"metric {name!r} is for {fits} targets, and loss {loss_name!r} trains on {loss_def.target} ones",
                )
            )
        seen.add(name)
    data = raw.get("data")
    if names and isinstance(data, dict) and data.get("val_fraction") == 0:
        problems.append(
            Problem(("metrics",), "metrics are measured on the validation split, and data.val_fraction is 0")
        )
    return problems


def metric_goal(key: str, registry: Registry) -> Goal | None:
    """The goal of the registered metric logged as `key` (`val/<name>`, or `val/<name>/<class>` for a
    per-class one), or None when no metric logs it."""
    for metric in registry.metrics():
        if key == metric.key or (metric.per_class and key.startswith(metric.key + "/")):
            return metric.goal
    return None
