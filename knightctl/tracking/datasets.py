"""A run's training and validation rows as MLflow datasets: name, digest, source and context.

They appear in the run's Overview ("Datasets used") and let a reviewer see that two runs trained
on the same rows: the digest is computed from the arrays themselves. A dataset read from a file
names that file; a generated one (battles, blobs, a plugin's) names its generator and options.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from knightctl.training.data import Split

TRAINING, VALIDATION = "training", "validation"  # MLflow's own context names


def log_datasets(client: Any, run_id: str, split: Split, dataset_name: str) -> None:
    """Log the training split and, if any, the validation split as inputs of run `run_id`."""
    parts = [(TRAINING, split.train_x, split.train_y)]
    if split.val_x is not None and split.val_y is not None:
        parts.append((VALIDATION, split.val_x, split.val_y))
    inputs = [dataset_input(_dataset(dataset_name, split.source, x, y), context) for context, x, y in parts]
    client.log_inputs(run_id, datasets=inputs)


def dataset_input(dataset: Any, context: str) -> Any:
    """`dataset` (an `mlflow.data` Dataset) as the `DatasetInput` that `MlflowClient.log_inputs` takes,
    tagged with the context it was used in (training, validation, evaluation).

    Built from `Dataset.to_dict()`, whose documented keys (name, digest, source, source_type, and
    schema and profile where the dataset has them) are the fields of `mlflow.entities.Dataset`;
    the client logs it to a run named by its id, where `mlflow.log_input` needs the run active in
    this thread's fluent state.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    fields = dataset.to_dict()
    entity = Dataset(
        name=fields["name"],
        digest=fields["digest"],
        source_type=fields["source_type"],
        source=fields["source"],
        schema=fields.get("schema"),
        profile=fields.get("profile"),
    )
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def _dataset(name: str, source: str, features: Any, targets: Any) -> Any:
    import mlflow.data
    from mlflow.data.code_dataset_source import CodeDatasetSource

    if source and Path(source).is_file():
        origin: Any = str(Path(source).resolve())
    else:
        origin = CodeDatasetSource({"generator": f"knightctl dataset {name!r}", "options": source or name})
    with warnings.catch_warnings():
        # A local path matches MLflow's local-artifact source twice over; it picks that one and says so.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_numpy(
            features.detach().cpu().numpy(), targets=targets.detach().cpu().numpy(), name=name, source=origin
        )
