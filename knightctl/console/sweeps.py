"""A sweep on screen: one line as each trial ends, then the trials ranked in a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from knightctl.sweep.ranking import has_value

if TYPE_CHECKING:
    from knightctl.sweep.ranking import SweepResult, TrialResult

_STYLE = {"FINISHED": "green", "PRUNED": "cyan", "SKIPPED": "dim", "FAILED": "red", "KILLED": "yellow"}
_ORDER = ("FINISHED", "PRUNED", "FAILED", "KILLED")  # the statuses of trials that ran, in the tally
_SKIPPED = "skipped (already done)"  # a trial an earlier run, or another process, finished


def render_trial(console: Console, result: TrialResult, outcome: SweepResult) -> None:
    """One line as `result` ends: the trial's number in the sweep, its status (`skipped (already
    done)` for one an earlier run finished), its swept values, its best value, its error."""
    number, total = outcome.number_of(result.trial), outcome.total or len(outcome.trials)
    value = f"  best {outcome.metric} {result.value:.4g}" if result.value is not None else ""
    why = f"  {escape(result.error)}" if result.error else ""
    style = _STYLE.get(result.status, "")
    status = _SKIPPED if result.status == "SKIPPED" else result.status
    console.print(
        f"trial {number or '?'}/{total} [{style}]{status}[/]  {escape(result.trial.label)}{value}{why}",
        soft_wrap=True,
        highlight=False,
    )


def tally_line(outcome: SweepResult) -> str:
    """`6 trials: 2 ran (1 FINISHED, 1 FAILED), 4 skipped (already done)`: how every trial ended."""
    counts = outcome.tally()
    skipped = counts.pop("SKIPPED", 0)
    ran = sum(counts.values())
    total = outcome.total or len(outcome.trials) or len(outcome.results)
    line = f"{total:,} trial{'s' * (total != 1)}: {ran:,} ran"
    if ran:
        line += " (" + ", ".join(f"{counts[name]:,} {name}" for name in _ORDER if counts.get(name)) + ")"
    return line + (f", {skipped:,} {_SKIPPED}" if skipped else "")


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
    console.print(tally_line(outcome), soft_wrap=True, highlight=False)
    best = outcome.best
    if best is not None:
        console.print(
            f"best: {escape(best.trial.label)}  {outcome.metric} {best.value:.6g}  (run {best.run_id})",
            soft_wrap=True,
            highlight=False,
        )
    console.print(f"sweep run {outcome.parent_run_id} on {outcome.tracking_uri}", soft_wrap=True, highlight=False)
    if outcome.study:
        console.print(f"study {escape(outcome.study)}", soft_wrap=True, highlight=False)
