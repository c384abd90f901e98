"""Built-in task metrics: accuracy, per-class precision, recall and F1, macro F1 and ROC AUC for
classification; MAE, RMSE and R² for regression. The numbers are in `metricmath.py`, imported on
first use so that registering (and `knightctl validate`) never imports torch.
"""

from __future__ import annotations

from typing import Any

from knightctl.plugins.hookspecs import hookimpl
from knightctl.plugins.metricdef import Goal, MetricDef, TargetKind

_CLASSIFICATION: tuple[TargetKind, ...] = ("binary", "class")

# name, goal, targets, per class, description
_BUILT_IN: tuple[tuple[str, Goal, tuple[TargetKind, ...], bool, str], ...] = (
    ("accuracy", "max", _CLASSIFICATION, False, "share of rows whose predicted class is the true one"),
    ("macro_f1", "max", _CLASSIFICATION, False, "mean F1 over the classes in the split or predicted"),
    ("precision", "max", _CLASSIFICATION, True, "per class: share of the rows predicted as it that are it"),
    ("recall", "max", _CLASSIFICATION, True, "per class: share of its rows predicted as it"),
    ("f1", "max", _CLASSIFICATION, True, "per class: harmonic mean of precision and recall"),
    ("roc_auc", "max", ("binary",), False, "area under the ROC curve, from the logits' ranks (ties averaged)"),
    ("mae", "min", ("real",), False, "mean absolute error, in the targets' units"),
    ("rmse", "min", ("real",), False, "root mean squared error, in the targets' units"),
    ("r2", "max", ("real",), False, "coefficient of determination: 1 - SS_res / SS_tot (1 is perfect)"),
)


def _lazy(name: str) -> Any:
    """`metricmath.<name>`, imported (with torch) on its first call, then called directly."""
    found: list[Any] = []

    def compute(outputs: Any, targets: Any) -> Any:
        if not found:
            from knightctl.plugins.builtin import metricmath

            found.append(getattr(metricmath, name))
        return found[0](outputs, targets)

    compute.__name__ = name
    return compute


@hookimpl
def register_metrics(register) -> None:  # type: ignore[no-untyped-def]
    for name, goal, targets, per_class, description in _BUILT_IN:
        register(
            MetricDef(
                name=name,
                fn=_lazy(name),
                goal=goal,
                targets=targets,
                per_class=per_class,
                default=True,
                description=description,
            )
        )
