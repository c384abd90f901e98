"""Write a run's metrics to MLflow from a separate process, off the training process's GIL.

MLflow's sqlite store spends about 0.3 ms of pure-Python ORM work per metric here (0.28-0.9 ms
measured, in batches of 10 to 1000). From a thread, that work would hold the training process's
GIL and slow the loop by several percent even at sparse logging; from its own process it runs on
another core. The training side only appends tuples to a list and, at each flush, hands the list
to a multiprocessing queue.

Starting the writer costs its own import of MLflow (about 2 s of CPU here). `wait_ready()` lets the
caller finish that before the first training step, so it never competes with the loop for a core.

The writer process ignores SIGINT and SIGTERM: a Ctrl-C in a terminal reaches the whole process
group, and the writer must outlive the trainer's clean-up to write what was queued. It stops on
the sentinel `None`, or when its parent has died.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import time
from typing import Any, Mapping

from knightctl.errors import TrackingError

_BATCH_LIMIT = 1000  # metrics per log_batch call: MLflow's own limit
_CLOSE_TIMEOUT_S = 300.0  # a large backlog on a slow store still gets written
MetricTuple = tuple[str, float, int, int]  # key, value, timestamp (ms), step


class MetricWriter:
    """Buffers metrics in memory and ships them to a writer process in batches."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and open sqlite handles
        self._queue: Any = context.Queue()
        self._status: Any = context.Queue()  # "ready" once, or an error message
        self._buffer: list[MetricTuple] = []
        self._process = context.Process(
            target=_write_metrics, args=(tracking_uri, run_id, self._queue, self._status), name="knightctl-metrics", daemon=True
        )
        self._process.start()
        self.run_id = run_id
        self.closed = False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the writer process has imported MLflow and found the run."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                message = self._status.get(timeout=0.2)
                break
            except queue.Empty:
                if not self._process.is_alive() or time.monotonic() > deadline:
                    message = f"the writer process did not start (exit code {self._process.exitcode})"
                    break
        if message != "ready":
            self.closed = True
            self._process.join(5.0)
            self._release()
            raise TrackingError(f"cannot write metrics to MLflow run {self.run_id}: {message}")

    def add(self, step: int, values: Mapping[str, float]) -> None:
        """Buffer one point per metric at `step`: no I/O, no pickling."""
        timestamp = int(time.time() * 1000)
        self._buffer.extend((key, float(value), timestamp, step) for key, value in values.items())

    def flush(self) -> None:
        """Hand everything buffered to the writer process (it writes while training goes on)."""
        if self._buffer:
            self._queue.put(self._buffer)
            self._buffer = []

    def close(self) -> None:
        """Flush, wait until every metric is written, and stop the writer; idempotent."""
        if self.closed:
            return
        self.closed = True
        self.flush()
        self._queue.put(None)
        self._process.join(_CLOSE_TIMEOUT_S)
        try:
            if self._process.is_alive():
                self._process.terminate()
                raise TrackingError(f"the MLflow metric writer for run {self.run_id} did not finish within {_CLOSE_TIMEOUT_S:.0f} s")
            if self._process.exitcode != 0:
                try:
                    reason = self._status.get(timeout=1.0)
                except queue.Empty:
                    reason = f"the writer process exited with code {self._process.exitcode}"
                raise TrackingError(f"metrics of run {self.run_id} were not all written: {reason}")
        finally:
            self._release()

    def _release(self) -> None:
        for channel in (self._queue, self._status):  # their pipes and semaphores, now
            channel.close()
            channel.join_thread()


def _write_metrics(tracking_uri: str, run_id: str, inbox: Any, status: Any) -> None:
    """The writer process: drain the inbox into MlflowClient.log_batch until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri)
        client.get_run(run_id)  # opens the store and proves the run exists, before training starts
        status.put("ready")
        parent = multiprocessing.parent_process()
        stop = False
        while not stop:
            batch: list[MetricTuple] = []
            stop = _drain(inbox, batch, parent)
            for start in range(0, len(batch), _BATCH_LIMIT):
                chunk = [Metric(*entry) for entry in batch[start : start + _BATCH_LIMIT]]
                client.log_batch(run_id, metrics=chunk, synchronous=True)
    except BaseException as exc:  # reported to the parent, which raises it as a TrackingError
        status.put(f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def _drain(inbox: Any, batch: list[MetricTuple], parent: Any) -> bool:
    """Wait for one message, then take all that are queued; True once the sentinel arrived."""
    while True:
        try:
            item = inbox.get(timeout=1.0)
            break
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return True  # the trainer died (SIGKILL): nothing more will come
    while item is not None:
        batch.extend(item)
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return False
    return True
