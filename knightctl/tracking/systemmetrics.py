"""System metrics (CPU, memory, disk, network; GPU with pynvml) for a run, sampled in the metric
writer's process from the moment training starts, at intervals that scale with the run.

MLflow's `SystemMetricsMonitor` measures; this decides when. Its own loop samples at one fixed
interval from when the run is made, so a run of a few seconds got one or two samples, and the first
covered the set-up (and read a CPU of 0%: psutil's first reading has nothing to compare with). Here
the first reading primes the counters when training starts, and each next sample comes after a
tenth of the time trained so far, between 0.25 s and 5 s: about ten samples in the first seconds,
then one every 5 s however long the run.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

MIN_INTERVAL_S = 0.25
MAX_INTERVAL_S = 5.0
_SHARE = 0.1  # the next interval, as a share of the time sampled so far


def next_interval(elapsed_s: float) -> float:
    """Seconds until the next sample, `elapsed_s` after training started."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, _SHARE * elapsed_s))


class SystemSampler:
    """Samples the machine for MLflow run `run_id` from `begin()` until `finish()`."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its start, stop and "no GPU" lines would interleave with the trainer's progress output; and
        # while a server is away, the outbox's one warning says so, not one line per sample.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        logging.getLogger("mlflow.system_metrics.system_metrics_monitor").addFilter(_quiet_about_lost_server)
        # Not started: its own fixed-interval loop is replaced by this one; it collects and publishes.
        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=MAX_INTERVAL_S, tracking_uri=tracking_uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._began = 0.0
        self._last_sample = True

    def begin(self) -> None:
        """Training started: prime the counters, then sample in a thread of this process."""
        if self._thread is not None:
            return
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._sample, name="knightctl-system-metrics", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        # A baseline, in this thread: psutil keeps the CPU times it compares against per thread.
        self.monitor.collect_metrics()
        for each in self.monitor.monitors:
            each.clear_metrics()
        while not self._stop.wait(next_interval(time.monotonic() - self._began)):
            self._publish()
        if self._last_sample:  # so that a run shorter than one interval has a sample too
            self._publish()

    def _publish(self) -> None:
        try:
            self.monitor.collect_metrics()
            self.monitor.publish_metrics(self.monitor.aggregate_metrics())
        except Exception:  # system metrics are context, not results: a lost sample fails nothing
            pass

    def finish(self, last_sample: bool = True) -> None:
        """Stop sampling, with one last sample unless the server is away (it would only time out)."""
        self._last_sample = last_sample
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if last_sample:
                self.monitor.mlflow_logger.flush()
            else:
                self.monitor.mlflow_logger.data = []
        except Exception:
            pass


def _quiet_about_lost_server(record: Any) -> bool:
    """Drop the monitor's log lines about failed REST calls (MLflow starts them "API request to")."""
    return "API request to" not in record.getMessage()
