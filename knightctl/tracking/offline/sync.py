"""`knightctl sync`: deliver what runs journaled while their tracking server was away; close stale runs.

Each journal (journal.py) names its store; `tracking_uri` overrides that. A server is asked once
(a 5 s probe) before anything is sent to it, and every call fails fast (offline.FAIL_FAST_ENV), so
a server still away costs seconds, not MLflow's minutes of retries. Delivered journals are removed.

Then the stores it reached (and the one `tracking_uri`, MLFLOW_TRACKING_URI or the default names)
are searched for stale runs (FAULTS 20): RUNNING, started on this machine by a process that no
longer runs (tracking/owner.py), with no journal still waiting. Each is marked KILLED, and its
description says why.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from knightctl.errors import SyncError, TrackingError
from knightctl.tracking.note import amend_note
from knightctl.tracking.offline.fallback import fail_fast_http, failure_reason, is_connection_error, is_http, shown_path
from knightctl.tracking.offline.journal import Counts, Journal, journals
from knightctl.tracking.owner import owner_alive, run_owner
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.stores import check_server, sqlite_path
from knightctl.tracking.tags import NOTE_TAG, OUTCOME_TAG

_PAGE = 1000  # runs per search request


@dataclass(frozen=True)
class PendingJournal:
    run_id: str
    path: Path
    tracking_uri: str
    reason: str  # why it is still waiting: the server is away, or the store refused an entry


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    tracking_uri: str
    pid: str
    host: str


@dataclass
class SyncReport:
    """What `sync` did: journals delivered (and what they held), stale runs closed, journals still waiting."""

    delivered: list[str] = field(default_factory=list)  # run ids
    metrics: int = 0
    artifacts: int = 0
    tags: int = 0
    statuses: int = 0
    killed: list[StaleRun] = field(default_factory=list)
    pending: list[PendingJournal] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when nothing is left waiting."""
        return not self.pending

    def count(self, run_id: str, counts: Counts) -> None:
        self.delivered.append(run_id)
        self.metrics += counts.metrics
        self.artifacts += counts.artifacts
        self.tags += counts.tags
        self.statuses += counts.status is not None


def sync(tracking_uri: str | None, journal_dir: Path | None = None) -> SyncReport:
    """Deliver every journal under `journal_dir` (default `.knightctl/journal` here) to its store, or
    to `tracking_uri`; then mark this machine's stale RUNNING runs KILLED.

    A journal that cannot be delivered (its store away or refusing an entry) stays, listed in
    `pending` with why. SyncError only if the journals cannot be read, a store cannot be searched,
    or the store `tracking_uri` names cannot be used and no journal waits for it.
    """
    report = SyncReport()
    reasons: dict[str, str | None] = {}  # store URI -> why it cannot be used (None: usable)
    try:
        found = journals(journal_dir)
    except OSError as exc:
        raise SyncError(f"cannot read the journals in {exc.filename or journal_dir}: {exc.strerror or exc}") from None
    with fail_fast_http():
        for journal in found:
            _deliver(journal, tracking_uri, report, reasons)
        waiting = {pending.run_id for pending in report.pending}
        for uri in _stores_to_search(tracking_uri, reasons, report):
            _close_stale_runs(uri, waiting, report)
    return report


def _deliver(journal: Journal, tracking_uri: str | None, report: SyncReport, reasons: dict[str, str | None]) -> None:
    try:
        uri = tracking_uri or journal.tracking_uri
    except (OSError, ValueError, KeyError) as exc:
        report.pending.append(PendingJournal(journal.run_id, journal.path, "?", f"its run.json is unreadable: {exc}"))
        return
    if uri not in reasons:
        reasons[uri] = _unusable(uri)
    if reasons[uri] is not None:
        report.pending.append(PendingJournal(journal.run_id, journal.path, uri, str(reasons[uri])))
        return
    try:
        counts = journal.deliver(_client(uri))
    except Exception as exc:
        if is_connection_error(exc):
            reason = f"{uri} is unreachable: {failure_reason(exc)}"
        elif isinstance(exc, OSError):  # a file of the journal itself
            reason = f"cannot read the journal: {exc}"
        else:
            reason = f"{uri} refused an entry: {failure_reason(exc)}"
        report.pending.append(PendingJournal(journal.run_id, journal.path, uri, reason))
        return
    report.count(journal.run_id, counts)


def _unusable(uri: str) -> str | None:
    """Why nothing can go to `uri` now (a server that does not answer, a database that is not there), or None."""
    if is_http(uri):
        try:
            check_server(uri)
        except TrackingError as away:
            return away.message
        return None
    database = sqlite_path(uri)
    if database is not None and str(database) != ":memory:" and not database.exists():
        return f"{uri}: no such store ({database} does not exist)"
    return None


def _stores_to_search(tracking_uri: str | None, reasons: dict[str, str | None], report: SyncReport) -> list[str]:
    """The stores to search for stale runs: the one named (else the default), and every usable one a journal named.

    A store named with `tracking_uri` that cannot be used is an error, unless the report already
    says so for the journals waiting for it.
    """

    named = resolve_tracking_uri(tracking_uri)[0]
    if named not in reasons:
        reasons[named] = _unusable(named)
    if tracking_uri and reasons[named] is not None and not report.pending:
        raise SyncError(f"cannot sync: {reasons[named]}", hint="start it, or name another store with --tracking-uri")
    return [uri for uri, reason in reasons.items() if reason is None]


def _close_stale_runs(uri: str, waiting: set[str], report: SyncReport) -> None:
    """Mark KILLED every RUNNING run of `uri` whose process on this machine is gone."""
    client = _client(uri)
    try:
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        runs = _running_runs(client, experiments) if experiments else []
    except Exception as exc:
        raise SyncError(f"cannot look for stale runs in {uri}: {failure_reason(exc)}") from None
    for run in runs:
        tags = run.data.tags
        if run.info.run_id in waiting or owner_alive(tags) is not False:
            continue  # its journal may still hold its real status; or its owner lives, or is elsewhere
        _mark_killed(client, run.info.run_id, tags)
        owner = run_owner(tags)
        pid, host = (str(owner.pid), owner.host) if owner else ("?", socket.gethostname())
        report.killed.append(StaleRun(run.info.run_id, uri, pid, host))


def _running_runs(client: Any, experiments: list[str]) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiments, filter_string="attributes.status = 'RUNNING'", max_results=_PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _mark_killed(client: Any, run_id: str, tags: dict[str, str]) -> None:
    """End the run KILLED; its description's status row and a last line say why."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    owner = run_owner(tags)
    reason = (
        f"its process ({owner.describe() if owner else 'not recorded'}) ended without closing the run "
        "(SIGKILL, a crash or a power cut)"
    )
    note = amend_note(
        tags.get(NOTE_TAG, ""),
        "KILLED: its process ended without closing the run",
        f"**Marked KILLED by `knightctl sync`** on {when}: {reason}.",
    )
    client.set_tag(run_id, NOTE_TAG, note)
    client.set_tag(run_id, OUTCOME_TAG, "KILLED: its process ended without closing the run")
    client.set_terminated(run_id, "KILLED")


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def describe_pending(pending: PendingJournal) -> str:
    """`RUN_ID (.knightctl/journal/RUN_ID): why`, for a line on screen."""
    return f"{pending.run_id} ({shown_path(pending.path)}): {pending.reason}"
