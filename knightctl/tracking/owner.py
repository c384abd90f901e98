"""Which process on which machine owns a RUNNING MLflow run, and whether that process still lives.

A run killed by SIGKILL or a power cut stays RUNNING in MLflow forever. The tags written here
when the run starts (or resumes) let a later command tell a live run from such a stale one:
`knightctl train --resume` refuses to take over a run whose process still runs, and
`knightctl sync` marks this machine's stale runs KILLED. A process id alone can be reused after
a reboot, so the process's start time (seconds since the epoch, from psutil) is kept beside it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from knightctl.tracking.tags import HOST_TAG, PID_TAG, STARTED_TAG


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the one training the run."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), STARTED_TAG: f"{_started(os.getpid()) or 0:.2f}"}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process the tags name still runs: None if it ran on another machine (or is not recorded)."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if pid == os.getpid():
        return True
    started = _started(pid)
    if started is None:
        return False
    recorded = float(tags.get(STARTED_TAG) or 0)
    return not recorded or abs(started - recorded) < 1.0  # another start time: the id was reused


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
