"""`knightctl runs`, `runs compare`, `sync` and `ui`: the commands that read, mend and show runs in a store."""

from __future__ import annotations

import sys

import click

from knightctl.cli.common import run_library as _run

_URI_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)."


@click.group(invoke_without_command=True)
@click.option("--tracking-uri", default=None, metavar="URI", help=_URI_HELP)
@click.option("--experiment", default=None, metavar="NAME", help="Only the runs of experiment NAME.")
@click.option(
    "--limit",
    type=click.IntRange(1, 50000),
    default=20,
    metavar="N",
    show_default=True,
    help="Show at most this many runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.pass_context
def runs(ctx: click.Context, tracking_uri: str | None, experiment: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first: status, device, key metrics, gradcheck verdict, duration."""
    if ctx.invoked_subcommand is not None:  # its options are read by the subcommand
        return
    from knightctl.console.core import make_console
    from knightctl.console.runs import render_runs
    from knightctl.tracking.runlist import list_runs

    render_runs(
        make_console(), _run(lambda: list_runs(tracking_uri, experiment=experiment, limit=limit)), as_json=as_json
    )


@runs.command()
@click.argument("run_a")
@click.argument("run_b")
@click.option("--tracking-uri", default=None, metavar="URI", help=_URI_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.pass_context
def compare(ctx: click.Context, run_a: str, run_b: str, tracking_uri: str | None, as_json: bool) -> None:
    """Compare two runs (each a run id, a unique id prefix or a run name): differing params, final metrics."""
    from knightctl.console.core import make_console
    from knightctl.console.runs import render_comparison
    from knightctl.tracking.runlist import compare_runs

    group = ctx.parent.params if ctx.parent else {}  # `knightctl runs --tracking-uri URI compare ...` works too
    uri = tracking_uri or group.get("tracking_uri")
    render_comparison(
        make_console(), _run(lambda: compare_runs(uri, run_a, run_b)), as_json=as_json or bool(group.get("as_json"))
    )


@click.command()
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="Deliver every journal to URI instead of the store it names, and look for stale runs there (default: each "
    "journal's store, and MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
)
@click.option(
    "--journal-dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="Where the journals are (default: .knightctl/journal here).",
)
def sync(tracking_uri: str | None, journal_dir: str | None) -> None:
    """Deliver what runs journaled while their tracking server was away; mark stale RUNNING runs KILLED.
    Exit 1 if anything still waits."""
    from pathlib import Path

    from knightctl.console.core import make_console
    from knightctl.console.sync import render_sync
    from knightctl.tracking.offline.sync import sync as sync_journals

    report = _run(lambda: sync_journals(tracking_uri, Path(journal_dir) if journal_dir else None))
    render_sync(make_console(), report)
    if not report.complete:
        sys.exit(1)


@click.command()
@click.option("--tracking-uri", default=None, metavar="URI", help=_URI_HELP)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    metavar="HOST",
    help="Interface to bind; anything but 127.0.0.1 exposes the UI (and every run) to the network.",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=5000, show_default=True, metavar="PORT", help="Port to listen on."
)
def ui(tracking_uri: str | None, host: str, port: int) -> None:
    """Serve MLflow's UI on the store, in the foreground until Ctrl-C."""
    from knightctl.console.core import make_console
    from knightctl.tracking.run import resolve_tracking_uri
    from knightctl.tracking.ui import GENAI_HINT, check_servable, experiment_links, serve_ui

    uri, _ = resolve_tracking_uri(tracking_uri)
    _run(lambda: check_servable(uri))
    address = f"[{host}]" if ":" in host else host
    base = f"http://{address}:{port}/"
    links = _run(lambda: experiment_links(uri, base))
    console = make_console(stderr=True)
    lines = [f"MLflow UI for {uri} at {base} (Ctrl-C stops it)", *(f"  {name}: {link}" for name, link in links)]
    for line in [*lines, GENAI_HINT]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    sys.exit(_run(lambda: serve_ui(uri, host, port)))  # 130 / 143 when stopped by Ctrl-C / SIGTERM
