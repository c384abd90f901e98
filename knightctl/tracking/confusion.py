"""A classifier's confusion matrix in its MLflow run: a table the dashboard shows (`MlflowClient.log_table`,
`confusion_matrix.json`) and a figure (`plots/confusion_matrix.png`).

Both are of the model of record on the whole validation split (`EvaluationReport`), one row per
true class and one column per predicted class, in the data's class order.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from knightctl.plugins.events import EvaluationReport

CONFUSION_TABLE = "confusion_matrix.json"
CONFUSION_ARTIFACT = "plots/confusion_matrix.png"

_MAX_ANNOTATED = 20  # classes; past that the counts would not fit their cells


def confusion_table(report: EvaluationReport) -> dict[str, list[Any]]:
    """Columns for `log_table`: `actual` (the class names), then `predicted <class>` with its counts."""
    assert report.confusion is not None
    table: dict[str, list[Any]] = {"actual": list(report.class_names)}
    for j, name in enumerate(report.class_names):
        table[f"predicted {name}"] = [row[j] for row in report.confusion]
    return table


def confusion_figure(report: EvaluationReport, rows: str = "validation split") -> Figure | None:
    """Counts as a heat map with the count in each cell (up to 20 classes), or None for regression;
    `rows` says which rows were counted, in the title."""
    if report.confusion is None or not report.class_names:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(report.class_names)
    side = min(12.0, 3.0 + 0.45 * n)  # inches
    figure = Figure(figsize=(side + 1.2, side), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    image = ax.imshow(report.confusion, cmap="Blues")
    figure.colorbar(image, ax=ax, label="rows", shrink=0.8)
    slanted = n > 4 or max(len(name) for name in report.class_names) > 8
    ax.set_xticks(range(n), report.class_names, rotation=35 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(n), report.class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    weights = textwrap.fill(report.weights, width=int(side * 11))  # about 11 characters an inch at 9 pt
    ax.set_title(f"Confusion matrix, {rows}\n{weights}", fontsize=9)
    if n <= _MAX_ANNOTATED:
        largest = max((max(row) for row in report.confusion), default=0)
        for i, row in enumerate(report.confusion):
            for j, count in enumerate(row):
                colour = "white" if largest and count > largest / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=9)
    return figure
