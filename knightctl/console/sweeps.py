"""A sweep on screen: one line as each trial ends, then the trials ranked in a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from knightctl.sweep.run import SweepResult, TrialResult

_STYLE = {"FINISHED": "green", "SKIPPED": "dim", "FAILED": "red", "KILLED": "yellow"}


def render_trial(console: Console, result: TrialResult, done: int, total: int, metric: str) -> None:
    value = f"  {metric} {result.value:.4g}" if result.value is not None else ""
    why = f"  {escape(result.error)}" if result.error else ""
    style = _STYLE.get(result.status, "")
    console.print(
        f"trial {done}/{total} [{style}]{result.status}[/]  {escape(result.trial.label)}{value}{why}",
        soft_wrap=True,
        highlight=False,
    )


def render_sweep(console: Console, outcome: SweepResult) -> None:
    table = Table(title=f"sweep ranked by {outcome.metric} ({outcome.goal})", title_justify="left")
    for column, justify in (
        ("#", "right"),
        ("trial", "left"),
        (outcome.metric, "right"),
        ("status", "left"),
        ("run", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for place, result in enumerate(outcome.ranked(), start=1):
        value = f"{result.value:.4g}" if result.value is not None else "-"
        status = f"[{_STYLE.get(result.status, '')}]{result.status}[/]"
        table.add_row(str(place), escape(result.trial.label), value, status, (result.run_id or "-")[:8])
    console.print(table)
    best = outcome.best
    if best is not None:
        console.print(
            f"best: {escape(best.trial.label)}  {outcome.metric} {best.value:.6g}  (run {best.run_id})",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"sweep run {outcome.parent_run_id} on {outcome.tracking_uri}", soft_wrap=True, highlight=False)
