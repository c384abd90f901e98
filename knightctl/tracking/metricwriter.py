"""Write a run's metrics to MLflow from a separate process, off the training process's GIL.

Storing a metric is pure-Python work in MLflow's `log_batch` (its checks and an ORM object per
metric on a database store; a REST call to a server): from a thread, it would hold the training
process's GIL and slow the loop; from its own process (metricprocess.py) it runs on another core.
The training side only appends tuples to a list and, at each flush, hands the list to the
writer's channel (helperprocess.py: a plain `python -c` child, so that a script without a main
guard, standard input and Jupyter all work).

Starting the writer costs its own import of MLflow (about 2 s of CPU here). It is started before
the run exists, so that the import overlaps with building the model; `attach()` then names the
run, and `wait_ready()` makes sure the writer has found it before the first training step. If
MLflow refuses a batch, the writer says why and exits, and the trainer's next flush raises it: a
run does not train on while its metrics go nowhere. If an http tracking server goes away mid-run,
batches wait in the run's journal until it is back (offline/outbox.py).
"""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from knightctl.errors import TrackingError
from knightctl.tracking.helperprocess import HelperProcess
from knightctl.tracking.metricprocess import TRAINING_STARTED
from knightctl.tracking.offline.journal import MetricTuple, journal_root

_CLOSE_TIMEOUT_S = 300.0  # a large backlog on a slow store still gets written
# Seconds between hand-offs to the writer. Each one wakes the channel's feeder thread, which takes
# the GIL from the loop to pickle and send, and wakes the writer to read: at every step of a fast
# loop (0.4 ms a step) that is thousands of wake-ups a run. Twenty a second keep the writer as
# current as it writes (it gathers for _COALESCE_S anyway) at a few dozen.
_HANDOFF_S = 0.05


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
        self._next_handoff = 0.0  # time.monotonic() of the next hand-off to the writer
        self.journal_root = journal_root(journal_dir)  # where metrics wait while a server is away
        # Sent: the run id first, then lists of metrics, then None. Received: ("started", "") once
        # MLflow is imported, ("ready", "") once the run is found, then ("done", journaled count);
        # or ("error", message) at any point, after which it exits.
        try:
            self._process = HelperProcess(
                "knightctl.tracking.metricprocess:write_metrics",
                (tracking_uri, system_metrics, str(self.journal_root)),
                name="knightctl-metrics",
            )
        except (OSError, RuntimeError) as exc:  # no Python to start (an embedded interpreter, a deleted venv)
            python = sys.executable or "(no sys.executable)"
            raise TrackingError(f"cannot start the process that writes metrics to MLflow with {python}: {exc}") from exc
        self.run_id: str | None = None
        self.started = False
        self.ready = False  # the writer found the run: from now on, any message from it is its end
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
            self._stopped()
            raise TrackingError(f"cannot start the process that writes metrics to MLflow: {message}")
        self.started = True

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the writer process has imported MLflow and found the run."""
        self.wait_started(timeout_s)
        kind, message = self._next_status(timeout_s, "did not find the run")
        if kind != "ready":
            self._stopped()
            raise TrackingError(f"cannot write metrics to MLflow run {self.run_id}: {message}")
        self.ready = True

    def training_started(self) -> None:
        """The loop is about to take its first step: system metrics are sampled from now on."""
        self._process.put(TRAINING_STARTED)

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Buffer one point per metric at `step`: no I/O, no pickling."""
        timestamp = int(time.time() * 1000)
        self._buffer.extend((key, float(value), timestamp, step) for key, value in values.items())

    def flush(self, now: bool = False) -> None:
        """Hand what is buffered to the writer process (it writes while training goes on), at most every
        _HANDOFF_S unless `now`; raise TrackingError if the writer has stopped on a batch MLflow refused."""
        if self.closed:  # nothing would take them: the error that closed it was raised already
            self._buffer = []
            return
        if self.ready:
            self._raise_if_stopped()
        moment = time.monotonic()
        if self._buffer and (now or moment >= self._next_handoff):
            self._process.put(self._buffer)
            self._buffer = []
            self._next_handoff = moment + _HANDOFF_S

    def _raise_if_stopped(self) -> None:
        """A message from a ready writer comes only when it stops: say why now, not at the run's end."""
        try:
            message = self._process.get(timeout=0.0)  # no wait: a lock and a length check
        except queue.Empty:
            return
        self._stopped()
        why = f"the writer process exited with code {self._process.exitcode}" if message is None else message[1]
        raise TrackingError(f"metrics of run {self.run_id} were not all written: {why}")

    def close(self) -> None:
        """Flush, wait until every metric is written or journaled, and stop the writer; idempotent.

        Metrics journaled because the server is away do not raise: `journaled` counts them.
        """
        if self.closed:
            return
        self.flush(now=True)  # raises, closed, if the writer has stopped already
        self.closed = True
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

    def _stopped(self) -> None:
        """The writer said it stops (or died): let it exit, and close the channel."""
        self.closed = True
        self._process.join(5.0)
        self._release()

    def _release(self) -> None:
        self._process.close()
