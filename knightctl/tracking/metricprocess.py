"""The metric writer's process: it finds its run, then stores the trainer's batches with MLflow's
`log_batch` until told to stop, journaling them while an http server is away (outbox.py), and
samples system metrics (CPU, memory, GPU) from training's start.

It ignores SIGINT and SIGTERM: a Ctrl-C in a terminal reaches the whole process group, and the
writer must outlive the trainer's clean-up to write what was queued. It stops on the sentinel
`None`, which it also reads when its parent has died (the channel's end). If MLflow refuses a
batch (a deleted run, a key it does not take), it says why, in one line, and exits. Its MLflow
calls fail fast instead of retrying for minutes: the journal is its retry.
"""

from __future__ import annotations

import os
import queue
import signal
import time
from pathlib import Path
from typing import Any

from knightctl.errors import KnightctlError, TrackingError, first_line
from knightctl.tracking.offline.fallback import FAIL_FAST_ENV, is_connection_error
from knightctl.tracking.offline.journal import Journal, MetricTuple
from knightctl.tracking.offline.outbox import Outbox
from knightctl.tracking.systemmetrics import SystemSampler

# Metrics per log_batch call: MLflow's MAX_METRICS_PER_BATCH and MAX_ENTITIES_PER_BATCH (metrics,
# params and tags together; only metrics are sent here) are both 1000. Its other per-request
# limit, 1 MB of JSON for a server, is not reached: a metric takes about 130 bytes besides its key,
# and knightctl's keys are ASCII of at most 250 characters (MLflow's own limit), so 1000 take < 0.4 MB.
_BATCH_LIMIT = 1000
# A sqlite log_batch costs about 9 ms plus 0.15 ms per metric here: written as they arrive (an
# epoch's worth, often 20-30 metrics), the fixed part dominates and the writer falls behind a fast
# loop. Gathering for a fifth of a second first makes calls fuller, and leaves at most that much
# to write after the last step; the dashboard lags by as much.
_COALESCE_S = 0.2

TRAINING_STARTED = "training started"  # the event that starts the system metrics


def write_metrics(inbox: Any, status: Any, tracking_uri: str, system_metrics: bool, journal_dir: str) -> None:
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
        run_id = inbox.get()  # sent once the trainer made the run; None if it gave up (or died)
        if run_id is None:
            os._exit(0)  # abandoned: no run, nothing to write
        client = MlflowClient(tracking_uri)
        client.get_run(run_id)  # opens the store and proves the run exists, before training starts
        journal = Journal(Path(journal_dir), run_id, tracking_uri)
        outbox = Outbox(lambda chunk: _store(client, run_id, chunk), client, journal, tracking_uri)
        sampler = SystemSampler(tracking_uri, run_id) if system_metrics else None
        status.put(("ready", ""))
        _serve(inbox, outbox, sampler)
        journaled = outbox.close()
        if sampler is not None:
            sampler.finish(last_sample=not outbox.offline)
    except BaseException as exc:  # reported to the parent, which raises it as a TrackingError
        status.put(("error", str(exc) if isinstance(exc, KnightctlError) else f"{type(exc).__name__}: {exc}"))
        os._exit(1)  # as below; a shutdown would also wait on the inbox's reader and die: "Fatal Python error"
    status.put(("done", str(journaled)))  # written and flushed before put returns
    # Everything is committed: skip the interpreter's teardown of MLflow and SQLAlchemy (about
    # 0.5 s here), which the trainer would otherwise wait for at the end of every run.
    os._exit(0)


def _serve(inbox: Any, outbox: Outbox, sampler: SystemSampler | None) -> None:
    """Store the inbox's batches, in chunks MLflow takes, until the sentinel; deliver the journal when due."""
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


def _store(client: Any, run_id: str, chunk: list[MetricTuple]) -> None:
    """Store a chunk with MLflow's `log_batch`, the only way metrics reach the store."""
    from mlflow.entities import Metric

    try:
        client.log_batch(run_id, metrics=[Metric(*entry) for entry in chunk], synchronous=True)
    except Exception as exc:
        if is_connection_error(exc):  # the server is away: the outbox journals the chunk
            raise
        raise TrackingError(refusal(chunk, exc)) from exc


def refusal(chunk: list[MetricTuple], exc: BaseException) -> str:
    """What MLflow did not take and why, in one line: the chunk's steps and keys, and MLflow's reason
    (which names a key with a character it refuses, but not a key that is too long)."""
    keys = list(dict.fromkeys(key for key, _, _, _ in chunk))
    shown = ", ".join(repr(key) for key in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    steps = sorted({step for _, _, _, step in chunk})
    at = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
    count = f"{len(chunk)} metric" + ("s" if len(chunk) != 1 else "")
    return f"MLflow did not take {count} at {at} (keys {shown}): {first_line(exc) or type(exc).__name__}"


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
