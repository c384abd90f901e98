"""Everything rich: the training progress observer, the run summary, specs and errors on screen.

On a terminal the progress bar animates; anywhere else (CI, pipes, files) it prints a plain line
now and then, with no escape codes. rich honours NO_COLOR by itself.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.syntax import Syntax
from rich.table import Table

from knightctl.errors import Interrupted
from knightctl.tracking.note import evaluation_summary, is_per_class, per_class_order

if TYPE_CHECKING:
    from knightctl.checkpoint.verify import ResumeVerdict
    from knightctl.plugins.events import EvaluationReport, RunInfo, RunResult
    from knightctl.spec.model import ExperimentSpec

_REFRESH_S = 0.1  # at most ten progress updates a second, whatever the step rate
_PLAIN_LINE_S = 10.0  # without a terminal: a line every tenth of the run, or this often
# metric -> (label on a plain line, label on the progress bar)
_SHOWN = {
    "train/loss": ("train/loss", "loss"),
    "val/loss": ("val/loss", "val_loss"),
    "val/accuracy": ("val/accuracy", "val_acc"),
    "train/samples_per_s": ("train/samples_per_s", "samples/s"),
}


def make_console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)


def _metric_text(metrics: Mapping[str, float], compact: bool = False) -> str:
    """The shown metrics as `label value` pairs; `compact` uses the progress bar's short labels."""
    parts = []
    for key, labels in _SHOWN.items():
        if key in metrics:
            value = metrics[key]
            parts.append(
                f"{labels[compact]} {value:,.0f}" if key.endswith("per_s") else f"{labels[compact]} {value:.4f}"
            )
    return "  ".join(parts)


class ProgressObserver:
    """Shows training progress: an animated bar on a terminal, plain lines elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._epochs = 0
        self._last_update = 0.0
        self._last_line_epoch = 0
        self._metrics: dict[str, float] = {}

    def run_started(self, info: RunInfo) -> None:
        self._epochs = info.epochs
        self.console.print(f"device: {info.device} ({info.device_reason})")
        self.console.print(
            f"data: {info.n_train} training rows, {info.n_val} validation rows; "
            f"{info.epochs} epochs of {info.steps_per_epoch} step{'s' * (info.steps_per_epoch != 1)}; seed {info.seed}"
        )
        if info.run_id:
            self.console.print(f"MLflow run {info.run_id} on {info.tracking_uri}", soft_wrap=True)
        if info.resumed_from:
            self.console.print(f"resuming at {escape(info.resumed_from)}", soft_wrap=True)
        for notice in info.notices:
            self.console.print(f"[yellow]note:[/yellow] {escape(notice)}")
        if self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[metrics]}", markup=False),
                console=self.console,
                refresh_per_second=1 / _REFRESH_S,
            )
            self._task = self._progress.add_task("epoch", total=info.epochs, completed=info.first_epoch - 1, metrics="")
            self._progress.start()

    def epoch_completed(self, epoch: int, step: int, metrics: Mapping[str, float] | None) -> None:
        if metrics:
            self._metrics = dict(metrics)
        now = time.monotonic()
        final = epoch == self._epochs
        if self._progress is not None:
            if final or now - self._last_update >= _REFRESH_S:
                self._progress.update(self._task, completed=epoch, metrics=_metric_text(self._metrics, compact=True))
                self._last_update = now
        elif metrics and (
            final
            or epoch - self._last_line_epoch >= max(1, self._epochs // 10)
            or now - self._last_update >= _PLAIN_LINE_S
        ):
            self.console.print(f"epoch {epoch}/{self._epochs}  step {step}  {_metric_text(metrics)}", soft_wrap=True)
            self._last_line_epoch = epoch
            self._last_update = now

    def run_finished(self, result: RunResult) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def render_summary(console: Console, result: RunResult) -> None:
    """The end-of-run table: device, epochs, time, the final metrics beside the best step's, and where
    the run is in MLflow."""
    info = result.info
    table = Table(title=f"{info.spec_name}: finished", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("device", info.device)
    table.add_row("epochs / steps", f"{info.epochs} / {result.steps}")
    if result.stopped_early:
        table.add_row("early stopping", escape(result.stopped_early))
    table.add_row("time", f"{result.seconds:.1f} s (training loop {result.loop_seconds:.2f} s)")
    best = result.best
    final_heading = f"final (step {result.steps:,})"
    if best is not None:  # one column of text, so that the run id and URIs below are never cut short
        table.add_row("", f"[italic]{final_heading:<18}best {best.metric} (step {best.step:,})[/italic]")
    for key, value in result.final_metrics.items():
        if key != "epoch" and not is_per_class(key):  # per class: below, with the task metrics
            shown = f"{value:,.0f}" if key.endswith("per_s") else f"{value:.4f}"
            if best is not None and key in best.metrics and not key.endswith("per_s"):
                shown = f"{shown:<18}{best.metrics[key]:.4f}"
            table.add_row(key, shown)
    if result.evaluation is not None:
        _task_rows(table, result.evaluation)
    if info.run_id:
        table.add_row("MLflow run", info.run_id)
        table.add_row("tracking URI", f"{info.tracking_uri} ({result.tracking_uri_source})")
        if result.model_uri:
            which = f" ({result.model_of_record} step)" if result.model_of_record else ""
            table.add_row("model", result.model_uri + which)
    console.print(table)
    if result.pending_sync:
        console.print(f"[yellow]note:[/yellow] {escape(result.pending_sync)}", soft_wrap=True)
    if info.run_id and info.tracking_uri:
        page = f"#/experiments/{info.experiment_id}/runs/{info.run_id}"
        if info.tracking_uri.startswith(("http://", "https://")):
            console.print(
                f"dashboard: {info.tracking_uri.rstrip('/')}/{page}", soft_wrap=True
            )  # a URL split over lines is no link
        else:
            command = (
                "knightctl ui"
                if info.tracking_uri == "sqlite:///mlflow.db"
                else f"knightctl ui --tracking-uri {info.tracking_uri}"
            )
            console.print(f"dashboard: run `{command}` here, then open http://127.0.0.1:5000/{page}", soft_wrap=True)


def _task_rows(table: Table, report: EvaluationReport, max_classes: int = 5) -> None:
    """The model of record's task metrics: one line, whose weights, and a line per class (the first few)."""
    overall, _ = evaluation_summary(report)
    table.add_row("task metrics", escape(f"{overall}\n({report.weights})"))
    metrics = per_class_order(report)
    if not metrics:
        return
    width = max(len(name) for name in report.class_names[:max_classes])
    lines = [" / ".join(metrics)] + [
        f"{name:<{width}}  "
        + " / ".join("n/a" if (v := report.per_class[m].get(name)) is None else f"{v:.4f}" for m in metrics)
        for name in report.class_names[:max_classes]
    ]
    if len(report.class_names) > max_classes:
        lines.append(f"and {len(report.class_names) - max_classes} more classes (in MLflow)")
    table.add_row("per class", escape("\n".join(lines)))


def render_spec(console: Console, spec: ExperimentSpec) -> None:
    """The resolved spec, every default filled in, as YAML."""
    import yaml

    text = yaml.safe_dump(spec.to_data(), sort_keys=False)
    console.print(
        f"# {spec.source.path if spec.source else spec.name}: valid; resolved with defaults:",
        markup=False,
        soft_wrap=True,
    )
    if console.is_terminal:
        console.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:  # exactly the YAML, for pipes and files: no markup, no re-wrapping
        console.print(text.rstrip(), markup=False, highlight=False, soft_wrap=True)


def render_error(console: Console, error: BaseException) -> None:

    if isinstance(error, Interrupted):  # its message starts with the signal's name
        console.print(f"[bold yellow]{escape(str(error))}[/]", highlight=False, soft_wrap=True)
    else:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)


def render_resume_verdict(console: Console, verdict: ResumeVerdict) -> None:
    """One line: whether the run stopped and resumed matched the run straight through, bit for bit."""
    where = f"step {verdict.stopped_at_step} (epoch {verdict.stopped_in_epoch}" + (
        f", after batch {verdict.batch_in_epoch})" if verdict.batch_in_epoch else ", at its end)"
    )
    if verdict.identical:
        console.print(
            f"[bold green]resume verified:[/] stopped at {where} and resumed: all {verdict.steps:,} step losses and "
            f"{verdict.tensors_compared} weight and optimizer tensors are bit-identical to the run straight through",
            soft_wrap=True,
        )
    else:
        console.print(
            f"[bold red]resume differs:[/] stopped at {where} and resumed: {escape(verdict.first_difference or '')}",
            soft_wrap=True,
        )
        console.print(
            "  hint: on CUDA, train with --deterministic; a plugin op that draws random numbers outside torch's "
            "generators cannot be resumed exactly",
            soft_wrap=True,
        )


def render_warnings(console: Console, lines: list[str]) -> None:
    for line in lines:
        console.print(f"[bold yellow]warning:[/] {escape(line)}", highlight=False, soft_wrap=True)
