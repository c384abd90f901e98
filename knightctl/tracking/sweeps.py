"""A sweep in MLflow: its parent run (made once, running again when the sweep is run again), the
trials an earlier run of it finished, and the parent closed with the best trial and the ranking."""

from __future__ import annotations

from typing import Any

from knightctl.tracking.stores import check_store, experiment_id_for, store_lock
from knightctl.tracking.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    NOTE_TAG,
    PARENT_TAG,
    RUN_NAME_TAG,
    SWEEP_TAG,
    SWEEP_TRIALS_TAG,
    TRIAL_OVERRIDES_TAG,
    TRIAL_TAG,
)


def open_parent(uri: str, experiment: str, name: str, key: str, count: int) -> tuple[Any, str]:
    """The client, and the sweep's parent run: the one an earlier run of this sweep (same `key`) made,
    RUNNING again, or a new one."""
    from mlflow.tracking import MlflowClient

    check_store(uri)
    with store_lock(uri):  # the store's tables and the experiment, made once, before any worker
        client = MlflowClient(uri)
        experiment_id = experiment_id_for(client, experiment)
    earlier = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if earlier:
        client.update_run(earlier[0].info.run_id, status="RUNNING")
        return client, earlier[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={SWEEP_TAG: key, SWEEP_TRIALS_TAG: str(count)})
    return client, run.info.run_id


def finished_trials(client: Any, parent_id: str, metric: str) -> dict[str, tuple[tuple[str, ...], str, float | None]]:
    """The trials an earlier run of this sweep finished: key -> (overrides, run id, `metric`'s value)."""
    runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
        max_results=10000,
    )
    done: dict[str, tuple[tuple[str, ...], str, float | None]] = {}
    for run in runs:
        key = run.data.tags.get(TRIAL_TAG)
        if key and run.info.status == "FINISHED" and key not in done:
            overrides = tuple(run.data.tags.get(TRIAL_OVERRIDES_TAG, "").split("\n"))
            done[key] = (overrides, run.info.run_id, run.data.metrics.get(metric))
    return done


def trial_tags(parent_id: str, key: str, overrides: tuple[str, ...], label: str) -> dict[str, str]:
    """The tags that make a training run a trial of the sweep, nested under its parent."""
    return {PARENT_TAG: parent_id, TRIAL_TAG: key, TRIAL_OVERRIDES_TAG: "\n".join(overrides), RUN_NAME_TAG: label}


def close_parent(
    client: Any, parent_id: str, status: str, note: str, metric: str, best: tuple[str, tuple[str, ...], float] | None
) -> None:
    """The ranking as the parent's description, the best trial (run id, overrides, value) as tags and
    `best/<metric>`, and the parent's status."""
    from mlflow.entities import Metric, RunTag

    tags = {NOTE_TAG: note}
    metrics = []
    if best is not None:
        run_id, overrides, value = best
        tags |= {BEST_RUN_TAG: run_id, BEST_TRIAL_TAG: " ".join(overrides)}
        metrics.append(Metric(f"best/{metric}", value, 0, 0))
    client.log_batch(parent_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    client.set_terminated(parent_id, status)
