"""What a training run records in MLflow besides its metrics: tags, the start, the results.

Before the first step: the tags (versions, device, seed, spec digest, git commit, plugins, the
process that owns the run), the gradient verdicts, the datasets and the run's description.
After the last: the final checkpoint, the plots, the confusion matrix and the model. A run that
fails or is stopped keeps its last good checkpoint.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from knightctl.checkpoint.resume import Resumption
from knightctl.gradcheck.report import OpReport
from knightctl.gradcheck.tracking import log_reports
from knightctl.plugins.system import PluginSystem
from knightctl.spec.model import ExperimentSpec
from knightctl.tracking.confusion import CONFUSION_ARTIFACT, CONFUSION_TABLE, confusion_figure, confusion_table
from knightctl.tracking.models import log_model_of_record, model_description
from knightctl.tracking.note import RunStory, data_summary, gradcheck_summary, model_summary
from knightctl.tracking.owner import owner_tags
from knightctl.tracking.plots import CURVES_ARTIFACT, run_plots, training_curves
from knightctl.tracking.plugintags import plugin_tags
from knightctl.tracking.provenance import model_source_tags, spec_provenance
from knightctl.tracking.run import MlflowRun, open_run
from knightctl.tracking.tags import (
    CHECKPOINT_DIR_TAG,
    MODEL_CHOICE_TAG,
    NOTE_TAG,
    RESUMED_FROM_TAG,
    SPEC_CHANGES_TAG,
)
from knightctl.training.best import choose
from knightctl.training.build import Components
from knightctl.training.devices import DeviceChoice
from knightctl.training.position import Position


def keep_checkpoint(run: MlflowRun, path: Path) -> None:
    """Store the last good checkpoint with a run that failed or was stopped (best effort)."""
    try:
        run.log_file(path, "checkpoints")
    except Exception as exc:  # the error that ended the run is the one to report
        warnings.warn(f"could not store checkpoint {path} with MLflow run {run.run_id}: {exc}", stacklevel=1)


def record_start(
    run: MlflowRun,
    spec: ExperimentSpec,
    choice: DeviceChoice,
    parts: Components,
    verdicts: Sequence[OpReport],
    skip_gradcheck: bool,
    position: Position,
    resumed: Resumption | None,
    checkpoint_folder: Path,
) -> None:
    """Before the first step: the gradient verdicts, the datasets, and the run's description."""
    if verdicts:
        log_reports(run.client, run.run_id, verdicts)
    if resumed is None:
        run.log_datasets(parts.data, spec.data.name)
    tags = {CHECKPOINT_DIR_TAG: str(checkpoint_folder)}
    if resumed is not None:
        tags[RESUMED_FROM_TAG] = f"step {resumed.state['step']}"
        tags[SPEC_CHANGES_TAG] = "; ".join(resumed.changes) or "none"
    run.set_tags(tags)
    if resumed is None:  # a resumed run has them from its start (MLflow refuses to change a param)
        run.log_params(built_params(parts))
    story = RunStory(
        spec=spec,
        device=f"{choice.description} ({choice.reason})",
        model_summary=model_summary(parts.model),
        data_summary=data_summary(spec.data.name, parts.data.n_train, parts.data.n_val, parts.data.source),
        gradcheck=gradcheck_summary({report.name: report.verdict for report in verdicts}, skip_gradcheck),
        final_metrics=position.latest,  # the same dict: the description shows the latest values, even of a failed run
        resumed_from=resumed_from(resumed),
        history=position.history,  # the same list: the description tells each value's step
        best=position.best,  # the same object: the description gives the best step beside the last
        early_stopping=position.early_stopping,  # the same object: whether and why it stopped early
    )
    run.describe(story)


def record_results(
    run: MlflowRun, spec: ExperimentSpec, parts: Components, position: Position, system: PluginSystem
) -> str | None:
    """After the last step: the final and best checkpoints (checkpoints/final.pt, checkpoints/best.pt),
    the plots, a classifier's confusion matrix (tracking/confusion.py) and (unless turned off) the
    model of record (tracking/models.py)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, path in (("final.pt", position.checkpoint), ("best.pt", position.best_checkpoint)):
            if path is not None:
                shutil.copyfile(path, Path(folder) / name)
                run.log_file(Path(folder) / name, "checkpoints")
    if run.story is not None:
        run.story.ended_by_rule = position.ended_by_rule
    figures = run_plots(position.history, parts.model, parts.data, parts.loss_def.target)
    if position.evaluation is not None:  # the model of record's task metrics and confusion matrix
        if position.evaluation.confusion is not None:
            run.log_table(confusion_table(position.evaluation), CONFUSION_TABLE)
        figure = confusion_figure(position.evaluation)
        if figure is not None:
            figures[CONFUSION_ARTIFACT] = figure
        if run.story is not None:
            run.story.evaluation = position.evaluation
    run.log_figures(figures)
    if not spec.tracking.log_model:
        return None
    choice = choose(spec.tracking.log_model, position.best, position.step)
    if choice.kind == "best" and position.best is not None:
        model = position.best.model_at_best(parts.model)
    else:
        model = copy.deepcopy(parts.model).cpu().eval()
    target = parts.loss_def.target
    tags = {
        **model_source_tags(spec, spec.name),  # "Logged from": the spec
        NOTE_TAG: model_description(spec, choice, parts.data, target),
        MODEL_CHOICE_TAG: choice.kind,
    }
    if run.story is not None:
        run.story.model_of_record = choice
    return run.log_model(lambda: log_model_of_record(spec, system, model, parts.data, target, choice, tags))


def resumed_from(resumed: Resumption | None) -> str | None:
    """`step 340 (12 epochs done, 4 batches into the next) of PATH`, for the console and the description."""
    if resumed is None:
        return None
    state = resumed.state
    changed = f"; spec changes allowed: {', '.join(resumed.changes)}" if resumed.changes else ""
    into_next = f", {state['batch']} batches into the next" if state["batch"] else ""
    return f"step {state['step']} ({state['epoch']} epochs done{into_next}) of {resumed.checkpoint}{changed}"


def run_tags(spec: ExperimentSpec, choice: DeviceChoice, system: PluginSystem) -> dict[str, str]:
    """The run's tags, set when it starts (and again, with this process as owner, when it resumes)."""
    tags = {
        **plugin_tags(spec, system),
        **owner_tags(),
        **spec_provenance(spec, spec.name),  # the spec's repository's commit
        "device": choice.description,
        "device.reason": choice.reason,
        "seed": str(spec.seed),
        "deterministic": str(torch.are_deterministic_algorithms_enabled()).lower(),
        "spec.name": spec.name,
        "spec.digest": spec.digest(),
    }
    if spec.description:
        tags[NOTE_TAG] = spec.description
    return tags


def built_params(parts: Components) -> dict[str, str]:
    """What the spec became once built, as params: the model's size, the data's shape and classes,
    and the CPU threads torch trains with (train.threads resolved, training/threads.py)."""
    data = parts.data
    params = {
        "model.n_parameters": str(sum(p.numel() for p in parts.model.parameters())),
        "torch.num_threads": str(torch.get_num_threads()),
        "data.n_train": str(data.n_train),
        "data.n_val": str(data.n_val),
        "data.n_features": str(int(data.train_x.shape[1]) if data.train_x.dim() > 1 else 1),
    }
    if data.class_names:
        params["data.classes"] = ", ".join(data.class_names)[:6000]  # in index order; MLflow's value limit
    return params


class MlflowTracker:
    """`training.tracker.Tracker` on an open MLflow run: what `train` tells it, recorded as above."""

    def __init__(self, run: MlflowRun) -> None:
        self.run = run
        self.run_id: str | None = run.run_id
        self.experiment_id: str | None = run.experiment_id
        self.tracking_uri: str | None = run.tracking_uri
        self.notices: Sequence[str] = run.notices

    @property
    def pending_sync(self) -> str | None:
        return self.run.pending_sync  # set as the run closes

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None:
        self.run.log_metrics(points)

    def close_metrics(self) -> None:
        self.run.close_metrics()

    def record_start(self, *args: Any, **kwargs: Any) -> None:
        record_start(self.run, *args, **kwargs)
        self.run.writer.training_started()  # the loop starts next: system metrics are sampled from here

    def loop_ended(self, steps: int, seconds: float) -> None:
        if self.run.story is not None:
            self.run.story.steps, self.run.story.seconds = steps, seconds

    def record_unfinished(self, position: Position) -> None:
        if position.checkpoint is not None:
            keep_checkpoint(self.run, position.checkpoint)
        try:  # the learning curves only: the weights may be what went wrong
            curves = training_curves(position.history)
            if curves is not None:
                self.run.log_figures({CURVES_ARTIFACT: curves})
        except Exception as exc:  # the error that ended the run is the one to report
            warnings.warn(f"could not store the curves with MLflow run {self.run.run_id}: {exc}", stacklevel=1)

    def record_results(
        self, spec: ExperimentSpec, parts: Components, position: Position, system: PluginSystem
    ) -> str | None:
        return record_results(self.run, spec, parts, position, system)


@contextmanager
def open_tracker(spec: ExperimentSpec, **options: Any) -> Iterator[MlflowTracker]:
    """`open_run` (same options), as the tracker `train` talks to."""
    with open_run(spec, **options) as run:
        yield MlflowTracker(run)
