"""`knightctl evaluate`: a logged model's task metrics and loss on new rows, logged as an evaluation of it.

The rows are preprocessed as the model's card says (training/preprocessing.py's `model_input`,
the same code its pyfunc runs), pushed through its torch module, and measured with the metrics
the training run chose (its resolved spec's `metrics:`, loss and target column), computed by the
same code as a run's validation metrics (training/taskmetrics.py). A metric whose plugin is not
loaded here is not guessed at: it is listed as not measured. The evaluation is an MLflow run of its
own in the model's experiment, its metrics linked to the model and to the file as a dataset
(tracking/evaluations.py), so the model's page lists them beside its training metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knightctl.errors import DataError
from knightctl.inference.table import feature_frame, read_table, target_indices
from knightctl.plugins.events import EvaluationReport
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import LossSpec
from knightctl.tracking.modelref import ModelReference, load_model, resolve_model, training_spec
from knightctl.training.preprocessing import model_input
from knightctl.training.taskmetrics import TaskMetrics, class_keys, measure


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` measured: the model, the file and its rows, the loss (None where its plugin is
    not here), the task metrics, the metrics it could not measure, and the evaluation's MLflow run."""

    reference: ModelReference
    data: Path
    rows: int
    target_column: str
    loss_name: str
    loss: float | None
    report: EvaluationReport
    not_measured: tuple[str, ...]
    run_id: str | None
    experiment_id: str | None


def evaluate(
    model: str,
    data: str | Path,
    *,
    target: str | None = None,
    tracking_uri: str | None = None,
    log: bool = True,
    plugins: PluginSettings | None = None,
) -> Evaluation:
    """Measure the model `model` (a run or a model URI, see tracking/modelref.py) on the CSV file
    `data`, whose column `target` (default: the training spec's `data.target`) holds the truth; log
    the result as an evaluation run of the model unless `log` is false."""
    from knightctl.plugins.loader import load

    table = read_table(data)
    reference = resolve_model(model, tracking_uri)
    spec = training_spec(reference) or {}
    column = target or _spec_target(spec)
    if column is None:
        raise DataError(
            f"{table.path}: which column holds the target? The training run's spec names none "
            f"(its dataset is {spec.get('data', {}).get('name', 'unknown')!r})",
            hint="pass --target COLUMN",
        )
    loaded = load_model(reference)
    card = loaded.card
    targets = _shaped(target_indices(table, column, card), card["target"])
    x = torch.from_numpy(model_input(feature_frame(table, card), loaded.served.preprocessing))
    with torch.no_grad():
        outputs = loaded.served.module(x)
    registry = load(plugins or PluginSettings.from_env()).registry
    loss_name, loss = _loss(spec, registry, outputs, targets)
    task, not_measured = _task_metrics(spec, registry, card, outputs)
    weights = f"{reference.name} ({reference.model_uri}): {card.get('why', 'its logged weights')}"
    step = int(card.get("chosen", {}).get("step") or 0)
    report = measure(task, outputs, targets, weights, step)
    run_id = experiment_id = None
    if log:
        from knightctl.tracking.evaluations import log_evaluation

        run_id, experiment_id = log_evaluation(
            reference, table.path, x.numpy(), targets.numpy(), report, loss_name, loss, column, not_measured
        )
    return Evaluation(
        reference, table.path, len(table), column, loss_name, loss, report, not_measured, run_id, experiment_id
    )


def _spec_target(spec: dict[str, Any]) -> str | None:
    target = spec.get("data", {}).get("target")
    return str(target) if isinstance(target, str) and target else None


def _shaped(values: list[float], target: str) -> torch.Tensor:
    """Targets as the loss and metrics take them: binary (N, 1) float, class (N,) int64, real (N, 1) float
    (training/data.py's prepare_targets)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if target == "class":
        return tensor.to(torch.int64).reshape(-1)
    return tensor.to(torch.float32).reshape(-1, 1)


def _loss(
    spec: dict[str, Any], registry: Any, outputs: torch.Tensor, targets: torch.Tensor
) -> tuple[str, float | None]:
    """The training loss's value on these rows; None where the spec or the loss's plugin is not here."""
    from knightctl.errors import KnightctlError
    from knightctl.training.build import build_loss

    raw = spec.get("loss")
    if raw is None:
        return "loss", None
    try:
        loss_spec = LossSpec.model_validate(raw if isinstance(raw, dict) else {"name": raw})
        loss_fn, _ = build_loss(loss_spec, registry, Path.cwd())
        with torch.no_grad():
            return loss_spec.name, float(loss_fn(outputs, targets))
    except (KnightctlError, ValueError):
        name = raw.get("name") if isinstance(raw, dict) else raw
        return str(name), None


def _task_metrics(
    spec: dict[str, Any], registry: Any, card: dict[str, Any], outputs: torch.Tensor
) -> tuple[TaskMetrics, tuple[str, ...]]:
    """The training run's metrics (its spec's `metrics:`, else the task's defaults) that are registered
    here, and the names of those that are not."""
    from knightctl.spec.metrics import chosen_metrics

    target = card["target"]
    named = spec.get("metrics")
    names = [str(name) for name in named] if isinstance(named, list) else None
    missing = tuple(name for name in names or () if registry.get("metric", name) is None)
    kept = None if names is None else [name for name in names if name not in missing]  # []: none at all
    definitions = tuple(chosen_metrics(kept, registry, target))
    if target == "real":
        return TaskMetrics(definitions, target), missing
    if card.get("class_names"):
        classes = tuple(card["class_names"])
    else:
        count = 2 if target == "binary" else int(outputs.shape[-1])
        classes = tuple(str(i) for i in range(count))
    return TaskMetrics(definitions, target, classes, class_keys(classes)), missing
