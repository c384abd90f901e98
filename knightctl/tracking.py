"""The MLflow adapter: it owns a run's lifecycle and keeps MLflow off the training hot path.

A run is opened with the flattened spec as params, tags, and the spec as artifacts; metrics are
buffered in memory and written in batches by a writer process (see metricwriter.py); the run
always ends FINISHED, FAILED (an exception) or KILLED (Ctrl-C), with every queued metric written
first.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from knightctl.errors import Interrupted, TrackingError
from knightctl.metricwriter import MetricWriter

if TYPE_CHECKING:
    import numpy as np
    import torch

    from knightctl.spec import ExperimentSpec

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_PARAM_BATCH = 100  # params per log_batch call, MLflow's own limit


def resolve_tracking_uri(cli_uri: str | None, spec: ExperimentSpec) -> tuple[str, str]:
    """The URI and where it came from: --tracking-uri, then MLFLOW_TRACKING_URI, the spec, the default."""
    if cli_uri:
        return cli_uri, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if spec.tracking.uri:
        return spec.tracking.uri, "spec tracking.uri"
    return DEFAULT_TRACKING_URI, "default"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": "0.1"}; lists index as model.0.type."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: str(data)}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def git_commit(cwd: Path) -> tuple[str, bool] | None:
    """(commit, dirty) of the repository around `cwd`, or None outside one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, bool(status.strip())


@dataclass
class MlflowRun:
    """An open MLflow run: where it is, and the writer that takes its metrics."""

    client: Any
    run_id: str
    experiment_id: str
    tracking_uri: str
    writer: MetricWriter

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None:
        """Queue (step, values) points; the writer process stores them while training goes on."""
        for step, values in points:
            self.writer.add(step, values)
        self.writer.flush()

    def close_metrics(self) -> None:
        """Wait until every queued metric is stored (before the model is logged, and at the end)."""
        self.writer.close()

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def log_model(self, model: torch.nn.Module, example: np.ndarray) -> str:
        """Log `model` (a CPU copy) in MLflow's pt2 format with signature and input example."""
        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            prediction = model(torch.from_numpy(example)).numpy()
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, prediction),
            input_example=example,
            serialization_format="pt2",
            # Naming the requirement skips MLflow's inference, which reloads the model in a
            # subprocess (about 7 s here). The local suffix (+cpu, +cu124) is not installable.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        return info.model_uri


@contextmanager
def open_run(spec: ExperimentSpec, *, tracking_uri: str, tags: Mapping[str, str]) -> Iterator[MlflowRun]:
    """Create the run, log params, tags and spec; close it with the status the block earned."""
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        experiment_id = experiment_id_for(client, spec.tracking.experiment or spec.name)
        run_id = client.create_run(experiment_id, run_name=spec.tracking.run_name or spec.name, tags=dict(tags)).info.run_id
    except TrackingError:
        raise
    except Exception as exc:  # a bad URI, a store MLflow cannot open: say which, not a traceback
        raise TrackingError(f"cannot start an MLflow run on {tracking_uri}: {type(exc).__name__}: {exc}") from None
    run = MlflowRun(client, run_id, experiment_id, tracking_uri, MetricWriter(tracking_uri, run_id))
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.start_run(run_id=run_id)  # the fluent run, for mlflow.pytorch.log_model
    status = "FAILED"
    try:
        _log_spec(client, run_id, spec)  # while the writer process starts
        run.writer.wait_ready()
        yield run
        run.close_metrics()  # a metric that could not be stored fails the run
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted):
        status = "KILLED"
        raise
    except BaseException as exc:
        _log_failure(client, run_id, exc)
        raise
    finally:
        try:
            if not run.writer.closed:  # the error path: store what was queued before closing the run
                run.close_metrics()
        except TrackingError as lost:  # the error already propagating is the one to report
            warnings.warn(str(lost), stacklevel=1)
        finally:
            mlflow.end_run(status=status)
            mlflow.set_tracking_uri(previous_uri)


def _log_spec(client: Any, run_id: str, spec: ExperimentSpec) -> None:
    """The flattened resolved spec as params; the spec as written and resolved as artifacts."""
    import yaml
    from mlflow.entities import Param

    params = [Param(key, value[:6000]) for key, value in flatten(spec.to_data()).items()]
    for start in range(0, len(params), _PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + _PARAM_BATCH], synchronous=True)
    if spec.source is not None:
        client.log_text(run_id, spec.source.text, f"spec/{Path(spec.source.path).name}")
    client.log_text(run_id, yaml.safe_dump(spec.to_data(), sort_keys=False), "spec/resolved.yaml")


def _log_failure(client: Any, run_id: str, exc: BaseException) -> None:
    """Keep the whole story of a failure with the run: message and traceback, chained causes too."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        client.log_text(run_id, text, "error/traceback.txt")
    except Exception:  # the run still ends FAILED; the terminal shows the error either way
        pass


def experiment_id_for(client: Any, name: str) -> str:
    """The id of experiment `name`, created if need be (safely against a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name)
    except MlflowException as exc:
        experiment = client.get_experiment_by_name(name)  # created by a concurrent run meanwhile
        if experiment is not None:
            return experiment.experiment_id
        raise TrackingError(f"cannot open MLflow experiment {name!r}: {exc}") from None
