"""A logged model found from what a user types, and loaded: `knightctl predict` and `evaluate`'s first step.

A reference is a run (its id, a unique id prefix or its name: the run's newest logged model, its
model of record), a logged model's URI (`models:/m-...`), a registered model's (`models:/NAME/3`,
`models:/NAME@champion`) or a `runs:/RUN_ID/PATH` URI. The model loads through MLflow's pyfunc
(tracking/servedmodel.py), which registers the plugin ops shipped with it before its graph; its
card says what it takes and gives. The training run's resolved spec (`spec/resolved.yaml`) tells
evaluate the target column, the loss and the metrics, where that run is in the same store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from knightctl.errors import TrackingError
from knightctl.tracking.run import fluent_tracking_uri, resolve_tracking_uri
from knightctl.tracking.runlist import find_run, require_store
from knightctl.tracking.stores import check_server

_RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})/(.+)$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]{32})$")
_REGISTERED_URI = re.compile(r"^models:/([^/@]+)(?:/(\d+)|@(.+))$")


@dataclass(frozen=True)
class ModelReference:
    """Where a model is and what trained it: the URI MLflow loads, its logged-model id (evaluation
    metrics are linked to it), the training run and experiment, and the store."""

    model_uri: str
    model_id: str | None
    run_id: str | None
    experiment_id: str | None
    tracking_uri: str
    name: str  # the logged model's name (the spec's), for messages and run names


@dataclass
class LoadedModel:
    """A loaded model: MLflow's pyfunc (`predict(rows)`), the ServedModel behind it (its torch
    `module`, `card` and `preprocessing`), and where it came from."""

    reference: ModelReference
    pyfunc: Any
    served: Any

    @property
    def card(self) -> dict[str, Any]:
        return self.served.card


def resolve_model(reference: str, tracking_uri: str | None) -> ModelReference:
    """The model `reference` names in the store at `tracking_uri` (default: MLFLOW_TRACKING_URI, then
    sqlite:///mlflow.db); TrackingError naming the reference if there is none."""
    from mlflow.tracking import MlflowClient

    uri, _ = resolve_tracking_uri(tracking_uri)
    require_store(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    client = MlflowClient(uri)
    try:
        if found := _LOGGED_MODEL_URI.match(reference):
            model = client.get_logged_model(found[1])
            return ModelReference(reference, model.model_id, model.source_run_id, model.experiment_id, uri, model.name)
        if found := _REGISTERED_URI.match(reference):
            name, number, alias = found[1], found[2], found[3]
            version = (
                client.get_model_version(name, number) if number else client.get_model_version_by_alias(name, alias)
            )
            run = client.get_run(version.run_id) if version.run_id else None
            experiment = run.info.experiment_id if run is not None else None
            return ModelReference(reference, version.model_id, version.run_id, experiment, uri, name)
        if found := _RUNS_URI.match(reference):
            run = client.get_run(found[1])
            return ModelReference(reference, None, found[1], run.info.experiment_id, uri, found[2])
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"no model {reference!r} in {uri}: {type(exc).__name__}: {exc}") from None
    _, _, run = find_run(uri, reference)
    return _model_of_run(client, uri, run)


def _model_of_run(client: Any, uri: str, run: Any) -> ModelReference:
    """A run's newest logged model: its model of record (a resumed run may have logged one each time)."""
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    if not models:
        raise TrackingError(
            f"run {run_id} ({run.info.run_name}) logged no model",
            hint="a run logs its model of record unless tracking.log_model is false; its checkpoints/best.pt "
            "holds the weights, and `knightctl train` with tracking.log_model: true logs one",
        )
    model = models[0]
    return ModelReference(f"models:/{model.model_id}", model.model_id, run_id, experiment_id, uri, model.name)


def load_model(reference: ModelReference) -> LoadedModel:
    """Load the model through MLflow's pyfunc (its plugin ops first, where this process lacks them)."""
    import mlflow.pyfunc

    restore = fluent_tracking_uri(reference.tracking_uri)  # MLflow resolves models:/ against the global store
    try:
        pyfunc = mlflow.pyfunc.load_model(reference.model_uri)
    except Exception as exc:
        raise TrackingError(f"cannot load the model {reference.model_uri}: {type(exc).__name__}: {exc}") from None
    finally:
        restore()
    served = pyfunc.unwrap_python_model()
    if not hasattr(served, "card"):
        raise TrackingError(f"{reference.model_uri} is not a knightctl model (it has no card.json)")
    return LoadedModel(reference, pyfunc, served)


def training_spec(reference: ModelReference) -> dict[str, Any] | None:
    """The resolved spec of the run that trained the model (`spec/resolved.yaml`), or None if that run
    or its spec is not in this store."""
    if reference.run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(reference.tracking_uri)
    try:
        local = client.download_artifacts(reference.run_id, "spec/resolved.yaml")
        with open(local, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except Exception:  # no such run or artifact here: the caller says what it needs instead
        return None
    return data if isinstance(data, dict) else None
