"""`knightctl train --nproc-per-node N`: start N training processes through torch.distributed.run.

No cluster machinery of our own: this is `torchrun --standalone --nproc-per-node N -m knightctl
train ...` run from inside knightctl, so that one machine needs no second command, and so that a
failure ends in a sentence that names the rank that failed first and a run marked FAILED.

torchrun's elastic agent starts the workers, each `python -m knightctl train` with RANK,
WORLD_SIZE and the rest in its environment (ranks.py), restarts all of them up to
`max_restarts` times when one fails (they go on from the job's newest checkpoint, jobs.py), and
stops the others when one fails for good. Of the failures it reports, those that only lost their
connection to another rank (or were stopped by the agent) are consequences; the cause is the
earliest of the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightctl.checkpoint.files import CheckpointFolder
from knightctl.distributed.jobs import LAUNCHED_ENV, read_job
from knightctl.errors import DistributedFailure, Interrupted


@dataclass(frozen=True)
class RankFailure:
    """How one rank ended, as torchrun's agent saw it and the rank recorded it."""

    rank: int
    exit_code: int  # negative: killed by that signal
    message: str
    hint: str | None
    peer_lost: bool  # it failed only because another rank went away
    traceback: str | None  # the rank's Python traceback, when it recorded one
    time: float  # when it failed (seconds since the epoch; the agent's time when the rank wrote nothing)

    def how(self) -> str:
        return (
            f"was killed by {_signal_name(-self.exit_code)}"
            if self.exit_code < 0
            else f"exited with code {self.exit_code}"
        )


def launch(worker_args: Sequence[str], *, nproc_per_node: int, max_restarts: int = 0) -> str:
    """Run `python -m knightctl WORKER_ARGS...` as `nproc_per_node` ranks of one job; return its job id.

    Each rank gets the machine's cores divided among the ranks as its torch threads. Raises
    DistributedFailure naming the first rank that failed (after marking the job's MLflow run
    FAILED with it), or Interrupted when a signal stopped the job.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    job_id = uuid.uuid4().hex
    # torchrun's default is one thread per process, with a banner; the cores shared out is faster.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    args = parse_args(
        [f"--nproc-per-node={nproc_per_node}", f"--max-restarts={max_restarts}", "--module", "knightctl", *worker_args]
    )
    # --standalone, with our job id: a rendezvous on this machine, on a free port.
    args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", job_id
    config, command, command_args = config_from_args(args)
    # Each of torch's elastic loggers has a level of its own (LOGLEVEL, WARNING by default).
    quiet = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run"))
    ]
    levels = [logger.level for logger in quiet]
    for logger in quiet:  # the agent's own lines repeat, less clearly, what the failure below says
        logger.setLevel(logging.CRITICAL)
    os.environ[LAUNCHED_ENV] = job_id  # the ranks inherit it and leave their errors to this process
    try:
        elastic_launch(config, command)(*command_args)
    except ChildFailedError as failed:
        failures = [_rank_failure(rank, failure) for rank, failure in failed.failures.items()]
        raise _failure(job_id, failures, nproc_per_node) from None
    except SignalException as stopped:
        raise _interrupted(job_id, _signal_name(int(stopped.sigval)), nproc_per_node) from None
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return job_id


def cause(failures: Sequence[RankFailure]) -> RankFailure:
    """The failure that started it: the earliest that was not a consequence of another's."""
    causes = [f for f in failures if not f.peer_lost and f.exit_code != -signal.SIGTERM]
    return min(causes or failures, key=lambda f: (f.time, f.rank))


def _failure(job_id: str, failures: list[RankFailure], world_size: int) -> DistributedFailure:
    first = cause(failures)
    others = sorted(f.rank for f in failures if f is not first)
    message = f"distributed training failed: rank {first.rank} {first.how()}"
    if others:
        message += f" (then {'ranks' if len(others) > 1 else 'rank'} {', '.join(map(str, others))} stopped too)"
    message += f": {first.message}" if first.message else ""
    record = read_job(job_id)
    hint = first.hint or ""
    if record is not None and record.run_id:  # the rank's own resume command, for all of the job's ranks
        hint = hint.replace(f"--resume {record.run_id}", f"--resume {record.run_id} --nproc-per-node {world_size}")
    hints = [hint] if hint else []
    if record is not None and record.run_id and record.tracking_uri:
        try:
            from knightctl.tracking.failures import mark_failed

            mark_failed(record.tracking_uri, record.run_id, message, first.rank, first.traceback)
            hints.append(f"MLflow run {record.run_id} is marked FAILED")
        except Exception as exc:  # the failure being reported matters more
            hints.append(f"could not mark MLflow run {record.run_id} FAILED: {exc}")
    if (
        record is not None
        and record.run_id
        and "resume with" not in hint
        and CheckpointFolder(Path(record.checkpoint_folder)).latest()
    ):
        hints.append(f"resume with: knightctl train --resume {record.run_id} --nproc-per-node {world_size}")
    failure = DistributedFailure(message, hint="; ".join(hints) or None)
    failure.exit_code = first.exit_code if first.exit_code > 0 else 1  # a spec error on every rank is still exit 2
    return failure


def _interrupted(job_id: str, name: str, world_size: int) -> Interrupted:
    """The agent passed the signal on to every rank; they stopped together at a step, and rank 0
    wrote a checkpoint and marked the run KILLED (ranks.py, training/loop.py)."""
    record = read_job(job_id)
    run = record.run_id if record else None
    newest = CheckpointFolder(Path(record.checkpoint_folder)).latest() if record else None
    message = (
        f"{name}: the distributed job stopped"
        + (f"; checkpoint {newest}" if newest else "")
        + (f"; MLflow run {run} marked KILLED" if run else "")
    )
    hint = (
        f"resume with: knightctl train --resume {run or newest} --nproc-per-node {world_size}"
        if run or newest
        else None
    )
    return Interrupted(message, signal_name=name, run_id=run, hint=hint, checkpoint=newest)


def _rank_failure(rank: int, failure: Any) -> RankFailure:
    data = failure.error_file_data if isinstance(getattr(failure, "error_file_data", None), dict) else {}
    ours = data.get("knightctl") if isinstance(data.get("knightctl"), dict) else {}
    message = ours.get("message") or ""
    if not message and failure.exitcode >= 0:
        message = "it wrote no error; see its output above"
    extra = data.get("message", {}).get("extraInfo", {}) if isinstance(data.get("message"), dict) else {}
    return RankFailure(
        rank,
        int(failure.exitcode),
        message,
        ours.get("hint"),
        bool(ours.get("peer_lost")),
        extra.get("py_callstack"),
        float(ours.get("time") or failure.timestamp),
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
