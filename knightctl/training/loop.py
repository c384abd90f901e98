"""The training loop, as the chapter writes it, plus what lets a run stop cleanly and go on later.

Per step it adds three cheap things to the chapter's five lines: a look at the stop flag a signal
may have set (stopping.py), the loss kept as a device tensor (metrics.py), and a finiteness check
of the loss (every step on the CPU, where reading a loss back is free; every logging window on an
accelerator, where it is a device synchronisation). Checkpoints are written at epoch ends, when a
stop was asked for, and at the end, always after the losses since the last one proved finite and
were logged, so a checkpoint never holds weights a NaN already reached (FAULTS 17).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from knightctl.checkpoint.files import CheckpointFolder, save_checkpoint
from knightctl.checkpoint.state import ResumePoint, rng_states, training_state
from knightctl.distributed.ranks import SINGLE, is_peer_lost
from knightctl.errors import Interrupted, KnightctlError, PeerLost, RunFailed
from knightctl.tracking.stores import absolute_uri
from knightctl.training.data import epoch_batches, steps_per_epoch
from knightctl.training.earlystop import EndedByRule, StopRule
from knightctl.training.metrics import NonFiniteLoss, StepMetrics, evaluate, gradient_norm
from knightctl.training.position import Position
from knightctl.training.signals import StopOnSignal
from knightctl.training.taskmetrics import final_evaluation
from knightctl.training.tracker import Tracker


@dataclass
class Loop:
    """One run of the loop: the spec, its built parts, the MLflow run (or a stand-in), and state."""

    spec: Any  # ExperimentSpec
    parts: Any  # build.Components
    run: Tracker  # the MLflow run's tracker, or NoTracker under --no-track
    observers: Sequence[Any]
    position: Position
    metrics: StepMetrics
    data_order: torch.Generator
    checkpoints: CheckpointFolder
    stop: StopOnSignal
    start: ResumePoint | None = None  # set when resuming
    stop_at_step: int | None = None  # end there, with a checkpoint, as if the spec did (--verify-resume)
    blame: Any = None  # PluginSystem.blame: which plugin raised an exception
    ranks: Any = SINGLE  # distributed.Ranks in a distributed job: shards, reductions, agreement
    module: nn.Module | None = None  # what the steps call: the model, or its DistributedDataParallel wrapper
    stop_rule: StopRule | None = None  # asked after each evaluation whether to end there (a sweep's pruner)

    def save_checkpoint(self) -> Path:
        """Log the losses not yet logged (proving them finite), then write where the run stands.

        In a distributed job every rank gets here at the same step; rank 0 writes, with every
        rank's generators, and the others note the file it wrote."""
        self.log(self.metrics.collect())
        parameters = [p.detach() for p in self.parts.model.parameters()]
        if parameters and not bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
            raise RunFailed(
                f"the model's weights are no longer finite at step {self.position.step}; no checkpoint was written"
            )
        rank_generators = self.ranks.gather(rng_states()) if self.ranks.distributed else None
        if not self.ranks.is_main:
            self.position.checkpoint = self.checkpoints.file_for(self.position.step)
            return self.position.checkpoint
        state = training_state(
            parts=self.parts,
            point=self.position.resume_point(self.data_order),
            spec=self.spec,
            run_id=self.run.run_id,
            tracking_uri=absolute_uri(self.run.tracking_uri) if self.run.tracking_uri else None,
            metrics=self.metrics.snapshot(),
            history=self.position.history,
            latest=self.position.latest,
            best=self.position.best.state() if self.position.best else None,
            early_stopping=self.position.early_stopping.state() if self.position.early_stopping else None,
        )
        if rank_generators is not None:
            state["rank_rng"] = rank_generators
        self.position.checkpoint = self.checkpoints.save(state)
        self.save_best()
        return self.position.checkpoint

    def save_best(self) -> None:
        """Write best.pt beside the checkpoints when the model of record changed since it was written."""
        best = self.position.best
        if best is None or best.weights is None or best.step == best.saved_step:
            return
        self.position.best_checkpoint = save_checkpoint(best.file_state(self.spec), self.checkpoints.best_file())
        best.saved_step = best.step

    def log(self, points: list[tuple[int, dict[str, float]]]) -> None:
        self.run.log_metrics(points)
        self.position.history.extend(points)
        for _, logged in points:
            self.position.latest.update(logged)

    def resume_hint(self) -> str:
        """Where the last good checkpoint is and the command that goes on from it."""
        path = self.position.checkpoint
        if path is None:
            return "no checkpoint was written before it"
        return f"the last good checkpoint is {path}; resume with: {resume_command(self.run.run_id, path)}"


def resume_command(run_id: str | None, checkpoint: Path) -> str:
    return f"knightctl train --resume {run_id or checkpoint}"


def run_loop(loop: Loop) -> float:
    """The loop, however it ends: unexpected exceptions become RunFailed naming the plugin and the
    last checkpoint; a requested stop writes a checkpoint and raises Interrupted. Returns seconds."""
    started = time.perf_counter()
    try:
        return _loop(loop)
    except _StopRequested:
        _log_unfinished(loop, loop.position.step)
        path = loop.save_checkpoint()
        name = loop.stop.requested
        if name is None:  # stop_at_step: the run ends there, as if the spec did
            return time.perf_counter() - started
        raise Interrupted(
            f"{name}: interrupted at epoch {loop.position.epoch} (step {loop.position.step}); checkpoint {path}",
            hint=f"resume with: {resume_command(loop.run.run_id, path)}",
            signal_name=name,
            run_id=loop.run.run_id,
            checkpoint=path,
        ) from None
    except BaseException as exc:
        # Ranks of a distributed job fail one at a time, so their losses can no longer be reduced
        # together: a collective now would wait for, or mismatch with, a rank that is elsewhere.
        if not loop.ranks.distributed:
            _log_unfinished(loop, exc.step - 1 if isinstance(exc, NonFiniteLoss) else loop.position.step)
            if isinstance(exc, NonFiniteLoss):  # the curve shows where it broke, not only the last good point
                loop.log([(exc.step, {"train/loss": exc.loss})])
        if not isinstance(exc, Exception):  # a second signal: out at once, no checkpoint
            raise
        if is_peer_lost(exc) and not isinstance(exc, PeerLost):  # DDP's own gradient all-reduce, in backward
            lost = PeerLost(
                f"another rank of this job stopped at step {loop.position.step + 1}",
                hint="the first rank that failed says why; this one only lost its connection to it",
            )
            lost.hint = "; ".join(filter(None, [lost.hint, loop.resume_hint()]))
            raise lost from exc
        if isinstance(exc, KnightctlError):  # explained already; where to go on from is news
            exc.hint = "; ".join(filter(None, [exc.hint, loop.resume_hint()]))
            raise
        culprit = loop.blame(exc) if loop.blame else None
        raised_in = f" in plugin {culprit.name!r} ({culprit.origin})" if culprit else ""
        stored = loop.run.run_id and loop.ranks.is_main  # (a distributed job's launcher stores another rank's)
        traceback_note = "the full traceback is stored with the MLflow run as error/traceback.txt; " if stored else ""
        raise RunFailed(
            f"training failed at epoch {loop.position.epoch} (step {loop.position.step}){raised_in}: "
            f"{type(exc).__name__}: {exc}",
            hint=traceback_note + loop.resume_hint(),
        ) from exc


class _StopRequested(Exception):
    """A signal (or --verify-resume) asked the loop to stop before its next step."""


def _log_unfinished(loop: Loop, last_good_step: int) -> None:
    """Log the steps up to `last_good_step` not yet logged (of a loop that stopped early), if readable."""
    metrics = loop.metrics
    try:
        metrics.truncate(last_good_step)
        if metrics.losses and (not metrics.windows or metrics.windows[-1][0] < last_good_step):
            metrics.close_window(last_good_step, loop.parts.optimizer.param_groups[0]["lr"])
        points = metrics.collect()
    except Exception:  # a non-finite loss among them: the error being raised already says so
        return
    loop.log(points)


def _loop(loop: Loop) -> float:
    """The training loop, as the chapter writes it, plus cheap bookkeeping. Returns its seconds."""
    spec, parts, position, metrics, stop, config = (
        loop.spec,
        loop.parts,
        loop.position,
        loop.metrics,
        loop.stop,
        loop.spec.train,
    )
    batch_size = None if config.batch_size == "full" else config.batch_size
    eval_every = eval_interval(config, steps_per_epoch(parts.data.n_train, batch_size))
    checkpoint_every = checkpoint_interval(spec)
    check_every = check_interval(config, parts.data.train_x.device, loop.ranks)
    model, loss_fn, optimizer, ranks = parts.model, parts.loss_fn, parts.optimizer, loop.ranks
    module = loop.module or model  # what trains: the model, or its DistributedDataParallel wrapper
    first_epoch, skip = (loop.start.epoch, loop.start.batch) if loop.start else (1, 0)
    stop_at = loop.stop_at_step if loop.stop_at_step is not None else -1
    loop_started = since = time.perf_counter()
    samples = 0
    model.train()
    for epoch in range(first_epoch, config.epochs + 1):
        position.epoch, position.batch, position.epoch_done = epoch, skip, False
        position.order_state = loop.data_order.get_state()
        clipped_norm = None
        for inputs, targets in epoch_batches(parts.data.train_x, parts.data.train_y, batch_size, loop.data_order, skip):
            if position.step == stop_at or _stop_asked(stop, ranks, position.step, check_every):
                raise _StopRequested()
            samples += len(inputs)
            inputs, targets, weight = ranks.shard(inputs, targets)
            optimizer.zero_grad()
            loss = (
                loss_fn(module(inputs), targets)
                if weight == 1.0
                else _weighted_loss(module, loss_fn, inputs, targets, weight)
            )
            loss.backward()
            clipped_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip else None
            optimizer.step()
            position.step += 1
            position.batch += 1
            metrics.add_loss(loss)
            if position.step % check_every == 0:
                metrics.verify(epoch)
            if position.step % config.log_every_n_steps == 0:
                metrics.close_window(position.step, optimizer.param_groups[0]["lr"], clipped_norm)
        skip = 0
        if parts.scheduler is not None:
            parts.scheduler.step()
        position.epoch_done = True
        evaluated = None
        last = epoch == config.epochs
        if last or epoch % eval_every == 0:
            if last and position.step % config.log_every_n_steps:
                metrics.close_window(position.step, optimizer.param_groups[0]["lr"])
            values = {"train/grad_norm": gradient_norm(model)} if clipped_norm is None else {}
            if parts.data.val_x is not None:
                values.update(_validation(parts, ranks))
            metrics.add_point(position.step, values)
            points = metrics.collect()  # the one device synchronisation per evaluation
            now = time.perf_counter()
            points.append(
                (position.step, {"epoch": float(epoch), "train/samples_per_s": samples / max(now - since, 1e-9)})
            )
            since, samples = now, 0
            loop.log(points)
            evaluated = dict(position.latest)
            if position.best is not None:
                position.best.offer(position.step, evaluated.get(position.best.metric), model)
            ends = False
            if _stops_early(position, evaluated, ranks) and not last:
                assert position.early_stopping is not None
                position.early_stopping.stopped_epoch = epoch
                ends = True
            elif loop.stop_rule is not None and not (last or ranks.distributed):
                reason = loop.stop_rule(position.step, evaluated)
                if reason:
                    position.ended_by_rule = EndedByRule(epoch, position.step, reason)
                    ends = True
            if ends:
                last = True  # ends here: the last window logged, a final checkpoint written
                if position.step % config.log_every_n_steps:
                    metrics.close_window(position.step, optimizer.param_groups[0]["lr"])
        for observer in loop.observers:
            observer.epoch_completed(epoch, position.step, evaluated)
        if last or epoch % checkpoint_every == 0:
            loop.save_checkpoint()
        if last:
            break
        if (
            not last and not ranks.distributed and stop.requested is not None
        ):  # finishing beats stopping after the last step
            raise _StopRequested()
    seconds = time.perf_counter() - loop_started
    if ranks.is_main:  # the model of record's task metrics, for the summary and the run's description
        position.evaluation = final_evaluation(parts, position, spec.tracking.log_model)
    return seconds


def _stops_early(position: Position, evaluated: dict[str, float], ranks: Any) -> bool:
    """Whether train.early_stopping ends the run after this evaluation. Every rank of a distributed
    job sees the same values (reduced losses, task metrics on every row); rank 0's verdict is taken
    all the same, so that no rank could go on alone."""
    stopping = position.early_stopping
    if stopping is None:
        return False
    stop = stopping.offer(position.step, evaluated.get(stopping.metric))
    return bool(ranks.broadcast(stop)) if ranks.distributed else stop


def _validation(parts: Any, ranks: Any) -> dict[str, torch.Tensor | float]:
    """Validation metrics as device tensors. The ranks of a distributed job each take a slice of the
    validation rows for the loss, weighted like a batch's, so that the mean over ranks is the whole
    set's; the task metrics (F1, AUC, R² are no means) each rank measures on every row, alike."""
    x, y, task = parts.data.val_x, parts.data.val_y, parts.task_metrics
    if not (ranks.distributed and len(x) >= ranks.world_size):
        return evaluate(parts.model, parts.loss_fn, x, y, task)
    shard_x, shard_y, weight = ranks.shard(x, y)
    values = {name: value * weight for name, value in evaluate(parts.model, parts.loss_fn, shard_x, shard_y).items()}
    return values | (evaluate(parts.model, None, x, y, task) if task is not None and task.definitions else {})


def _stop_asked(stop: StopOnSignal, ranks: Any, step: int, check_every: int) -> bool:
    """Whether to stop before the next step. One process reads its flag (tens of ns); the ranks of a
    distributed job must stop at the same step, or the others wait for it forever, so they agree
    once per `check_every` steps, in one small all-reduce."""
    if not ranks.distributed:
        return stop.requested is not None
    if step % check_every:
        return False
    stop.requested = ranks.agree_stop(stop.requested)
    return stop.requested is not None


def _weighted_loss(
    module: nn.Module, loss_fn: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, weight: float
) -> torch.Tensor:
    """A rank's share of the global batch's mean loss (distributed.py). A rank with no rows of a
    small last batch still runs forward and backward, with a loss of zero, because DDP's gradient
    all-reduce needs every rank."""
    outputs = module(inputs)
    if weight == 0.0:
        return outputs.sum() * 0.0
    return loss_fn(outputs, targets) * weight


# With `eval_every_n_epochs: auto`, evaluations are at least this many steps apart. Each costs a
# validation forward and a device synchronisation: for the chapter's full-batch model about 0.2
# of a training step (90 us against 450 us here), so every step would add 20%, every 25th under 1%.
_AUTO_EVAL_MIN_STEPS = 25
# With `checkpoint.every_n_epochs: auto`, about this many checkpoints a run (plus the final one):
# enough to lose little to a crash, few enough that writing them (a few ms each for the chapter's
# model, fsync included) stays far below 1% of the run.
_AUTO_CHECKPOINTS = 10


def eval_interval(config: Any, steps_in_epoch: int) -> int:
    """Epochs between evaluations: as set, or (auto) every epoch unless epochs are under 25 steps."""
    if config.eval_every_n_epochs != "auto":
        return int(config.eval_every_n_epochs)
    return max(1, math.ceil(max(_AUTO_EVAL_MIN_STEPS, config.log_every_n_steps) / steps_in_epoch))


def check_interval(config: Any, device: torch.device, ranks: Any) -> int:
    """Steps between finiteness checks of the loss. Reading a CPU loss back costs nothing; on an
    accelerator it waits for the device; the ranks of a distributed job must agree, in a collective."""
    return 1 if device.type == "cpu" and not ranks.distributed else config.log_every_n_steps


def checkpoint_interval(spec: Any) -> int:
    """Epochs between checkpoints: as set, or (auto) a tenth of the run."""
    every = spec.checkpoint.every_n_epochs
    return int(every) if every != "auto" else max(1, math.ceil(spec.train.epochs / _AUTO_CHECKPOINTS))
