"""Which process on which machine owns a RUNNING MLflow run, and whether that process still lives.

A run killed by SIGKILL or a power cut stays RUNNING in MLflow forever. The tags written here
when the run starts (or resumes) let a later command tell a live run from such a stale one:
`knightctl train --resume` refuses to take over a run whose process still runs, and
`knightctl sync` marks this machine's stale runs KILLED. A process id alone can be reused after
a reboot, so the process's start time (from psutil) is kept beside it, readable as a UTC time.
Runs tracked before these tags moved under `knightctl.process.` are read by their old names.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from knightctl.tracking.tags import (
    HOST_TAG,
    LEGACY_HOST_TAG,
    LEGACY_PID_TAG,
    LEGACY_STARTED_TAG,
    PID_TAG,
    STARTED_TAG,
)

_SAME_START_S = 1.0  # start times this close are one process (psutil's are to ~10 ms; ISO tags to 1 ms)


@dataclass(frozen=True)
class Owner:
    """The process a run's tags name: its machine, its id, and its start time (s since the epoch)."""

    host: str
    pid: int
    started: float | None  # None: not recorded, or not readable

    def describe(self) -> str:
        return f"{self.pid} on {self.host}"


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the one training the run."""
    started = _started(os.getpid())
    when = datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="milliseconds") if started else ""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STARTED_TAG: when}


def run_owner(tags: Mapping[str, str]) -> Owner | None:
    """The process the tags name (by the current names, else the old ones); None if none is recorded."""
    if tags.get(PID_TAG, "").isdigit():
        return Owner(tags.get(HOST_TAG, ""), int(tags[PID_TAG]), _iso_time(tags.get(STARTED_TAG, "")))
    if tags.get(LEGACY_PID_TAG, "").isdigit():
        return Owner(tags.get(LEGACY_HOST_TAG, ""), int(tags[LEGACY_PID_TAG]), _epoch(tags.get(LEGACY_STARTED_TAG, "")))
    return None


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process the tags name still runs: None if it ran on another machine (or is not recorded)."""
    owner = run_owner(tags)
    if owner is None or owner.host != socket.gethostname():
        return None
    if owner.pid == os.getpid():
        return True
    started = _started(owner.pid)
    if started is None:
        return False
    # Another start time: the id was reused by a later process. Unrecorded: trust the id.
    return owner.started is None or abs(started - owner.started) < _SAME_START_S


def _iso_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _epoch(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value or None  # 0: psutil could not tell when it was written


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
