"""`knightctl gradcheck` on screen: a table of verdicts, then what failed, where and by how much.

Every failure is told in one place: the check, the sample, the output and input with the worst
element's multi-dimensional index, the analytic and numeric values, both errors and the tolerance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from knightctl.gradcheck.report import CheckResult, OpReport
    from knightctl.gradcheck.run import GradcheckResult

_MARK = {
    "passed": "[green]ok[/]",
    "failed": "[bold red]FAIL[/]",
    "error": "[bold red]ERROR[/]",
    "unsupported": "[dim]n/a[/]",
    "skipped": "[dim]skip[/]",
}


def _summary(check: CheckResult) -> str:
    method = f" ({check.method})" if check.method and check.status in ("passed", "failed") else ""
    return f"{escape(check.check)} {_MARK[check.status]}{method}"


def render_gradcheck(console: Console, result: GradcheckResult) -> None:
    reports = result.reports
    failed = sum(report.verdict == "failed" for report in reports)
    title = f"gradcheck: {len(reports)} checked, {failed} failed (float64, {reports[0].device if reports else 'cpu'})"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("op", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("checks", ratio=1)  # wraps, so the table reads at 80 columns too
    table.add_column("time", no_wrap=True, justify="right")
    for report in reports:
        verdict = {"failed": "[bold red]FAILED[/]", "passed": "[green]passed[/]"}.get(report.verdict, "[dim]n/a[/]")
        table.add_row(
            escape(report.label),
            verdict,
            ", ".join(_summary(check) for check in report.checks),
            f"{report.seconds:.2f}s",
        )
    console.print(table)
    for report in reports:
        _render_details(console, report)
    if result.json_path:
        console.print(f"JSON report: {result.json_path}")
    for heatmap in result.heatmaps:
        console.print(f"heatmap: {heatmap}")
    if result.run_id:
        console.print(f"MLflow run {result.run_id} on {result.tracking_uri}")


def _render_details(console: Console, report: OpReport) -> None:
    for line in report.explain():
        if line.startswith(" "):  # the worst element beneath a failure
            console.print(line, markup=False, soft_wrap=True)
        else:
            name, rest = line[: len(report.label)], line[len(report.label) :]
            console.print(f"[bold]{escape(name)}[/]{escape(rest)}", soft_wrap=True)
