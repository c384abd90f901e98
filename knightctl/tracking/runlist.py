"""Read runs back out of an MLflow store: recent runs as summaries, and two runs compared.

Read-only: a local store that does not exist is an error, never an empty store created on the
way (MLflow would create one on first access). Every MLflow failure becomes a TrackingError
naming the store.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from knightctl.errors import TrackingError
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.stores import check_server, sqlite_path

KEY_METRICS = ("val/accuracy", "val/loss", "train/loss")
MIN_PREFIX = 4  # shortest run-id prefix accepted as a reference, in hex digits
_SHOWN_CANDIDATES = 8  # an ambiguous reference lists at most this many runs
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class RunSummary:
    """One run as `knightctl runs` shows it; absent tags and metrics are None or missing keys."""

    run_id: str
    run_name: str
    experiment: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING or SCHEDULED
    device: str | None
    metrics: dict[str, float]  # the final values of KEY_METRICS the run has
    gradcheck_verdict: str | None
    start_time: datetime | None  # UTC
    duration_s: float | None  # None while the run has not ended


@dataclass(frozen=True)
class ParamDifference:
    key: str
    value_a: str | None  # None: run A has no such param
    value_b: str | None


@dataclass(frozen=True)
class MetricPair:
    key: str
    value_a: float | None  # None: run A never logged it
    value_b: float | None


@dataclass(frozen=True)
class RunComparison:
    """Two runs side by side: only the params that differ, every final metric of either."""

    run_a: RunSummary
    run_b: RunSummary
    differing_params: tuple[ParamDifference, ...]
    identical_params: int  # params both runs have, with the same value
    metrics: tuple[MetricPair, ...]  # union of both runs' metric keys, sorted


def local_store_path(tracking_uri: str) -> Path | None:
    """The file (sqlite) or folder (file store) a local URI names; None for servers and in-memory stores."""
    if tracking_uri.startswith("sqlite"):
        path = sqlite_path(tracking_uri)
        return None if path is None or str(path) == ":memory:" else path
    if tracking_uri.startswith("file://"):
        return Path(tracking_uri[len("file://") :])
    if "://" in tracking_uri or tracking_uri == "databricks":
        return None
    return Path(tracking_uri)  # a bare path is MLflow's file store


def require_store(tracking_uri: str) -> None:
    """Raise TrackingError if `tracking_uri` names a local store that does not exist yet."""
    path = local_store_path(tracking_uri)
    if path is not None and not path.exists():
        raise TrackingError(
            f"no MLflow store at {path.absolute()} ({tracking_uri}): nothing has been tracked there yet",
            hint="train something first (`knightctl train SPEC`), or name the store with --tracking-uri or "
            "MLFLOW_TRACKING_URI",
        )


@contextmanager
def _store_errors(tracking_uri: str) -> Iterator[None]:
    """Any failure inside MLflow (a refused query, a broken database, no server) as a TrackingError."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"cannot read the MLflow store {tracking_uri}: {type(exc).__name__}: {exc}") from None


def _open(tracking_uri: str | None) -> tuple[Any, str]:
    """A client on the store (after checking a local one exists) and the URI it reads."""
    from mlflow.tracking import MlflowClient

    uri, _ = resolve_tracking_uri(tracking_uri)
    require_store(uri)
    if uri.startswith(("http://", "https://")):
        check_server(uri)  # in seconds, where MLflow would retry for minutes
    with _store_errors(uri):
        return MlflowClient(uri), uri


def _experiments(client: Any, name: str | None, uri: str) -> dict[str, str]:
    """{experiment id: name} for the named experiment, or every active one."""
    if name is not None:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise TrackingError(
                f"no experiment named {name!r} in {uri}",
                hint="`knightctl runs` without --experiment lists every experiment's runs",
            )
        return {experiment.experiment_id: experiment.name}
    found: dict[str, str] = {}
    page_token = None
    while True:
        page = client.search_experiments(page_token=page_token)
        found.update((e.experiment_id, e.name) for e in page)
        page_token = page.token
        if not page_token:
            return found


def _summary(run: Any, experiments: dict[str, str]) -> RunSummary:
    info, data = run.info, run.data
    ended = info.end_time is not None and info.status != "RUNNING"
    return RunSummary(
        run_id=info.run_id,
        run_name=info.run_name or "",
        experiment=experiments.get(info.experiment_id, info.experiment_id),
        status=info.status,
        device=data.tags.get("device"),
        metrics={key: data.metrics[key] for key in KEY_METRICS if key in data.metrics},
        gradcheck_verdict=data.tags.get("gradcheck.verdict"),
        start_time=datetime.fromtimestamp(info.start_time / 1000, tz=timezone.utc) if info.start_time else None,
        duration_s=(info.end_time - info.start_time) / 1000 if ended and info.start_time else None,
    )


def list_runs(tracking_uri: str | None, *, experiment: str | None = None, limit: int = 20) -> list[RunSummary]:
    """The `limit` most recent runs, newest first, of every experiment or the one named."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    client, uri = _open(tracking_uri)
    with _store_errors(uri):
        experiments = _experiments(client, experiment, uri)
        if not experiments:
            return []
        runs = client.search_runs(list(experiments), order_by=["attributes.start_time DESC"], max_results=limit)
        return [_summary(run, experiments) for run in runs]


def _quoted(reference: str) -> str:
    """`reference` as a string literal of MLflow's filter language."""
    for quote in ("'", '"'):
        if quote not in reference:
            return f"{quote}{reference}{quote}"
    raise TrackingError(f"cannot look up {reference!r}: a run reference may not hold both kinds of quote")


def _matches(client: Any, experiment_ids: list[str], reference: str) -> dict[str, Any]:
    """{run id: run} for every run whose id starts with `reference` or whose name is `reference`."""
    filters = [f"attributes.run_name = {_quoted(reference)}"]
    if len(reference) >= MIN_PREFIX and _HEX.match(reference):
        filters.append(f"attributes.run_id LIKE '{reference}%'")
    found: dict[str, Any] = {}
    for query in filters:
        for run in client.search_runs(experiment_ids, query, max_results=_SHOWN_CANDIDATES + 1):
            found[run.info.run_id] = run
    return found


def _resolve(client: Any, uri: str, reference: str, experiments: dict[str, str]) -> Any:
    """The one run `reference` names: a run id, a unique id prefix (4+ hex digits) or a run name."""
    found = _matches(client, list(experiments), reference) if experiments else {}
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise TrackingError(
            f"no run {reference!r} in {uri}",
            hint=f"give a run id, a unique prefix of one ({MIN_PREFIX}+ characters) or a run name; `knightctl runs` "
            "lists them",
        )
    shown = [
        f"{run.info.run_id} ({run.info.run_name}, {experiments.get(run.info.experiment_id, '?')})"
        for run in found.values()
    ]
    more = "\n  ..." if len(shown) > _SHOWN_CANDIDATES else ""
    raise TrackingError(
        f"{reference!r} is ambiguous in {uri}; it names:\n  " + "\n  ".join(shown[:_SHOWN_CANDIDATES]) + more,
        hint="give more of the run id",
    )


def find_run(tracking_uri: str | None, reference: str) -> tuple[Any, str, Any]:
    """The MLflow client, the store's URI and the one run `reference` names (a run id, a unique id
    prefix or a run name) in any experiment; TrackingError if there is none, or more than one."""
    client, uri = _open(tracking_uri)
    with _store_errors(uri):
        return client, uri, _resolve(client, uri, reference, _experiments(client, None, uri))


def compare_runs(tracking_uri: str | None, run_a: str, run_b: str) -> RunComparison:
    """Runs `run_a` and `run_b` (ids, id prefixes or names): differing params, final metrics side by side."""
    client, uri = _open(tracking_uri)
    with _store_errors(uri):
        experiments = _experiments(client, None, uri)
        first, second = (_resolve(client, uri, reference, experiments) for reference in (run_a, run_b))
    params_a, params_b = first.data.params, second.data.params
    differing = tuple(
        ParamDifference(key, params_a.get(key), params_b.get(key))
        for key in sorted(params_a.keys() | params_b.keys())
        if params_a.get(key) != params_b.get(key)
    )
    metrics_a, metrics_b = first.data.metrics, second.data.metrics
    return RunComparison(
        run_a=_summary(first, experiments),
        run_b=_summary(second, experiments),
        differing_params=differing,
        identical_params=sum(1 for key, value in params_a.items() if params_b.get(key) == value),
        metrics=tuple(
            MetricPair(key, metrics_a.get(key), metrics_b.get(key))
            for key in sorted(metrics_a.keys() | metrics_b.keys())
        ),
    )
