"""A training run's description for the MLflow dashboard (`mlflow.note.content`), in markdown.

It is what a reviewer reads first on the run's Overview tab: what was trained, on what data and
device, how it ended and with which numbers, and whether the custom ops passed their gradient
check. It is written when the run starts and rewritten when it ends, FAILED and KILLED included.
Its first line is the outcome in words (`outcome()`), which the runs table shows as the
description's preview and the tag `knightctl.outcome` repeats: FINISHED, FAILED and KILLED runs
read apart without opening them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from knightctl.plugins.events import EvaluationReport
    from knightctl.spec.model import ExperimentSpec
    from knightctl.training.best import Choice, ModelOfRecord
    from knightctl.training.earlystop import EarlyStopping, EndedByRule

# The metrics a reader looks for first, in this order; any others follow alphabetically.
_HEADLINE = ("val/accuracy", "val/loss", "train/loss")
_NOT_RESULTS = ("epoch", "train/lr", "train/samples_per_s")


@dataclass
class RunStory:
    """What the note says about a run; filled in as the run goes."""

    spec: ExperimentSpec
    device: str
    model_summary: str
    data_summary: str
    gradcheck: str
    status: str = "RUNNING"
    steps: int = 0
    seconds: float | None = None  # of the training loop, set-up not included
    final_metrics: dict[str, float] = field(default_factory=dict)
    ending: str = ""  # why a run did not finish: the error or the signal
    resumed_from: str | None = None  # the checkpoint a resumed run went on from
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # every logged point, by step
    next_step: str = ""  # what to do about how it ended: the resume command of a stopped run
    best: ModelOfRecord | None = None  # the best step by train.monitor so far (training/best.py)
    model_of_record: Choice | None = None  # the weights logged as the run's model, once logged
    evaluation: EvaluationReport | None = None  # the model of record's task metrics, after the loop
    early_stopping: EarlyStopping | None = None  # train.early_stopping's count (training/earlystop.py)
    ended_by_rule: EndedByRule | None = None  # where a stop rule (a sweep's pruner) ended the run


def outcome(story: RunStory) -> str:
    """The run's outcome in one line: `FINISHED after 300 steps: val/loss 0.21`, `FAILED after 2 steps:
    the training loss became nan at step 2`, `KILLED after 4,724 steps: SIGINT ...; resume with: ...`."""
    steps = f"{story.steps:,} step{'s' * (story.steps != 1)}"
    if story.status == "RUNNING":
        return f"RUNNING: {story.spec.train.epochs} epochs"
    if story.status == "FINISHED":
        early = story.early_stopping
        if early is not None and early.stopped_epoch is not None:
            steps += f", stopped early at epoch {early.stopped_epoch} of {story.spec.train.epochs}"
        elif story.ended_by_rule is not None:
            steps += f", stopped early at epoch {story.ended_by_rule.epoch} of {story.spec.train.epochs}"
        best = story.best
        if best is not None and best.value is not None and best.step is not None:
            final = story.final_metrics.get(best.metric)
            last = f" (final {final:.4g})" if final is not None and best.step != story.steps else ""
            return f"FINISHED after {steps}: best {best.metric} {best.value:.4g} at step {best.step:,}{last}"
        headline = [f"{key} {value:.4g}" for key, value in _results(story.final_metrics)[:2]]
        return f"FINISHED after {steps}" + (f": {', '.join(headline)}" if headline else "")
    told = f"{story.status} after {steps}" + (f": {story.ending}" if story.ending else "")
    return told + (f"; {story.next_step}" if story.next_step else "")


def model_summary(model: nn.Module) -> str:
    """`Linear(2→5) → ReLU → Linear(5→1); 21 parameters`: the layers in order and their size."""
    parts = []
    for layer in model.children():
        name = type(layer).__name__
        if hasattr(layer, "in_features") and hasattr(layer, "out_features"):
            parts.append(f"{name}({layer.in_features}→{layer.out_features})")
        elif hasattr(layer, "op_name"):
            parts.append(str(layer.op_name))
        else:
            parts.append(name)
    n_parameters = sum(p.numel() for p in model.parameters())
    return f"{' → '.join(parts) or type(model).__name__}; {n_parameters:,} parameters"


def data_summary(name: str, n_train: int, n_val: int, source: str) -> str:
    rows = f"{n_train:,} training rows, {n_val:,} validation rows"
    return f"{name}: {rows}" + (f" ({source})" if source else "")


def gradcheck_summary(verdicts: Mapping[str, str], skipped: bool) -> str:
    """`passed: knight::smooth_relu` / `failed: ...` / `skipped` / `no custom ops`."""
    if skipped:
        return "skipped (--skip-gradcheck)"
    if not verdicts:
        return "no custom ops"
    overall = "failed" if "failed" in verdicts.values() else "passed"
    return f"{overall}: " + ", ".join(f"{op} {verdict}" for op, verdict in verdicts.items())


def render_note(story: RunStory) -> str:
    """The markdown note: a title, the spec's description, a table of facts, the final metrics."""
    spec = story.spec
    scheduler = f", scheduler {spec.optimizer.scheduler.name}" if spec.optimizer.scheduler else ""
    batch = f"batches of {spec.train.batch_size}" if spec.train.batch_size != "full" else "full batch"
    duration = f" in {story.seconds:.1f} s" if story.seconds is not None else ""
    rows = [
        ("status", story.status + (f": {story.ending}" if story.ending else "")),
        ("device", story.device),
        ("data", story.data_summary),
        ("model", story.model_summary),
        ("loss, optimizer", f"{spec.loss.name}, {spec.optimizer.name} (lr {spec.optimizer.lr}){scheduler}"),
        ("training", f"{spec.train.epochs} epochs, {batch}, seed {spec.seed}; {story.steps:,} steps{duration}"),
        ("gradient check", story.gradcheck),
    ]
    if story.model_of_record is not None:
        rows.append(("model of record", f"{story.model_of_record.why()} (logged as a model of this run)"))
    elif story.best is not None and story.best.step is not None and story.status == "FINISHED":
        rows.append(("model of record", "not logged (tracking.log_model: false); best.pt holds the best step"))
    if story.early_stopping is not None:
        early = story.early_stopping
        watching = f"watching {early.metric} ({early.goal}), patience {early.patience} evaluations"
        rows.append(("early stopping", early.ending(spec.train.epochs) or watching))
    if story.ended_by_rule is not None:
        rows.append(("stopped early", story.ended_by_rule.ending(spec.train.epochs)))
    if story.resumed_from:
        rows.insert(1, ("resumed from", story.resumed_from))
    lines = [outcome(story), "", f"### {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += ["| | |", "|---|---|"] + [f"| {key} | {_cell(value)} |" for key, value in rows]
    best = story.best
    if best is not None and best.step is not None and best.value is not None:
        at_best = _results({k: v for step, values in story.history if step == best.step for k, v in values.items()})
        so_far = "" if story.status == "FINISHED" else " so far"
        shown = " · ".join(f"{key} {value:.4g}" for key, value in at_best)
        lines += ["", f"**Best{so_far}** by {best.metric} (step {best.step:,}): {shown}"]
    results = _results(story.final_metrics)
    if results:
        label = "Final metrics" if story.status in ("FINISHED", "RUNNING") else "Last metrics"
        lines += ["", f"**{label}**{_at_steps(results, story.history)}"]
    if story.evaluation is not None:
        overall, per_class = evaluation_summary(story.evaluation)
        lines += ["", f"**Task metrics** of {story.evaluation.weights}, on the validation split: {overall}"]
        if per_class:
            lines += ["", per_class]
        if story.evaluation.confusion is not None:
            lines += ["", "Confusion matrix: `confusion_matrix.json` (table) and `plots/confusion_matrix.png`"]
    return "\n".join(lines) + "\n"


def evaluation_summary(report: EvaluationReport, max_classes: int = 8) -> tuple[str, str]:
    """Two short lines: `accuracy 0.95 · macro_f1 0.94`, and `per class (precision / recall / f1):
    defeat 0.97 / 0.94 / 0.95 · victory ...` (the first `max_classes`; the rest are in MLflow)."""
    overall = " · ".join(f"{key.removeprefix('val/')} {_value(value)}" for key, value in report.overall().items())
    if not report.per_class:
        return overall or "none", ""
    metrics = per_class_order(report)
    shown = [
        f"{name} " + " / ".join(_value(report.per_class[metric].get(name)) for metric in metrics)
        for name in report.class_names[:max_classes]
    ]
    more = len(report.class_names) - max_classes
    tail = f" · and {more} more classes" if more > 0 else ""
    return overall or "none", f"Per class ({' / '.join(metrics)}): " + " · ".join(shown) + tail


def per_class_order(report: EvaluationReport) -> list[str]:
    """The per-class metrics' names, precision, recall and f1 first (in that order), then the rest."""
    first = {"precision": 0, "recall": 1, "f1": 2}
    return sorted(report.per_class, key=lambda name: (first.get(name, 3), name))


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _at_steps(results: list[tuple[str, float]], history: list[tuple[int, dict[str, float]]]) -> str:
    """`(step 300): a 1 · b 2`, or each value with its own step when they differ (a stopped run's
    validation is older than its training loss)."""
    last_step = {key: step for step, values in history for key in values}
    steps = {last_step.get(key) for key, _ in results}
    if len(steps) == 1:
        (step,) = steps
        where = f" (step {step:,})" if step is not None else ""
        return f"{where}: " + " · ".join(f"{key} {value:.4g}" for key, value in results)
    shown = (
        f"{key} {value:.4g}" + (f" (step {last_step[key]:,})" if key in last_step else "") for key, value in results
    )
    return ": " + " · ".join(shown)


def _results(metrics: Mapping[str, float]) -> list[tuple[str, float]]:
    first = [(key, metrics[key]) for key in _HEADLINE if key in metrics]
    rest = sorted(
        (k, v)
        for k, v in metrics.items()
        if k not in _HEADLINE and k not in _NOT_RESULTS and not k.startswith("system/") and not is_per_class(k)
    )
    return first + rest


def is_per_class(key: str) -> bool:
    """`val/f1/<class>` and the like: shown in the task metrics' per-class line, not one by one."""
    return key.startswith("val/") and key.count("/") == 2


def amend_note(note: str, status: str, paragraph: str) -> str:
    """A stored description with a new status row and a paragraph at its end: how a run ended, told
    by a process other than the one that ran it (`knightctl sync`, a distributed job's launcher)."""
    note = _STATUS_ROW.sub(lambda _: f"| status | {_cell(status)} |", note, count=1)
    first, _, rest = note.partition("\n")
    if first.startswith(OUTCOMES):  # the outcome line goes first, as `render_note` writes it
        note = f"{_cell(status)}\n{rest}"
    return (note.rstrip("\n") + "\n\n" if note.strip() else "") + paragraph.rstrip("\n") + "\n"


OUTCOMES = ("RUNNING", "FINISHED", "FAILED", "KILLED")  # how an outcome line starts
_STATUS_ROW = re.compile(r"^\| status \| .* \|$", re.MULTILINE)


def _cell(text: str) -> str:
    """Table cells cannot hold a pipe or a line break."""
    return text.replace("|", "\\|").replace("\n", " ")
