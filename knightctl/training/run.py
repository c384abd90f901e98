"""`train(spec)`: decide the device and seed once, build, dry-run, then one loop (training/loop.py), top to bottom.

A run may start fresh or go on from a checkpoint (`resume=`, checkpoint/resume.py): then the weights,
optimizer, generators and position come from the checkpoint, and the same MLflow run continues.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from knightctl.checkpoint.files import CheckpointFolder
from knightctl.checkpoint.resume import Resumption, prepare_resume
from knightctl.checkpoint.state import restore
from knightctl.distributed.jobs import JobRecord, agreed_resume, job_file, write_job
from knightctl.distributed.ranks import Single, joined
from knightctl.errors import Interrupted, Terminated
from knightctl.plugins.events import Observer, RunResult
from knightctl.plugins.system import PluginEvents, PluginSettings, PluginSystem
from knightctl.spec.model import ExperimentSpec
from knightctl.spec.monitor import early_stopping_monitor, monitor_goal, monitored_metric
from knightctl.tracking.record import open_tracker, run_tags
from knightctl.tracking.run import start_writer
from knightctl.tracking.tags import RESTARTS_TAG, WORLD_SIZE_TAG
from knightctl.training.best import ModelOfRecord, best_step, choose
from knightctl.training.build import Components
from knightctl.training.earlystop import EarlyStopping, StopRule
from knightctl.training.loop import Loop, resume_command, run_loop
from knightctl.training.metrics import StepMetrics
from knightctl.training.position import Position
from knightctl.training.preprocessing import recorded_preprocessing
from knightctl.training.setup import (
    checkpoint_folder,
    prepare,
    run_info,
    spec_and_plugins,
    start_generators,
    tracking_uri_for,
)
from knightctl.training.signals import StopOnSignal
from knightctl.training.threads import check_threads, kept_threads
from knightctl.training.tracker import NoTracker, Tracker


@dataclass(frozen=True)
class TrainOptions:
    """How to train, besides the spec: `train()`'s keyword arguments, in one place (see `train`)."""

    overrides: Sequence[str] = ()
    device: str | None = None
    threads: int | str | None = None  # None: the spec's train.threads
    tracking_uri: str | None = None
    track: bool = True
    deterministic: bool | None = None
    observers: Sequence[Observer] = ()
    plugins: PluginSettings | None = None
    skip_gradcheck: bool = False
    resume: str | Path | None = None
    allow_spec_change: bool = False
    detect_anomaly: bool = False
    checkpoint_dir: str | Path | None = None
    stop_at_step: int | None = None
    record_losses: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    stop_rule: StopRule | None = None


def train(
    spec: ExperimentSpec | str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    device: str | None = None,
    threads: int | str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    deterministic: bool | None = None,
    observers: Sequence[Observer] = (),
    plugins: PluginSettings | None = None,
    skip_gradcheck: bool = False,
    resume: str | Path | None = None,
    allow_spec_change: bool = False,
    detect_anomaly: bool = False,
    checkpoint_dir: str | Path | None = None,
    stop_at_step: int | None = None,
    record_losses: bool = False,
    tags: Mapping[str, str] | None = None,
    stop_rule: StopRule | None = None,
) -> RunResult:
    """Train the experiment `spec` (a spec or a path to one) and track it in MLflow.

    Raises SpecError, DeviceError, DataError, ModelShapeError or PluginError before any MLflow run
    exists, RunFailed if training fails (the last good checkpoint kept), Interrupted (run marked
    KILLED, a checkpoint written) on SIGINT or SIGTERM. Plugins load with `plugins` settings
    (default: from the environment) plus the files the spec lists; their event hooks see the run
    like `observers` do. Every op the model uses is gradient-checked first (GradcheckFailed,
    before any run exists) unless `skip_gradcheck`. `threads` (a number or "auto") beats the spec's
    `train.threads` (training/threads.py); torch's thread count is restored when `train` returns.

    `resume` (a run id or a checkpoint path) goes on from that run's newest checkpoint, in the same
    MLflow run; `spec` may then be omitted, and a spec that differs from the checkpoint's is refused
    unless `allow_spec_change`. `detect_anomaly` turns on autograd's anomaly mode, which names the
    operation that made a NaN. `checkpoint_dir` overrides the spec's checkpoint.dir;
    `stop_at_step` ends the run after that step, with a checkpoint, as if the spec ended there;
    `record_losses` keeps every step's loss (RunResult.step_losses). `tags` are added to the run's
    (a sweep's trial: `mlflow.parentRunId`, and `mlflow.runName` for its name). `stop_rule` is asked
    after each evaluation whether to end there (a sweep's pruner); the run then ends FINISHED, as an
    early-stopped one does, and says why (RunResult.stopped_early).

    Under torchrun (RANK and WORLD_SIZE set) this process is one rank of a distributed job
    (distributed/ranks.py): it trains its shard of every batch in DistributedDataParallel; rank 0 alone
    runs the gradient check, tracks in MLflow and writes checkpoints; after a restart the job goes
    on from its newest checkpoint (distributed/jobs.py).
    """
    check_threads(threads)
    options = TrainOptions(
        overrides=tuple(overrides),
        device=device,
        threads=threads,
        tracking_uri=tracking_uri,
        track=track,
        deterministic=deterministic,
        observers=tuple(observers),
        plugins=plugins,
        skip_gradcheck=skip_gradcheck,
        resume=resume,
        allow_spec_change=allow_spec_change,
        detect_anomaly=detect_anomaly,
        checkpoint_dir=checkpoint_dir,
        stop_at_step=stop_at_step,
        record_losses=record_losses,
        tags=dict(tags or {}),
        stop_rule=stop_rule,
    )
    with joined() as ranks, kept_threads():
        return _train(ranks, spec, options)


def _train(ranks: Single, spec: ExperimentSpec | str | Path | None, options: TrainOptions) -> RunResult:
    started = time.perf_counter()
    resume = agreed_resume(ranks, options.resume, spec, options.tracking_uri) if ranks.distributed else options.resume
    resumed = (
        prepare_resume(
            resume,
            spec,
            options.overrides,
            plugins=options.plugins,
            tracking_uri=options.tracking_uri,
            allow_spec_change=options.allow_spec_change,
        )
        if resume
        else None
    )
    spec, system = spec_and_plugins(resumed.spec if resumed else spec, options.overrides, options.plugins)
    spec = spec.with_seed(ranks.broadcast(spec.seed))  # a generated seed is rank 0's
    observers = [*options.observers, PluginEvents(system)] if ranks.is_main else []
    tags = dict(options.tags)
    if ranks.distributed:
        tags |= {WORLD_SIZE_TAG: str(ranks.world_size), RESTARTS_TAG: str(ranks.restart_count)}
    tracked = options.track and ranks.is_main
    uri, uri_source = tracking_uri_for(options.tracking_uri, spec, resumed) if tracked else (None, "--no-track")
    writer = start_writer(uri) if uri else None  # it imports MLflow in its own process meanwhile
    try:
        skip_gradcheck = options.skip_gradcheck or not ranks.is_main
        recorded = recorded_preprocessing(resumed.state) if resumed else None  # its standardisation, reused
        choice, parts, verdicts = prepare(
            spec,
            system,
            options.device,
            options.deterministic,
            skip_gradcheck,
            ranks,
            options.threads,
            recorded=recorded,
        )
        tracking: AbstractContextManager[Tracker] = (
            open_tracker(
                spec,
                tracking_uri=uri,
                tags={**run_tags(spec, choice, system), **tags},
                writer=writer,
                resume_run_id=resumed.run_id if resumed else None,
            )
            if uri
            else nullcontext(NoTracker())
        )
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    position = Position()
    stop = StopOnSignal()  # signals are deferred to the step's end only while the loop runs
    with _interruptible(position, stop) as run_holder, tracking as tracker:
        tracker.run_id = ranks.broadcast(tracker.run_id)
        run_holder.append(tracker.run_id)
        loop = _loop_for(spec, parts, tracker, observers, position, stop, resumed, options, system, ranks)
        if ranks.distributed and ranks.is_main and ranks.job_id:
            record = JobRecord(tracker.run_id, str(loop.checkpoints.path), tracker.tracking_uri, ranks.world_size)
            write_job(ranks.job_id, record)
        tracker.record_start(
            spec, choice, parts, verdicts, options.skip_gradcheck, position, resumed, loop.checkpoints.path
        )
        info = run_info(spec, choice, parts, tracker, resumed, ranks.world_size)
        for observer in observers:
            observer.run_started(info)
        start_generators(spec, resumed, ranks)
        loop_began = time.perf_counter()
        try:
            with stop, torch.autograd.detect_anomaly(check_nan=True) if options.detect_anomaly else nullcontext():
                loop_seconds = run_loop(loop)
        except Exception:  # failed, or stopped by a signal (Interrupted)
            tracker.record_unfinished(position)
            raise
        finally:
            tracker.loop_ended(position.step, time.perf_counter() - loop_began)
        stored_by = time.perf_counter()
        tracker.close_metrics()
        store_wait_seconds = time.perf_counter() - stored_by
        model_uri = tracker.record_results(spec, parts, position, system)
    if ranks.is_main and ranks.job_id:  # finished: nothing left to restart from
        job_file(ranks.job_id).unlink(missing_ok=True)
    logged_kind = choose(spec.tracking.log_model, position.best, position.step).kind if model_uri else None
    result = RunResult(
        info=info,
        final_metrics=dict(position.latest),
        history=position.history,
        steps=position.step,
        seconds=time.perf_counter() - started,
        loop_seconds=loop_seconds,
        model=parts.model,
        model_uri=model_uri,
        tracking_uri_source=uri_source,
        store_wait_seconds=store_wait_seconds,
        checkpoint=position.checkpoint,
        step_losses=loop.metrics.per_step,
        pending_sync=tracker.pending_sync,
        best=best_step(position),
        best_checkpoint=position.best_checkpoint,
        model_of_record=logged_kind,
        evaluation=position.evaluation,
        stopped_early=position.ending(spec.train.epochs),
    )
    for observer in observers:
        observer.run_finished(result)
    return result


def _loop_for(
    spec: ExperimentSpec,
    parts: Components,
    tracker: Tracker,
    observers: Sequence[Observer],
    position: Position,
    stop: StopOnSignal,
    resumed: Resumption | None,
    options: TrainOptions,
    system: PluginSystem,
    ranks: Single,
) -> Loop:
    """The loop's state: fresh, or as the checkpoint left it (the global generators: `start_generators`).

    Every rank of a distributed job draws the same data order; rank 0 names the checkpoint folder."""
    folder = checkpoint_folder(spec, tracker, resumed, options.checkpoint_dir)
    folder = CheckpointFolder(Path(ranks.broadcast(str(folder.path))), folder.keep_last)
    data_order = torch.Generator().manual_seed(spec.seed or 0)
    recording = {
        "per_step": [] if options.record_losses else None,
        "reduce": ranks.reducer(),
        "check": parts.task_metrics.check if parts.task_metrics else None,
    }
    metrics = StepMetrics(**recording)
    start = None
    metric = monitored_metric(spec, parts.data.val_x is not None)
    declared = parts.task_metrics.goal_of(metric) if parts.task_metrics else None  # a MetricDef's goal
    goal = monitor_goal(metric, spec.train.monitor_mode, declared)
    saved_best = resumed.state.get("best") if resumed is not None else None
    position.best = ModelOfRecord.from_state(saved_best, metric, goal) if ranks.is_main else None
    if spec.train.early_stopping is not None:  # on every rank: each takes the same evaluations
        watched, mode = early_stopping_monitor(spec, parts.data.val_x is not None)
        declared = parts.task_metrics.goal_of(watched) if parts.task_metrics else None
        saved = resumed.state.get("early_stopping") if resumed is not None else None
        position.early_stopping = EarlyStopping.from_spec(spec, watched, monitor_goal(watched, mode, declared), saved)
    if resumed is not None:
        start = restore(resumed.state, parts)
        data_order.set_state(start.order_state)
        metrics = StepMetrics.from_snapshot(resumed.state["metrics"], **recording)
        position.step, position.epoch, position.checkpoint = start.step, start.epoch - 1, resumed.checkpoint
        position.history.extend((int(step), dict(values)) for step, values in resumed.state["history"])
        position.latest.update(resumed.state["latest"])
    return Loop(
        spec=spec,
        parts=parts,
        run=tracker,
        observers=observers,
        position=position,
        metrics=metrics,
        data_order=data_order,
        checkpoints=folder,
        stop=stop,
        start=start,
        stop_at_step=options.stop_at_step,
        blame=system.blame,
        ranks=ranks,
        module=ranks.wrap(parts.model),
        stop_rule=options.stop_rule,
    )


@contextmanager
def _interruptible(position: Position, stop: StopOnSignal) -> Iterator[list[str | None]]:
    """Say how an interrupted run ended (it has been closed as KILLED by then) and how to go on.

    A stop the loop honoured arrives as Interrupted, with its checkpoint; a KeyboardInterrupt is a
    signal outside the loop, or a second one that stopped the run at once, without a checkpoint.
    """
    run_ids: list[str | None] = []
    try:
        yield run_ids
    except Interrupted as interrupted:
        if interrupted.run_id:
            interrupted.message += f"; MLflow run {interrupted.run_id} marked KILLED"
        raise
    except KeyboardInterrupt as exc:
        run_id = run_ids[0] if run_ids else None
        signal_name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        again = " again: stopped at once, without a checkpoint," if stop.requested else ":"
        message = f"{signal_name}{again} interrupted at epoch {position.epoch} (step {position.step})"
        message += f"; MLflow run {run_id} marked KILLED" if run_id else ""
        hint = None
        if position.checkpoint is not None:
            command = resume_command(run_id, position.checkpoint)
            hint = f"the last checkpoint is {position.checkpoint}; resume with: {command}"
        raise Interrupted(message, signal_name=signal_name, run_id=run_id, hint=hint) from None
