"""Write a run's metrics to MLflow from a separate process, off the training process's GIL.

Storing a metric is pure-Python work (a bulk insert on sqlite, sqlitemetrics.py; a REST call
to a server). From a thread, that work would hold the training process's GIL and slow the loop;
from its own process it runs on another core. The training side only appends tuples to a list
and, at each flush, hands the list to the writer's channel (helperprocess.py: a plain `python -c`
child, so that a script without a main guard, standard input and Jupyter all work). The process
also samples system metrics (CPU, memory, GPU), which describe the machine, not the process.

Starting the writer costs its own import of MLflow (about 2 s of CPU here). It is started before
the run exists, so that the import overlaps with building the model; `attach()` then names the
run, and `wait_ready()` makes sure the writer has found it before the first training step.

The writer process ignores SIGINT and SIGTERM: a Ctrl-C in a terminal reaches the whole process
group, and the writer must outlive the trainer's clean-up to write what was queued. It stops on
the sentinel `None`, which it also reads when its parent has died (the channel's end).

If an http tracking server goes away mid-run, batches wait in the run's journal until it is back
(outbox.py), and the writer's MLflow calls fail fast instead of retrying for minutes.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from knightctl.errors import TrackingError
from knightctl.tracking.helperprocess import HelperProcess
from knightctl.tracking.offline.fallback import FAIL_FAST_ENV
from knightctl.tracking.offline.journal import Journal, journal_root
from knightctl.tracking.offline.outbox import Outbox
from knightctl.tracking.sqlitemetrics import MetricTuple, SqliteMetricSink
from knightctl.tracking.stores import sqlite_path
from knightctl.tracking.systemmetrics import SystemSampler

_BATCH_LIMIT = 1000  # metrics per log_batch call: MLflow's own limit
_CLOSE_TIMEOUT_S = 300.0  # a large backlog on a slow store still gets written
# A sqlite log_batch costs about 7 ms plus 0.1 ms per metric here: written as they arrive (an
# epoch's worth, often 20-30 metrics), the fixed part dominates and the writer falls behind a fast
# loop. Gathering for a fifth of a second first makes calls fuller, and leaves at most that much
# to write after the last step; the dashboard lags by as much.
_COALESCE_S = 0.2


TRAINING_STARTED = "training started"  # the event that starts the system metrics


class MetricWriter:
    """Buffers metrics in memory and ships them to a writer process in batches.

    The process starts at once and imports MLflow while the caller prepares the run; `attach`
    then names the run (or `abandon` stops it if no run comes).
    """

    def __init__(
        self,
        tracking_uri: str,
        run_id: str | None = None,
        *,
        system_metrics: bool = False,
        journal_dir: Path | None = None,
    ) -> None:
        self._buffer: list[MetricTuple] = []
        self.journal_root = journal_root(journal_dir)  # where metrics wait while a server is away
        # Sent: the run id first, then lists of metrics, then None. Received: ("started", "") once
        # MLflow is imported, ("ready", "") once the run is found, then ("done", journaled count);
        # or ("error", message) at any point.
        try:
            self._process = HelperProcess(
                f"{__name__}:_write_metrics",
                (tracking_uri, system_metrics, str(self.journal_root)),
                name="knightctl-metrics",
            )
        except (OSError, RuntimeError) as exc:  # no Python to start (an embedded interpreter, a deleted venv)
            python = sys.executable or "(no sys.executable)"
            raise TrackingError(f"cannot start the process that writes metrics to MLflow with {python}: {exc}") from exc
        self.run_id: str | None = None
        self.started = False
        self.closed = False
        self.journaled = 0  # metrics left in the journal at close, for `knightctl sync` to deliver
        if run_id is not None:
            self.attach(run_id)

    @property
    def journal_path(self) -> Path | None:
        """The run's journal folder (it exists only while something waits in it)."""
        return self.journal_root / self.run_id if self.run_id else None

    def attach(self, run_id: str) -> None:
        """Name the run the metrics belong to; the writer opens the store only now."""
        self.run_id = run_id
        self._process.put(run_id)

    def abandon(self) -> None:
        """Stop a writer whose run never started (or failed to); idempotent."""
        if self.closed:
            return
        self.closed = True
        self._process.put(None)
        self._process.join(5.0)  # s: it reads the stop once it has imported MLflow, slower on a loaded machine
        if self._process.is_alive():  # no run was attached, so nothing of it is lost
            self._process.kill()
            self._process.join(5.0)
        self._release()

    def wait_started(self, timeout_s: float = 120.0) -> None:
        """Block until the writer process has imported MLflow: called before the run is made, so that
        a writer that cannot start raises TrackingError without leaving a FAILED run behind."""
        if self.started:
            return
        kind, message = self._next_status(timeout_s, "did not start")
        if kind != "started":
            self.closed = True
            self._process.join(5.0)
            self._release()
            raise TrackingError(f"cannot start the process that writes metrics to MLflow: {message}")
        self.started = True

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the writer process has imported MLflow and found the run."""
        self.wait_started(timeout_s)
        kind, message = self._next_status(timeout_s, "did not find the run")
        if kind != "ready":
            self.closed = True
            self._process.join(5.0)
            self._release()
            raise TrackingError(f"cannot write metrics to MLflow run {self.run_id}: {message}")

    def training_started(self) -> None:
        """The loop is about to take its first step: system metrics are sampled from now on."""
        self._process.put(TRAINING_STARTED)

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Buffer one point per metric at `step`: no I/O, no pickling."""
        timestamp = int(time.time() * 1000)
        self._buffer.extend((key, float(value), timestamp, step) for key, value in values.items())

    def flush(self) -> None:
        """Hand everything buffered to the writer process (it writes while training goes on)."""
        if self._buffer:
            self._process.put(self._buffer)
            self._buffer = []

    def close(self) -> None:
        """Flush, wait until every metric is written or journaled, and stop the writer; idempotent.

        Metrics journaled because the server is away do not raise: `journaled` counts them.
        """
        if self.closed:
            return
        self.closed = True
        self.flush()
        self._process.put(None)
        try:
            kind, message = self._next_status(_CLOSE_TIMEOUT_S, f"did not finish within {_CLOSE_TIMEOUT_S:.0f} s")
            self._process.join(5.0)  # it exits at once after "done"
            if kind == "done" and self._process.is_alive():  # every metric is stored or journaled
                self._process.kill()
            if kind != "done":
                raise TrackingError(f"metrics of run {self.run_id} were not all written: {message}")
            self.journaled = int(message)
        finally:
            self._release()

    def _next_status(self, timeout_s: float, failure: str) -> tuple[str, str]:
        """The writer's next (kind, detail) message, or ("error", why none came): it died, or `failure`
        after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                message = self._process.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() > deadline:
                    return "error", f"the writer process {failure}"
                continue
            if message is None:  # its end of the channel closed: it exited
                self._process.join(5.0)
                return "error", f"the writer process exited with code {self._process.exitcode}"
            return message

    def _release(self) -> None:
        self._process.close()


def _write_metrics(inbox: Any, status: Any, tracking_uri: str, system_metrics: bool, journal_dir: str) -> None:
    """The writer process: wait for the run id, then store the inbox's batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The journal is this process's retry: MLflow's own (minutes against a dead server) would stall
    # every batch behind it. The variables are read at each call, in this process only.
    os.environ.update(FAIL_FAST_ENV)
    try:
        import mlflow.store.tracking.dbmodels.models  # noqa: F401  (the slow imports, before the run exists)
        import sqlalchemy.dialects.sqlite  # noqa: F401
        from mlflow.tracking import MlflowClient

        status.put(("started", ""))
        run_id = _wait_for_run(inbox)
        if run_id is None:
            os._exit(0)  # abandoned: no run, nothing to write
        client = MlflowClient(tracking_uri)
        client.get_run(run_id)  # opens the store and proves the run exists, before training starts
        store = _MetricStore(client, tracking_uri, run_id)
        outbox = Outbox(store.write, client, Journal(Path(journal_dir), run_id, tracking_uri), tracking_uri)
        sampler = SystemSampler(tracking_uri, run_id) if system_metrics else None
        status.put(("ready", ""))
        stop = False
        while not stop:
            batch: list[MetricTuple] = []
            events: list[str] = []
            stop = _gather(inbox, batch, outbox.wait_s(), events)
            if sampler is not None and TRAINING_STARTED in events:
                sampler.begin()
            for start in range(0, len(batch), _BATCH_LIMIT):
                outbox.put(batch[start : start + _BATCH_LIMIT])
            outbox.retry_if_due()
        journaled = outbox.close()
        if sampler is not None:
            sampler.finish(last_sample=not outbox.offline)
        store.close()
    except BaseException as exc:  # reported to the parent, which raises it as a TrackingError
        status.put(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from None
    status.put(("done", str(journaled)))  # written and flushed before put returns
    # Everything is committed: skip the interpreter's teardown of MLflow and SQLAlchemy (about
    # 0.5 s here), which the trainer would otherwise wait for at the end of every run.
    os._exit(0)


class _MetricStore:
    """Writes batches with one bulk insert on a sqlite store, with `log_batch` anywhere else.

    If the bulk insert ever fails (its transaction then wrote nothing), this and every later batch
    go through `log_batch`, which is slower but is MLflow's own.
    """

    def __init__(self, client: Any, tracking_uri: str, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.bulk = SqliteMetricSink(tracking_uri, run_id) if sqlite_path(tracking_uri) is not None else None

    def write(self, chunk: list[MetricTuple]) -> None:
        if self.bulk is not None:
            try:
                self.bulk.write(chunk)
                return
            except Exception:
                self.close()
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(*entry) for entry in chunk], synchronous=True)

    def close(self) -> None:
        if self.bulk is not None:
            self.bulk.close()
            self.bulk = None


def _wait_for_run(inbox: Any) -> str | None:
    """The run id the trainer sends once it made the run, or None if it gave up (or died)."""
    return inbox.get()


def _gather(inbox: Any, batch: list[MetricTuple], idle_s: float | None = None, events: list[str] | None = None) -> bool:
    """Collect one batch: everything that arrives within _COALESCE_S of the first message, or
    _BATCH_LIMIT metrics, whichever comes first; or nothing, once `idle_s` passed without a message
    (a journal delivery is due). True once the sentinel arrived (or the trainer died). Events (a
    string such as TRAINING_STARTED) go to `events`.
    """
    deadline = None  # set by the first message
    idle_until = None if idle_s is None else time.monotonic() + idle_s
    while len(batch) < _BATCH_LIMIT:
        until = deadline if deadline is not None else idle_until
        wait_s = 1.0 if until is None else min(1.0, until - time.monotonic())
        if wait_s <= 0:
            return False
        try:
            item = inbox.get(timeout=wait_s)
        except queue.Empty:
            continue
        if item is None:  # the sentinel, or the trainer died (SIGKILL): nothing more will come
            return True
        if isinstance(item, str):
            if events is not None:
                events.append(item)
            if deadline is None:
                return False  # nothing gathered yet: the event is acted on now, not after the first batch
            continue
        batch.extend(item)
        deadline = deadline or time.monotonic() + _COALESCE_S
    return False
