"""`knightctl runs` and `knightctl runs compare` on screen: tables that read at 80 columns, or JSON.

At 80 columns the runs table holds what tells runs apart (name and id, status, device, the key
metrics, the gradcheck verdict, duration); a wider terminal adds the experiment and start time.
Statuses are coloured on a colour terminal only; with NO_COLOR no style is used at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from knightctl.tracking.runlist import RunComparison, RunSummary

_STATUS_STYLES = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "RUNNING": "cyan"}
# metric key -> column header, in two lines so that three metric columns fit in 80 columns
_METRIC_HEADERS = {"val/accuracy": "val/\naccuracy", "val/loss": "val/\nloss", "train/loss": "train/\nloss"}
_WIDE = 110  # columns from which the runs table adds experiment and start time
_SHORT_ID = 8  # hex digits of a run id shown beside its name


def _print_json(console: Console, data: Any) -> None:
    console.print(json.dumps(data, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)


def significant(value: float | None) -> str:
    """`value` to 4 significant digits (0.6350, 12.35, 1.235e+04); "-" when absent."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    text = f"{value:#.4g}"
    return text.rstrip(".") if "e" not in text else text


def duration(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min; "-" for a run that has not ended."""
    if seconds is None:
        return "-"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def _started(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "-"


def _status(console: Console, status: str) -> str:
    style = None if console.no_color else _STATUS_STYLES.get(status)
    return f"[{style}]{status}[/]" if style else status


def _table(console: Console, title: str | None = None) -> Table:
    """A rule under the headers and two spaces between columns; headers bold unless NO_COLOR."""
    header_style = "" if console.no_color else "bold"
    return Table(
        title=title,
        title_justify="left",
        title_style=header_style,
        header_style=header_style,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )


def _summary_json(run: RunSummary) -> dict[str, Any]:
    data = asdict(run)
    data["start_time"] = run.start_time.isoformat() if run.start_time else None
    return data


def render_runs(console: Console, runs: list[RunSummary], as_json: bool = False) -> None:
    """The runs, newest first: one row each, "-" where a metric or tag is absent."""
    if as_json:
        _print_json(console, [_summary_json(run) for run in runs])
        return
    if not runs:
        console.print("no runs yet", highlight=False)
        return
    wide = console.width >= _WIDE
    table = _table(console)
    table.add_column("run", overflow="fold", min_width=_SHORT_ID)  # the one column that wraps
    if wide:
        table.add_column("experiment", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("device", no_wrap=True)
    for header in _METRIC_HEADERS.values():
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("grad-\ncheck", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    if wide:
        table.add_column("started", no_wrap=True)
    for run in runs:
        cells = [f"{escape(run.run_name)}\n{run.run_id[:_SHORT_ID]}"] + ([escape(run.experiment)] if wide else [])
        cells += [_status(console, run.status), escape(run.device or "-")]
        cells += [significant(run.metrics.get(key)) for key in _METRIC_HEADERS]
        cells += [escape(run.gradcheck_verdict or "-"), duration(run.duration_s)] + (
            [_started(run.start_time)] if wide else []
        )
        table.add_row(*cells)
    console.print(table)


def _run_line(console: Console, label: str, run: RunSummary) -> str:
    facts = [
        run.run_id,
        escape(run.experiment),
        _status(console, run.status),
        escape(run.device or "-"),
        duration(run.duration_s),
    ]
    return f"{label}  {escape(run.run_name)}: " + ", ".join(facts)


def render_comparison(console: Console, comparison: RunComparison, as_json: bool = False) -> None:
    """Which run is A and which B, the params that differ, and every final metric of either."""
    if as_json:
        data = asdict(comparison)
        data["run_a"], data["run_b"] = _summary_json(comparison.run_a), _summary_json(comparison.run_b)
        _print_json(console, data)
        return
    for label, run in (("A", comparison.run_a), ("B", comparison.run_b)):
        console.print(_run_line(console, label, run), highlight=False, soft_wrap=True)
    differing = len(comparison.differing_params)
    heading = f"params: {differing} differ, {comparison.identical_params} identical"
    if differing:
        params = _table(console, heading)
        for header in ("param", "A", "B"):
            params.add_column(header, overflow="fold")
        for row in comparison.differing_params:
            params.add_row(escape(row.key), escape(_param(row.value_a)), escape(_param(row.value_b)))
        console.print(params)
    else:
        console.print(f"\n{heading}", highlight=False)
    metrics = _table(console, "final metrics")
    metrics.add_column("metric", overflow="fold")
    metrics.add_column("A", justify="right", no_wrap=True)
    metrics.add_column("B", justify="right", no_wrap=True)
    for pair in comparison.metrics:
        metrics.add_row(escape(pair.key), significant(pair.value_a), significant(pair.value_b))
    console.print(metrics if comparison.metrics else "\nfinal metrics: neither run logged any", highlight=False)


def _param(value: str | None) -> str:
    return "-" if value is None else value
