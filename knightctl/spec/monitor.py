"""Which metric picks a run's model of record, and whether lower or higher is better.

`train.monitor` names the metric (auto: val/loss where there is a validation split, else
train/loss) and `train.monitor_mode` its goal (auto: the goal its `MetricDef` declares, which the
caller passes in, else max for accuracy-like names, else min). A sweep ranks its trials by the
same rule, so this module imports neither torch nor MLflow: the sweep's own process resolves it
without loading either.
"""

from __future__ import annotations

from typing import Any, Literal

from knightctl.errors import SpecError

Goal = Literal["min", "max"]

# Metric names whose higher values are better, when `train.monitor_mode` is auto: matched against
# the name's last part, so `val/accuracy` and a plugin's `val/macro_f1` are maximised.
_HIGHER_IS_BETTER = ("accuracy", "f1", "auc", "precision", "recall", "r2")


def monitored_metric(spec: Any, has_validation: bool) -> str:
    """The metric that picks the model of record: `train.monitor`, or (auto) val/loss where there is a
    validation split to measure it on, else train/loss."""
    named = spec.train.monitor
    if named != "auto":
        return str(named)
    return "val/loss" if has_validation else "train/loss"


def monitor_goal(metric: str, mode: str, known: Goal | None = None) -> Goal:
    """min or max: as `train.monitor_mode` says, or (auto) the goal its metric definition declares
    (`known`, a `MetricDef.goal`), else max for accuracy-like names, else min."""
    if mode in ("min", "max"):
        return mode  # type: ignore[return-value]
    if known in ("min", "max"):
        return known
    parts = metric.lower().split("/")
    # A per-class metric, val/<name>/<class>, is named by its middle part, not by the class.
    name = parts[1] if len(parts) == 3 and parts[0] == "val" else parts[-1]
    return "max" if any(name == word or name.endswith(f"_{word}") for word in _HIGHER_IS_BETTER) else "min"


def early_stopping_monitor(spec: Any, has_validation: bool) -> tuple[str, str]:
    """The metric `train.early_stopping` watches and its mode (auto: `train.monitor` and its mode)."""
    early = spec.train.early_stopping
    train_metric = monitored_metric(spec, has_validation)
    metric = train_metric if early.monitor == "auto" else str(early.monitor)
    if early.mode != "auto":
        return metric, str(early.mode)
    return metric, spec.train.monitor_mode if metric == train_metric else "auto"


def check_monitor(spec: Any, logged: set[str]) -> None:
    """Refuse, before any run exists, a `train.monitor` or `train.early_stopping.monitor` the run will
    never log (SpecError names the field and lists what it logs)."""
    named = [("train.monitor", spec.train.monitor)]
    if spec.train.early_stopping is not None:
        named.append(("train.early_stopping.monitor", spec.train.early_stopping.monitor))
    problems = [
        f"{field}: {metric!r} is not a metric this run logs; it logs " + ", ".join(sorted(logged))
        for field, metric in named
        if metric != "auto" and metric not in logged
    ]
    if problems:
        raise SpecError(spec.source.path if spec.source else spec.name, problems)
