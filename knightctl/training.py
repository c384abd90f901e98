"""`train(spec)`: decide the device and seed once, build, dry-run, then one loop, top to bottom."""

from __future__ import annotations

import copy
import math
import platform
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn

from knightctl._version import __version__
from knightctl.build import Components, build_components, dry_forward
from knightctl.checkpoint import training_state
from knightctl.data import epoch_batches, steps_per_epoch
from knightctl.devices import DeviceChoice, new_seed, resolve_device, seed_everything, set_deterministic
from knightctl.errors import Interrupted, KnightctlError, RunFailed, Terminated
from knightctl.gradcheck.report import OpReport
from knightctl.gradcheck.run import preflight
from knightctl.gradcheck.tracking import log_reports
from knightctl.metrics import StepMetrics, evaluate, gradient_norm
from knightctl.plugins import PluginEvents, PluginSettings, PluginSystem
from knightctl.plugins import load as load_plugins
from knightctl.plots import run_plots
from knightctl.plugintags import plugin_tags
from knightctl.runnote import RunStory, data_summary, gradcheck_summary, model_summary
from knightctl.spec import ExperimentSpec, TrainSpec, load_spec
from knightctl.tracking import MlflowRun, git_commit, open_run, resolve_tracking_uri, start_writer


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do; observers receive it before the first step."""

    spec_name: str
    device: str
    device_reason: str
    seed: int
    epochs: int
    steps_per_epoch: int
    n_train: int
    n_val: int
    tracking_uri: str | None
    run_id: str | None
    experiment_id: str | None
    notices: tuple[str, ...] = ()  # about the tracking store, worth a line on screen


@dataclass
class RunResult:
    """What a finished run did: final metrics, every logged point, timings and the model."""

    info: RunInfo
    final_metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]]
    steps: int
    seconds: float
    loop_seconds: float
    model: nn.Module
    model_uri: str | None = None
    tracking_uri_source: str = ""
    store_wait_seconds: float = 0.0  # after the loop, until every queued metric was stored

    @property
    def run_id(self) -> str | None:
        return self.info.run_id


class Observer(Protocol):
    """Watches a run; the console's progress bar is one. Called on the training thread."""

    def run_started(self, info: RunInfo) -> None: ...

    def epoch_completed(self, epoch: int, step: int, metrics: Mapping[str, float] | None) -> None: ...

    def run_finished(self, result: RunResult) -> None: ...


@dataclass
class _Position:
    epoch: int = 0
    step: int = 0
    latest: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)


class _NoRun:
    """Stands in for an MLflow run under --no-track."""

    run_id = experiment_id = tracking_uri = None

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None:
        pass

    def close_metrics(self) -> None:
        pass


def train(
    spec: ExperimentSpec | str | Path,
    *,
    overrides: Sequence[str] = (),
    device: str | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    deterministic: bool | None = None,
    observers: Sequence[Observer] = (),
    plugins: PluginSettings | None = None,
    skip_gradcheck: bool = False,
) -> RunResult:
    """Train the experiment `spec` (a spec or a path to one) and track it in MLflow.

    Raises SpecError, DeviceError, DataError, ModelShapeError or PluginError before any MLflow run
    exists, RunFailed if training fails, Interrupted (run marked KILLED) on Ctrl-C. Plugins load
    with `plugins` settings (default: from the environment) plus the files the spec lists; their
    event hooks see the run like `observers` do. Every op the model uses is gradient-checked
    first (GradcheckFailed, before any run exists) unless `skip_gradcheck`.
    """
    started = time.perf_counter()
    spec, system = _spec_and_plugins(spec, overrides, plugins)
    observers = [*observers, PluginEvents(system)]
    uri, uri_source = resolve_tracking_uri(tracking_uri, spec) if track else (None, "--no-track")
    writer = start_writer(uri) if uri else None  # it imports MLflow in its own process meanwhile
    try:
        choice, parts, verdicts = _prepare(spec, system, device, deterministic, skip_gradcheck)
        run_context = open_run(spec, tracking_uri=uri, tags={**_tags(spec, choice), **plugin_tags(spec, system)}, writer=writer) if uri else nullcontext(_NoRun())
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
    position = _Position()
    with _interruptible(position) as run_holder, run_context as run:
        run_holder.append(run.run_id)
        if isinstance(run, MlflowRun):
            _record_start(run, spec, choice, parts, verdicts, skip_gradcheck, position)
        info = _run_info(spec, choice, parts, run)
        for observer in observers:
            observer.run_started(info)
        loop_began = time.perf_counter()
        try:
            loop_seconds = _guarded_loop(spec, parts, run, observers, position, system)
        finally:
            if isinstance(run, MlflowRun) and run.story is not None:
                run.story.steps, run.story.seconds = position.step, time.perf_counter() - loop_began
        stored_by = time.perf_counter()
        run.close_metrics()
        store_wait_seconds = time.perf_counter() - stored_by
        model_uri = _record_results(run, spec, parts, position) if isinstance(run, MlflowRun) else None
    result = RunResult(info, dict(position.latest), position.history, position.step, time.perf_counter() - started, loop_seconds, parts.model,
                       model_uri, uri_source, store_wait_seconds)
    for observer in observers:
        observer.run_finished(result)
    return result


def _prepare(spec: ExperimentSpec, system: PluginSystem, device: str | None, deterministic: bool | None,
             skip_gradcheck: bool) -> tuple[DeviceChoice, Components, list[OpReport]]:
    """The device, seed and components; a dry forward and the ops' gradient check, before any run exists."""
    assert spec.seed is not None
    choice = resolve_device(device or spec.train.device)
    if spec.train.deterministic if deterministic is None else deterministic:
        set_deterministic(True)  # never switched off here: a caller may have switched it on
    seed_everything(spec.seed)
    parts = build_components(spec, system.registry, choice.device, spec.seed)
    dry_forward(parts, spec)
    verdicts = [] if skip_gradcheck else preflight(spec, system, "cpu" if choice.device.type == "mps" else str(choice.device))
    return choice, parts, list(verdicts)


def _record_start(run: MlflowRun, spec: ExperimentSpec, choice: DeviceChoice, parts: Components, verdicts: Sequence[OpReport],
                  skip_gradcheck: bool, position: _Position) -> None:
    """Before the first step: the gradient verdicts, the datasets, and the run's description."""
    if verdicts:
        log_reports(run.client, run.run_id, verdicts)
    run.log_datasets(parts.data, spec.data.name)
    story = RunStory(
        spec=spec,
        device=f"{choice.description} ({choice.reason})",
        model_summary=model_summary(parts.model),
        data_summary=data_summary(spec.data.name, parts.data.n_train, parts.data.n_val, parts.data.source),
        gradcheck=gradcheck_summary({report.name: report.verdict for report in verdicts}, skip_gradcheck),
        final_metrics=position.latest,  # the same dict: the description shows the latest values, even of a failed run
    )
    run.describe(story)


def _record_results(run: MlflowRun, spec: ExperimentSpec, parts: Components, position: _Position) -> str | None:
    """After the last step: the final checkpoint, the plots and (unless turned off) the model."""
    run.log_checkpoint(
        training_state(model=parts.model, optimizer=parts.optimizer, scheduler=parts.scheduler, spec_data=spec.to_data(),
                       spec_digest=spec.digest(), seed=spec.seed or 0, epoch=position.epoch, step=position.step)
    )
    run.log_figures(run_plots(position.history, parts.model, parts.data, parts.loss_def.target))
    if not spec.tracking.log_model:
        return None
    return run.log_model(copy.deepcopy(parts.model).cpu().eval(), _example(parts))


def _spec_and_plugins(spec: ExperimentSpec | str | Path, overrides: Sequence[str], plugins: PluginSettings | None) -> tuple[ExperimentSpec, PluginSystem]:
    """The spec, read if need be and given a seed if it has none, and the plugins it runs with."""
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides, plugins=plugins)
    system = load_plugins(plugins, files=spec.plugin_paths())
    return spec.with_seed(spec.seed if spec.seed is not None else new_seed()), system


def _guarded_loop(spec: ExperimentSpec, parts: Components, run: Any, observers: Sequence[Observer], position: _Position, system: PluginSystem) -> float:
    """The loop, with any unexpected exception turned into RunFailed naming where it happened.

    However the loop ends, the losses of the steps it took since the last evaluation are logged.
    """
    metrics = StepMetrics()
    try:
        return _loop(spec, parts, run, observers, position, metrics)
    except BaseException as exc:
        _log_unfinished(metrics, run, position, parts.optimizer.param_groups[0]["lr"])
        if isinstance(exc, KnightctlError) or not isinstance(exc, Exception):  # explained already, or a signal
            raise
        culprit = system.blame(exc)
        raised_in = f" in plugin {culprit.name!r} ({culprit.origin})" if culprit else ""
        raise RunFailed(
            f"training failed at epoch {position.epoch} (step {position.step}){raised_in}: {type(exc).__name__}: {exc}",
            hint="the full traceback is stored with the MLflow run as error/traceback.txt" if run.run_id else None,
        ) from exc


def _log_unfinished(metrics: StepMetrics, run: Any, position: _Position, lr: float) -> None:
    """Log the steps since the last evaluation (of a loop an error or a signal stopped), if readable."""
    try:
        if metrics.losses and (not metrics.windows or metrics.windows[-1][0] < position.step):
            metrics.close_window(position.step, lr)
        points = metrics.collect()
    except Exception:  # a non-finite loss among them: the error being raised already says so
        return
    run.log_metrics(points)
    position.history.extend(points)


def _loop(spec: ExperimentSpec, parts: Components, run: Any, observers: Sequence[Observer], position: _Position, metrics: StepMetrics) -> float:
    """The training loop, as the chapter writes it, plus cheap bookkeeping. Returns its seconds."""
    config = spec.train
    batch_size = None if config.batch_size == "full" else config.batch_size
    eval_every = _eval_interval(config, steps_per_epoch(parts.data.n_train, batch_size))
    model, loss_fn, optimizer = parts.model, parts.loss_fn, parts.optimizer
    data_order = torch.Generator().manual_seed(spec.seed or 0)
    loop_started = since = time.perf_counter()
    samples = 0
    model.train()
    for epoch in range(1, config.epochs + 1):
        position.epoch = epoch
        for inputs, targets in epoch_batches(parts.data.train_x, parts.data.train_y, batch_size, data_order):
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            clipped_norm = nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip) if config.grad_clip else None
            optimizer.step()
            position.step += 1
            samples += len(inputs)
            metrics.add_loss(loss)
            if position.step % config.log_every_n_steps == 0:
                metrics.close_window(position.step, optimizer.param_groups[0]["lr"], clipped_norm)
        if parts.scheduler is not None:
            parts.scheduler.step()
        evaluated = None
        last = epoch == config.epochs
        if last or epoch % eval_every == 0:
            if last and position.step % config.log_every_n_steps:
                metrics.close_window(position.step, optimizer.param_groups[0]["lr"])
            values = {"train/grad_norm": gradient_norm(model)} if clipped_norm is None else {}
            if parts.data.val_x is not None:
                values.update(evaluate(model, loss_fn, parts.data.val_x, parts.data.val_y, parts.loss_def.target))
            metrics.add_point(position.step, values)
            points = metrics.collect()  # the one device synchronisation per evaluation
            now = time.perf_counter()
            points.append((position.step, {"epoch": float(epoch), "train/samples_per_s": samples / max(now - since, 1e-9)}))
            since, samples = now, 0
            run.log_metrics(points)
            position.history.extend(points)
            for _, logged in points:
                position.latest.update(logged)
            evaluated = dict(position.latest)
        for observer in observers:
            observer.epoch_completed(epoch, position.step, evaluated)
    return time.perf_counter() - loop_started


# With `eval_every_n_epochs: auto`, evaluations are at least this many steps apart. Each costs a
# validation forward and a device synchronisation: for the chapter's full-batch model about 0.2
# of a training step (90 us against 450 us here), so every step would add 20%, every 25th under 1%.
_AUTO_EVAL_MIN_STEPS = 25


def _eval_interval(config: TrainSpec, steps_in_epoch: int) -> int:
    """Epochs between evaluations: as set, or (auto) every epoch unless epochs are under 25 steps."""
    if config.eval_every_n_epochs != "auto":
        return int(config.eval_every_n_epochs)
    return max(1, math.ceil(max(_AUTO_EVAL_MIN_STEPS, config.log_every_n_steps) / steps_in_epoch))


@contextmanager
def _interruptible(position: _Position) -> Iterator[list[str | None]]:
    """Turn Ctrl-C into Interrupted, after the run has been closed as KILLED."""
    run_ids: list[str | None] = []
    try:
        yield run_ids
    except KeyboardInterrupt as exc:
        run_id = run_ids[0] if run_ids else None
        signal_name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        where = f"epoch {position.epoch} (step {position.step})"
        message = f"{signal_name}: interrupted at {where}" + (f"; MLflow run {run_id} marked KILLED" if run_id else "")
        raise Interrupted(message, signal_name=signal_name, run_id=run_id) from None


def _tags(spec: ExperimentSpec, choice: DeviceChoice) -> dict[str, str]:
    import mlflow

    tags = {
        "knightctl.version": __version__,
        "torch.version": torch.__version__,
        "mlflow.version": mlflow.__version__,
        "python.version": platform.python_version(),
        "device": choice.description,
        "device.reason": choice.reason,
        "seed": str(spec.seed),
        "deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "spec.name": spec.name,
        "spec.digest": spec.digest(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": spec.source.path if spec.source else spec.name,
    }
    if spec.description:
        tags["mlflow.note.content"] = spec.description
    repository = git_commit(Path.cwd())
    if repository is not None:
        tags["mlflow.source.git.commit"], dirty = repository[0], repository[1]
        tags["git.dirty"] = str(dirty).lower()
    return tags


def _run_info(spec: ExperimentSpec, choice: DeviceChoice, parts: Components, run: Any) -> RunInfo:
    batch_size = None if spec.train.batch_size == "full" else spec.train.batch_size
    return RunInfo(
        spec_name=spec.name,
        device=choice.description,
        device_reason=choice.reason,
        seed=spec.seed or 0,
        epochs=spec.train.epochs,
        steps_per_epoch=steps_per_epoch(parts.data.n_train, batch_size),
        n_train=parts.data.n_train,
        n_val=parts.data.n_val,
        tracking_uri=run.tracking_uri,
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        notices=tuple(getattr(run, "notices", ())),
    )


def _example(parts: Components) -> Any:
    """A few real input rows, as float32 NumPy, for the model's signature and input example."""
    return parts.data.train_x[:5].detach().cpu().numpy()
