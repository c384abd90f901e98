"""The `knightctl` command: parse options, call one library function, render, map errors to exit codes.

Heavy modules (torch, mlflow, pydantic, rich) are imported inside the commands, so `--help`
stays instant.
"""

from __future__ import annotations

import sys

import click

from knightctl._version import __version__
from knightctl.cli.common import SET_HELP as _SET_HELP
from knightctl.cli.common import load_plugins_warned as _load_plugins
from knightctl.cli.common import plugin_settings as _plugin_settings
from knightctl.cli.common import run_library as _run
from knightctl.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="knightctl")
@click.option(
    "--plugins-dir",
    "plugins_dirs",
    multiple=True,
    metavar="DIR",
    help="Load every *.py in DIR as a plugin instead of ./plugins (default: KNIGHTCTL_PLUGINS_DIR); repeatable.",
)
@click.option(
    "--disable-plugin",
    "disabled",
    multiple=True,
    metavar="NAME",
    help="Do not load the plugin NAME (also KNIGHTCTL_DISABLE_PLUGINS=a,b); repeatable.",
)
@click.option(
    "--no-external-plugins",
    is_flag=True,
    help="Load only knightctl's own plugins: no entry points, plugin directories or spec plugins.",
)
@click.option(
    "--strict-plugins",
    is_flag=True,
    help="Make any plugin that fails to load an error (also KNIGHTCTL_STRICT_PLUGINS=1).",
)
@click.pass_context
def main(
    ctx: click.Context,
    plugins_dirs: tuple[str, ...],
    disabled: tuple[str, ...],
    no_external_plugins: bool,
    strict_plugins: bool,
) -> None:
    """knightctl: train experiments from YAML specs, with plugin autograd ops, tracked in MLflow."""
    ctx.obj = {"dirs": plugins_dirs, "disable": disabled, "no_external": no_external_plugins, "strict": strict_plugins}


main.add_command(train)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
def validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC without running it: print the resolved spec, or every error with its place."""
    from knightctl.console.core import make_console, render_spec
    from knightctl.spec.model import load_spec

    settings = _plugin_settings()
    _load_plugins(settings)
    render_spec(make_console(), _run(lambda: load_spec(spec, overrides, plugins=settings)))


@main.command()
@click.argument("ops", nargs=-1, metavar="[OPS]...")
@click.option(
    "--spec",
    type=click.Path(dir_okay=False),
    help="Check the ops SPEC's model uses (on their samples and at the spec's options), and the model with its loss.",
)
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
@click.option(
    "--order",
    type=click.IntRange(1, 5),
    default=None,
    help="Check derivatives up to this order (default: 2, or the op's declared maximum).",
)
@click.option("--exact", "method", flag_value="exact", help="Compare whole Jacobians, whatever their size.")
@click.option("--fast", "method", flag_value="fast", help="Compare random projections of the Jacobians.")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    metavar="DEVICE",
    help="auto, cpu, cuda, cuda:N or mps, resolved as train resolves it (mps has no float64: checked on the CPU).",
)
@click.option(
    "--atol", type=float, default=None, help="Absolute tolerance for every op (default: each op's own, 1e-5)."
)
@click.option(
    "--rtol", type=float, default=None, help="Relative tolerance for every op (default: each op's own, 1e-3)."
)
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON to this file."
)
@click.option(
    "--heatmaps",
    "heatmap_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a PNG heatmap per failing op into this folder.",
)
@click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI for the gradcheck run.")
@click.option("--no-track", is_flag=True, help="Do not log the verdicts to MLflow.")
def gradcheck(
    ops: tuple[str, ...],
    spec: str | None,
    overrides: tuple[str, ...],
    order: int | None,
    method: str | None,
    device: str,
    atol: float | None,
    rtol: float | None,
    json_path: str | None,
    heatmap_dir: str | None,
    tracking_uri: str | None,
    no_track: bool,
) -> None:
    """Check gradients numerically in float64: every op (or OPS), and a spec's model. Exit 1 if any fails."""
    if overrides and spec is None:
        raise click.UsageError("--set overrides a spec value: give the spec with --spec")
    from knightctl.console.core import make_console
    from knightctl.console.gradcheck import render_gradcheck
    from knightctl.gradcheck.run import gradcheck as check_gradients

    settings = _plugin_settings()
    _load_plugins(settings)
    result = _run(
        lambda: check_gradients(
            ops,
            spec=spec,
            overrides=overrides,
            plugins=settings,
            device=device,
            order=order,
            method=method or "auto",
            atol=atol,
            rtol=rtol,
            json_path=json_path,
            heatmap_dir=heatmap_dir,
            track=not no_track,
            tracking_uri=tracking_uri,
        )
    )
    render_gradcheck(make_console(), result)
    if not result.passed:
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ops(as_json: bool) -> None:
    """List the registered ops: plugin, where it came from, and what each supports."""
    from knightctl.console.core import make_console
    from knightctl.console.listings import render_ops
    from knightctl.plugins.opsupport import summarise_ops

    system = _load_plugins(_plugin_settings())
    render_ops(make_console(), summarise_ops(system), as_json=as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def plugins(as_json: bool) -> None:
    """List the plugins in load order: version or file hash, source, hooks, and any that failed."""
    from knightctl.console.core import make_console
    from knightctl.console.listings import render_plugins
    from knightctl.plugins.loader import load

    system = _run(lambda: load(_plugin_settings()))
    render_plugins(make_console(), system, as_json=as_json)


_URI_HELP = "MLflow tracking URI (default: MLFLOW_TRACKING_URI, then sqlite:///mlflow.db)."


@main.group(invoke_without_command=True)
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


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option(
    "--grid",
    "grids",
    multiple=True,
    metavar="PATH=V1,V2,...",
    help="Try each value of a spec path (typed as --set); repeatable: every combination.",
)
@click.option(
    "--random",
    "draws",
    multiple=True,
    metavar="PATH=DIST:ARGS",
    help="Draw a spec path's value: uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH, choice:A,B; repeatable.",
)
@click.option(
    "--trials", type=click.IntRange(1, 100000), default=None, metavar="N", help="How many random draws (with --random)."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random draws (the same seed draws the same trials).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    metavar="N",
    help="Trials run at once, each in its own process.",
)
@click.option(
    "--metric", default="val/loss", show_default=True, metavar="NAME", help="The metric that ranks the trials."
)
@click.option(
    "--goal",
    type=click.Choice(["min", "max"]),
    default="min",
    show_default=True,
    help="Whether the best trial has the lowest or the highest metric.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a spec value for every trial; repeatable."
)
@click.option(
    "--device",
    default=None,
    metavar="DEVICE",
    help="auto, cpu, cuda, cuda:N or mps (default: the spec's train.device).",
)
@click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the spec, then sqlite:///mlflow.db).",
)
@click.option("--skip-gradcheck", is_flag=True, help="Train each trial without checking its ops' gradients first.")
def sweep(
    spec: str,
    grids: tuple[str, ...],
    draws: tuple[str, ...],
    trials: int | None,
    seed: int,
    workers: int,
    metric: str,
    goal: str,
    overrides: tuple[str, ...],
    device: str | None,
    tracking_uri: str | None,
    skip_gradcheck: bool,
) -> None:
    """Train SPEC once per trial of a grid or random search, WORKERS at a time; rank the trials.
    Exit 1 if none finished."""
    from knightctl.console.core import make_console
    from knightctl.console.sweeps import render_sweep, render_trial
    from knightctl.sweep.run import sweep as run_sweep

    settings = _plugin_settings()
    _load_plugins(settings)
    console = make_console()
    outcome = _run(
        lambda: run_sweep(
            spec,
            grid=grids,
            random=draws,
            trials=trials,
            seed=seed,
            workers=workers,
            metric=metric,
            goal=goal,
            overrides=overrides,  # type: ignore[arg-type]
            device=device,
            tracking_uri=tracking_uri,
            plugins=settings,
            skip_gradcheck=skip_gradcheck,
            on_trial=lambda result, done, total: render_trial(console, result, done, total, metric),
        )
    )
    render_sweep(console, outcome)
    if outcome.best is None:
        sys.exit(1)


@main.command()
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


@main.command()
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
    from knightctl.tracking.ui import check_servable, serve_ui

    uri, _ = resolve_tracking_uri(tracking_uri)
    _run(lambda: check_servable(uri))
    address = f"[{host}]" if ":" in host else host
    make_console(stderr=True).print(
        f"MLflow UI for {uri} at http://{address}:{port}/ (Ctrl-C stops it)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(_run(lambda: serve_ui(uri, host, port)))  # 130 / 143 when stopped by Ctrl-C / SIGTERM


if __name__ == "__main__":
    main()
