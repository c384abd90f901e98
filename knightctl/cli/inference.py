"""`knightctl predict` and `knightctl evaluate`: a logged model used on the rows of a CSV file."""

from __future__ import annotations

import click

from knightctl.cli.common import load_plugins_warned, plugin_settings, run_library

_MODEL_HELP = (
    "MODEL is a run (id, unique id prefix or name: its model of record), or a model URI: models:/m-..., "
    "models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH."
)
_URI_HELP = "MLflow tracking URI holding the model (default: MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)."


@click.command(epilog=_MODEL_HELP)
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the CSV here (default: stdout).")
@click.option("--tracking-uri", default=None, metavar="URI", help=_URI_HELP)
def predict(model: str, data: str, out: str | None, tracking_uri: str | None) -> None:
    """Answer each row of DATA (a CSV file with the model's feature columns) with MODEL: the input's
    columns, then the prediction (the class name for a classifier) and each class's probability."""
    from knightctl.console.core import make_console
    from knightctl.console.inference import render_predictions
    from knightctl.inference.predict import predict as predict_rows

    predictions = run_library(lambda: predict_rows(model, data, out=out, tracking_uri=tracking_uri))
    render_predictions(make_console(stderr=True), predictions)


@click.command(epilog=_MODEL_HELP)
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--target", default=None, metavar="COLUMN", help="The column holding the truth (default: the spec's).")
@click.option("--tracking-uri", default=None, metavar="URI", help=_URI_HELP)
@click.option("--no-log", is_flag=True, help="Print the metrics only; log no evaluation run in MLflow.")
def evaluate(model: str, data: str, target: str | None, tracking_uri: str | None, no_log: bool) -> None:
    """Measure MODEL on DATA (a CSV file with its feature and target columns): the training loss and task
    metrics, logged as an evaluation run linked to the model and the file."""
    from knightctl.console.core import make_console
    from knightctl.console.inference import render_evaluation
    from knightctl.inference.evaluate import evaluate as evaluate_model

    settings = plugin_settings()
    load_plugins_warned(settings)  # a metric or loss plugin that failed is a warning first
    evaluation = run_library(
        lambda: evaluate_model(model, data, target=target, tracking_uri=tracking_uri, log=not no_log, plugins=settings)
    )
    render_evaluation(make_console(), evaluation)
