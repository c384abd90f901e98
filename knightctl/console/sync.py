"""`knightctl sync` on screen: what was delivered, which stale runs were closed, and what still waits."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from knightctl.tracking.offline.sync import describe_pending

if TYPE_CHECKING:
    from knightctl.tracking.offline.sync import SyncReport


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def render_sync(console: Console, report: SyncReport) -> None:
    """A line per kind of outcome; pending journals each with why, and what to do next."""

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    if report.delivered:
        held = ", ".join(
            [
                _counted(report.metrics, "metric"),
                _counted(report.artifacts, "artifact"),
                _counted(report.tags, "tag"),
                _counted(report.statuses, "run status"),
            ]
        )
        say(f"delivered {_counted(len(report.delivered), 'journal')} ({held}): {escape(', '.join(report.delivered))}")
    for stale in report.killed:
        say(
            f"marked KILLED: run {stale.run_id} on {escape(stale.tracking_uri)} (its process {stale.pid} on "
            f"{escape(stale.host)} is gone)"
        )
    for pending in report.pending:
        say(f"[bold yellow]still waiting:[/] {escape(describe_pending(pending))}")
    if report.pending:
        say("run `knightctl sync` again once the store is back")
    elif not report.delivered and not report.killed:
        say("nothing to sync: no journal waiting, no stale run")
