"""System metrics (CPU, memory, disk, network; GPU with pynvml) for a run, sampled in the metric
writer's process from the moment training starts, at intervals that scale with the run.

MLflow's `SystemMetricsMonitor` measures and logs them, used through its public methods alone: the
constructor and `start()`/`finish()` that its docstring documents (made for a run id and a tracking
URI, going on from the steps a resumed run logged; a thread of its own; stopped, and what it holds
flushed), and `collect_metrics`, `aggregate_metrics` and `publish_metrics`, one sample's steps.
knightctl replaces one method: `monitor`, the loop that `start()` runs. MLflow's samples at one
fixed interval and reads first as it starts, when the run is made: a run of a few seconds got one
or two samples, the first covering the set-up, with a CPU of 0% (psutil's first reading in a thread
has nothing to compare with). knightctl's starts when training does, primes psutil, and samples at
the end of each interval, the next one a tenth of the time trained so far later, between 0.25 s and
5 s: about ten samples in the first seconds, then one every 5 s however long the run. Were MLflow
ever to run another method than `monitor`, its own loop would sample every 5 s instead.
"""

from __future__ import annotations

import functools
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
        # Its start, stop and "no GPU" lines would interleave with the trainer's progress output; and
        # while a server is away, the outbox's one warning says so, not one line per sample.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        logging.getLogger("mlflow.system_metrics.system_metrics_monitor").addFilter(_quiet_about_lost_server)
        self.monitor = _scaled_monitor_class()(run_id, tracking_uri)
        self._begun = False

    def begin(self) -> None:
        """Training started: sample from now on, in a thread of this process."""
        if not self._begun:
            self._begun = True
            self.monitor.start()

    def finish(self, last_sample: bool = True) -> None:
        """Stop sampling, with one last sample unless the server is away (it would only time out)."""
        self.monitor.last_sample = last_sample
        self.monitor.stopping.set()
        if self._begun and last_sample:
            self.monitor.finish()  # joins the thread, then logs what it has not logged yet
        # Else the thread ends at its next wake-up, or with the process: what it still holds was for
        # a server that is not there.


@functools.cache
def _scaled_monitor_class() -> type:
    """MLflow's monitor with knightctl's loop (made on first use: MLflow loads in the writer only)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class ScaledMonitor(SystemMetricsMonitor):  # type: ignore[misc]
        def __init__(self, run_id: str, tracking_uri: str) -> None:
            super().__init__(run_id, sampling_interval=MAX_INTERVAL_S, resume_logging=True, tracking_uri=tracking_uri)
            self.stopping = threading.Event()
            self.last_sample = True

        def monitor(self) -> None:
            """The loop `start()` runs: a baseline, then a sample at the end of each interval."""
            _prime_cpu_reading()
            began = time.monotonic()
            while not self.stopping.wait(next_interval(time.monotonic() - began)):
                self.sample()
            if self.last_sample:  # so that a run shorter than one interval has a sample too
                self.sample()

        def sample(self) -> None:
            try:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
            except Exception:  # system metrics are context, not results: a lost sample fails nothing
                pass

        def finish(self) -> None:
            self.stopping.set()  # this loop's own stop; MLflow's finish sets the one its loop watches
            super().finish()

    return ScaledMonitor


def _prime_cpu_reading() -> None:
    """Take psutil's first CPU reading in this thread, which compares with nothing (psutil documents
    it as a meaningless 0.0 to ignore): MLflow's CPU monitor reads it without an interval, and its
    first sample then covers the time since this call."""
    try:
        import psutil

        psutil.cpu_percent()
    except Exception:  # no psutil, or no CPU times here: MLflow's monitor says so itself
        pass


def _quiet_about_lost_server(record: Any) -> bool:
    """Drop the monitor's log lines about failed REST calls (MLflow starts them "API request to")."""
    return "API request to" not in record.getMessage()
