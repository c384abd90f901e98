"""An evaluation of a logged model on new rows (`knightctl evaluate`), as an MLflow run of its own.

The run sits in the model's experiment, named `evaluate MODEL on FILE`, tagged with the run and
model it evaluates, and its description tells the result in words. Its metrics are `eval/loss` and
`eval/<metric>` (per class `eval/<metric>/<class>`; an undefined value is left out, never 0), each
linked to the model and to the file as an MLflow dataset: MLflow then lists them on the model's
page beside the metrics of the step it came from. A classifier's confusion matrix is a table and
`plots/confusion_matrix.png`, as in a training run.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from knightctl.errors import TrackingError
from knightctl.plugins.events import EvaluationReport
from knightctl.tracking.confusion import CONFUSION_ARTIFACT, CONFUSION_TABLE, confusion_figure, confusion_table
from knightctl.tracking.datasets import dataset_input
from knightctl.tracking.modelref import ModelReference
from knightctl.tracking.note import evaluation_summary
from knightctl.tracking.plots import save_png
from knightctl.tracking.provenance import provenance_tags
from knightctl.tracking.stores import new_run
from knightctl.tracking.tags import EVALUATES_MODEL_TAG, EVALUATES_RUN_TAG, NOTE_TAG, OUTCOME_TAG

EVALUATION = "evaluation"  # the dataset's context on the run


def evaluation_metrics(report: EvaluationReport, loss: float | None) -> dict[str, float]:
    """The values to log: eval/loss, then each defined task metric under eval/ instead of val/."""
    values = {"eval/loss": loss} if loss is not None else {}
    values |= {"eval/" + key.removeprefix("val/"): value for key, value in report.values.items() if value is not None}
    return values


def log_evaluation(
    reference: ModelReference,
    path: Path,
    features: Any,
    targets: Any,
    report: EvaluationReport,
    loss_name: str,
    loss: float | None,
    target_column: str,
    not_measured: tuple[str, ...],
) -> tuple[str, str]:
    """Log the evaluation as a FINISHED run; (its run id, its experiment id)."""
    import mlflow.data
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(reference.tracking_uri)
    try:
        experiment_id = reference.experiment_id or client.get_experiment_by_name("Default").experiment_id
        with warnings.catch_warnings():
            # A local path matches MLflow's local-artifact source twice over; it picks that one and says so.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_numpy(features, targets=targets, name=path.name, source=str(path.resolve()))
        values = evaluation_metrics(report, loss)
        note = _note(reference, path, len(features), report, loss_name, loss, target_column, not_measured)
        tags = {
            **provenance_tags(f"knightctl evaluate {path.name}", path.resolve().parent),
            EVALUATES_MODEL_TAG: reference.model_uri,
            NOTE_TAG: note,
            OUTCOME_TAG: note.splitlines()[0],
        }
        if reference.run_id:
            tags[EVALUATES_RUN_TAG] = reference.run_id
        run_id = new_run(client, experiment_id, run_name=f"evaluate {reference.name} on {path.name}", tags=tags)
        client.log_inputs(run_id, datasets=[dataset_input(dataset, EVALUATION)])
        now = int(time.time() * 1000)
        linked = {"model_id": reference.model_id} if reference.model_id else {}
        metrics = [
            Metric(key, value, now, 0, dataset_name=dataset.name, dataset_digest=dataset.digest, **linked)
            for key, value in values.items()
        ]
        client.log_batch(run_id, metrics=metrics, tags=[RunTag("knightctl.evaluation.rows", str(len(features)))])
        if report.confusion is not None:
            with warnings.catch_warnings():  # MLflow's own use of a pandas API that pandas 3 deprecates
                warnings.filterwarnings("ignore", message=".*select_dtypes", category=Warning)
                client.log_table(run_id, data=confusion_table(report), artifact_file=CONFUSION_TABLE)
            figure = confusion_figure(report, rows=f"{len(features):,} rows of {path.name}")
            if figure is not None:
                import tempfile

                with tempfile.TemporaryDirectory() as folder:
                    local = Path(folder) / Path(CONFUSION_ARTIFACT).name
                    save_png(figure, local)
                    client.log_artifact(run_id, str(local), str(Path(CONFUSION_ARTIFACT).parent))
        client.set_terminated(run_id, "FINISHED")
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"cannot log the evaluation in {reference.tracking_uri}: {type(exc).__name__}: {exc}"
        ) from None
    return run_id, experiment_id


def _note(
    reference: ModelReference,
    path: Path,
    rows: int,
    report: EvaluationReport,
    loss_name: str,
    loss: float | None,
    target_column: str,
    not_measured: tuple[str, ...],
) -> str:
    """The evaluation run's description: the outcome line, what was measured on what, the result."""
    overall, per_class = evaluation_summary(report)
    loss_text = f"{loss_name} {loss:.4g}" if loss is not None else f"{loss_name} n/a (its plugin is not loaded)"
    lines = [
        f"Evaluated {reference.name} on {rows:,} rows of {path.name}: {overall}; {loss_text}",
        "",
        f"### evaluate {reference.name}",
        "",
        "| | |",
        "|---|---|",
        f"| model | {reference.model_uri} |",
        f"| weights | {report.weights} |",
        f"| trained by run | {reference.run_id or 'unknown'} |",
        f"| data | {path.resolve()} ({rows:,} rows, target column {target_column}) |",
    ]
    if not_measured:
        lines.append(f"| not measured | {', '.join(not_measured)}: no plugin here registers them |")
    lines += ["", f"**Task metrics**: {overall}"]
    if per_class:
        lines += ["", per_class]
    if report.confusion is not None:
        lines += ["", "Confusion matrix: `confusion_matrix.json` (table) and `plots/confusion_matrix.png`"]
    return "\n".join(lines) + "\n"
