"""A sweep on screen: one line as each trial ends, then the trials ranked in a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from knightctl.sweep.ranking import has_value

if TYPE_CHECKING:
    from knightctl.sweep.ranking import SweepResult, TrialResult

_STYLE = {"FINISHED": "green", "SKIPPED": "dim", "FAILED": "red", "KILLED": "yellow"}


def render_trial(console: Console, result: TrialResult, outcome: SweepResult) -> None:
    """One line as `result` ends: how many trials have ended, its status, its best value, its error."""
    done, total = len(outcome.results), len(outcome.trials)
    value = f"  best {outcome.metric} {result.value:.4g}" if result.value is not None else ""
    why = f"  {escape(result.error)}" if result.error else ""
    style = _STYLE.get(result.status, "")
    console.print(
        f"trial {done}/{total} [{style}]{result.status}[/]  {escape(result.trial.label)}{value}{why}",
        soft_wrap=True,
        highlight=False,
    )


def render_sweep(console: Console, outcome: SweepResult) -> None:
    """The trials ranked by their best value (unranked ones last, as -), then the best and the parent run."""
    table = Table(title=f"sweep ranked by best {outcome.metric} ({outcome.goal})", title_justify="left")
    for column, justify in (
        ("#", "right"),
        ("trial", "left"),
        (f"best {outcome.metric}", "right"),
        ("at step", "right"),
        ("status", "left"),
        ("run", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    place = 0
    for result in outcome.ranked():
        ranked = has_value(result)
        place += ranked
        value = f"{result.value:.4g}" if ranked and result.value is not None else "-"
        step = f"{result.step:,}" if ranked and result.step is not None else "-"
        status = f"[{_STYLE.get(result.status, '')}]{result.status}[/]"
        table.add_row(
            str(place) if ranked else "-", escape(result.trial.label), value, step, status, (result.run_id or "-")[:8]
        )
    console.print(table)
    best = outcome.best
    if best is not None:
        console.print(
            f"best: {escape(best.trial.label)}  {outcome.metric} {best.value:.6g}  (run {best.run_id})",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"sweep run {outcome.parent_run_id} on {outcome.tracking_uri}", soft_wrap=True, highlight=False)
