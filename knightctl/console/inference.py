"""What `knightctl predict` and `knightctl evaluate` print: the answers' destination and a tally, the metrics."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from knightctl.inference.evaluate import Evaluation
from knightctl.inference.predict import Predictions
from knightctl.tracking.note import evaluation_summary


def render_predictions(console: Console, predictions: Predictions) -> None:
    """The CSV on standard output when there is no --out file; a summary on standard error either way,
    so that `knightctl predict RUN rows.csv > answers.csv` gets only the CSV."""
    if predictions.text is not None:
        sys.stdout.write(predictions.text)
        sys.stdout.flush()
    tally = ", ".join(f"{name} {count:,}" for name, count in sorted(predictions.counts.items()))
    where = f" to {predictions.out}" if predictions.out is not None else ""
    console.print(
        f"predicted {predictions.rows:,} rows{where} with {escape(predictions.reference.model_uri)} "
        f"({escape(predictions.why)})" + (f": {escape(tally)}" if tally else ""),
        soft_wrap=True,
    )


def render_evaluation(console: Console, evaluation: Evaluation) -> None:
    """The metrics in a table: the loss, each overall metric, the per-class ones, and where it was logged."""
    report = evaluation.report
    table = Table(
        title=f"{evaluation.reference.name} on {evaluation.data.name} ({evaluation.rows:,} rows)",
        show_header=False,
        title_justify="left",
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", escape(evaluation.reference.model_uri))
    table.add_row("weights", escape(report.weights))
    table.add_row("target column", escape(evaluation.target_column))
    loss = f"{evaluation.loss:.4f}" if evaluation.loss is not None else "n/a (its plugin is not loaded here)"
    table.add_row(evaluation.loss_name, loss)
    for key, value in report.overall().items():
        table.add_row(key.removeprefix("val/"), "n/a" if value is None else f"{value:.4f}")
    _, per_class = evaluation_summary(report, max_classes=12)
    if per_class:
        table.add_row("per class", escape(per_class.removeprefix("Per class ")))
    if evaluation.not_measured:
        table.add_row("not measured", escape(", ".join(evaluation.not_measured)) + " (no plugin here registers them)")
    if evaluation.run_id:
        table.add_row("MLflow run", evaluation.run_id)
    console.print(table)
