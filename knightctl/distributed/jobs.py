"""A distributed job's record: which MLflow run and checkpoint folder its workers train, across restarts.

torchrun restarts every worker of a job when one fails (`--max-restarts`), in new processes that
know only the job's rendezvous id and how often it was restarted. Rank 0 therefore writes
`.knightctl/jobs/JOB_ID.json` (run id, checkpoint folder, tracking URI) once its run is open; a
restarted rank 0 reads it and the job goes on from that folder's newest checkpoint, in the same
run; `knightctl train --nproc-per-node` reads it to mark the run FAILED and name the rank that
failed. The file lives in the working directory, like the metric journals, so on several machines
the restart and the checkpoint folder need a shared working directory (README, Scaling out).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from knightctl.checkpoint.files import CheckpointFolder

LAUNCHED_ENV = (
    "KNIGHTCTL_LAUNCHED_JOB"  # set for the ranks `train --nproc-per-node` starts: they leave their errors to it
)

JOBS_DIR = Path(".knightctl") / "jobs"


@dataclass(frozen=True)
class JobRecord:
    """What rank 0 of a distributed job trains, as rank 0 wrote it."""

    run_id: str | None
    checkpoint_folder: str
    tracking_uri: str | None
    world_size: int


def job_file(job_id: str, base: Path | None = None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", job_id)  # a rendezvous id is free text
    return (base or Path.cwd()) / JOBS_DIR / f"{safe}.json"


def write_job(job_id: str, record: JobRecord) -> Path:
    """Record the job's run (atomically: a reader never sees half a file)."""
    path = job_file(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(record)))
    os.replace(temporary, path)
    return path


def read_job(job_id: str, base: Path | None = None) -> JobRecord | None:
    """The job's record, or None if rank 0 never got as far as opening its run."""
    try:
        data: dict[str, Any] = json.loads(job_file(job_id, base).read_text())
    except (OSError, ValueError):
        return None
    return JobRecord(
        data.get("run_id"), str(data["checkpoint_folder"]), data.get("tracking_uri"), int(data.get("world_size", 0))
    )


def restart_checkpoint(job_id: str | None, restart_count: int) -> Path | None:
    """After a restart, the newest checkpoint the job's earlier workers wrote (None before the first)."""
    if not job_id or restart_count == 0:
        return None
    record = read_job(job_id)
    if record is None:
        return None
    return CheckpointFolder(Path(record.checkpoint_folder)).latest()


def agreed_resume(ranks: Any, resume: str | Path | None, spec: Any, tracking_uri: str | None) -> str | None:
    """The checkpoint every rank starts from, as rank 0 finds it: after a restart the job's newest,
    else the one `--resume` names, else none. Rank 0 alone looks (the others may not see the MLflow
    store or the folder a run id leads to); a first attempt forgets what an earlier job of the same
    rendezvous id recorded (torchrun's default id, "none", is shared by every job that keeps it)."""

    # checkpoint.resume brings the spec models and the tracking package; `knightctl --help` reads
    # LAUNCHED_ENV from this module, so they are imported here, where a job needs them.
    from knightctl.checkpoint.resume import find_checkpoint

    path: Path | None = None
    if ranks.is_main:
        if ranks.job_id and ranks.restart_count == 0:
            job_file(ranks.job_id).unlink(missing_ok=True)
        path = restart_checkpoint(ranks.job_id, ranks.restart_count)
        if path is None and resume is not None:
            path = find_checkpoint(str(resume), spec, tracking_uri).absolute()
    agreed: str | None = ranks.broadcast(None if path is None else str(path))
    return agreed
