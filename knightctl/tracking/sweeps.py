"""A sweep in MLflow: its parent run (one per Optuna study, running again whenever a process works on
the study) and what the parent records: the space, the study and the ranking as params, the base
spec as artifacts, the trials' ranking as its description, a plot of them, and the best trial as
tags and one metric. Also each trial's tags (its parent, study and number; pruned or not) and its
history of the ranking metric."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knightctl.tracking.plots import save_png
from knightctl.tracking.stores import check_store, experiment_id_for, new_run, store_lock
from knightctl.tracking.sweepnote import sweep_note, sweep_outcome
from knightctl.tracking.sweepplots import SWEEP_PLOT_ARTIFACT, sweep_figure
from knightctl.tracking.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    NOTE_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    PRUNED_TAG,
    RUN_NAME_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    SWEEP_TRIALS_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_OVERRIDES_TAG,
    TRIAL_TAG,
)

if TYPE_CHECKING:
    from knightctl.spec.model import ExperimentSpec
    from knightctl.sweep.ranking import SweepResult
    from knightctl.sweep.space import Axis

_PARAM_VALUE_LIMIT = 6000  # characters: MLflow refuses a longer param value


def best_metric_name(metric: str) -> str:
    """`sweep/best_val_loss` for val/loss: the parent's one metric, under a `sweep/` prefix of its own
    so that it charts apart from the trials' train/ and val/ metrics, not as a section among them."""
    return "sweep/best_" + metric.replace("/", "_")


def open_parent(
    uri: str,
    experiment: str,
    name: str,
    key: str,
    count: int,
    provenance: Mapping[str, str],
    existing: str | None = None,
) -> tuple[Any, str, str]:
    """The client, and the sweep's parent run and its experiment's id: `existing` (the study's) or the
    run an earlier run of this sweep (same `key`) made, RUNNING again, or a new one with the
    `provenance` tags (who ran it, from which spec file and commit) that a training run has."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_store(uri)
    with store_lock(uri):  # the store's tables and the experiment, made once, before any worker
        client = MlflowClient(uri)
        experiment_id = experiment_id_for(client, experiment)
    if existing:
        try:
            run = client.get_run(existing)
        except MlflowException:  # the study was tracked in another store: a new parent here
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(existing, status="RUNNING")
            return client, existing, run.info.experiment_id
    earlier = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        return client, earlier[0].info.run_id, experiment_id
    tags = {**provenance, SWEEP_TAG: key, SWEEP_TRIALS_TAG: str(count)}
    return client, new_run(client, experiment_id, run_name=name, tags=tags), experiment_id


def parent_params(
    spec: ExperimentSpec,
    axes: Sequence[Axis],
    *,
    sampler: str,
    metric: str,
    goal: str,
    trials: int,
    seed: int | None,
    overrides: Sequence[str] = (),
    study: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The sweep as params: each swept path's values or distribution (`sweep.space.optimizer.lr`:
    `[0.01, 0.1]`), how trials were made and ranked, the study (name and storage, its password
    hidden) and the base spec (`--set`s included) by name and digest. Only what is set: the seed of
    draws, the overrides when there are any."""
    params = {f"sweep.space.{axis.path}": axis.describe() for axis in axes}
    params |= {"sweep.sampler": sampler, "sweep.trials": str(trials), "sweep.metric": metric, "sweep.goal": goal}
    if study is not None:
        params |= {"sweep.study": study[0], "sweep.storage": hide_password(study[1])}
    if seed is not None:
        params["sweep.seed"] = str(seed)
    params |= {"sweep.base_spec.name": spec.name, "sweep.base_spec.digest": spec.digest()}
    if overrides:
        params["sweep.base_spec.overrides"] = "\n".join(overrides)
    return {key: value[:_PARAM_VALUE_LIMIT] for key, value in params.items()}


def record_parent(client: Any, outcome: SweepResult, params: Mapping[str, str], spec: ExperimentSpec) -> None:
    """The params the parent does not hold yet (a reopened parent keeps its own: MLflow refuses to
    change one), the base spec as artifacts, as a training run stores its spec (`spec/<file name>` as
    written, `spec/resolved.yaml` with the `--set`s and every default), and the description so far."""
    import yaml
    from mlflow.entities import Param

    existing = client.get_run(outcome.parent_run_id).data.params
    new = [Param(key, value) for key, value in params.items() if key not in existing]
    if new:
        client.log_batch(outcome.parent_run_id, params=new, synchronous=True)
    if spec.source is not None:
        client.log_text(outcome.parent_run_id, spec.source.text, f"spec/{Path(spec.source.path).name}")
    client.log_text(outcome.parent_run_id, yaml.safe_dump(spec.to_data(), sort_keys=False), "spec/resolved.yaml")
    describe_parent(client, outcome, "RUNNING")


def describe_parent(client: Any, outcome: SweepResult, status: str) -> None:
    """The parent's description (the ranking so far) and its outcome line, as `status` tells them."""
    from mlflow.entities import RunTag

    tags = {NOTE_TAG: sweep_note(outcome, status), OUTCOME_TAG: sweep_outcome(outcome, status)}
    client.log_batch(outcome.parent_run_id, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)


def metric_history(client: Any, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Every (step, value) of `metric` that the run logged; empty if it never logged it."""
    return [(point.step, point.value) for point in client.get_metric_history(run_id, metric)]


def trial_tags(
    parent_id: str, key: str, overrides: tuple[str, ...], label: str, *, study: str = "", number: int | None = None
) -> dict[str, str]:
    """The tags that make a training run a trial of the sweep, nested under its parent: its values,
    name, and the Optuna study and trial number it is."""
    tags = {PARENT_TAG: parent_id, TRIAL_TAG: key, TRIAL_OVERRIDES_TAG: "\n".join(overrides), RUN_NAME_TAG: label}
    if study:
        tags[STUDY_TAG] = study
    if number is not None:
        tags[TRIAL_NUMBER_TAG] = str(number)
    return tags


def mark_pruned(client: Any, run_id: str, reason: str) -> None:
    """Tag a trial's run as pruned (it ended FINISHED, early, as `reason` says)."""
    client.set_tag(run_id, PRUNED_TAG, reason)


def hide_password(url: str) -> str:
    """`postgresql://alice:***@host/db` for a URL with a password; any other as given."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def close_parent(client: Any, outcome: SweepResult, status: str) -> None:
    """The parent closed with `status`: the ranking as its description, the plot of the trials, and
    the best trial's run id and overrides as tags and its value as `best_metric_name(metric)`."""
    from mlflow.entities import Metric, RunTag

    parent_id = outcome.parent_run_id
    try:
        _log_plot(client, outcome)
        tags = {NOTE_TAG: sweep_note(outcome, status), OUTCOME_TAG: sweep_outcome(outcome, status)}
        metrics = []
        best = outcome.best
        if best is not None and best.value is not None:
            tags |= {BEST_RUN_TAG: best.run_id or "", BEST_TRIAL_TAG: " ".join(best.trial.overrides)}
            metrics.append(Metric(best_metric_name(outcome.metric), best.value, 0, 0))
        client.log_batch(parent_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    finally:
        client.set_terminated(parent_id, status)


def _log_plot(client: Any, outcome: SweepResult) -> None:
    """The plot as `plots/sweep.png`; a plot that cannot be drawn or stored is a warning, not a lost ranking."""
    try:
        figure = sweep_figure(outcome)
        if figure is None:
            return
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / SWEEP_PLOT_ARTIFACT
            save_png(figure, local)
            client.log_artifact(outcome.parent_run_id, str(local), str(Path(SWEEP_PLOT_ARTIFACT).parent))
    except Exception as exc:
        warnings.warn(f"could not store the sweep's plot with MLflow run {outcome.parent_run_id}: {exc}", stacklevel=1)
