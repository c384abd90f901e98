"""`knightctl gradcheck`: parse the options, call `gradcheck.run.gradcheck`, render the verdicts."""

from __future__ import annotations

import sys

import click

from knightctl.cli.common import SET_HELP as _SET_HELP
from knightctl.cli.common import load_plugins_warned as _load_plugins
from knightctl.cli.common import plugin_settings as _plugin_settings
from knightctl.cli.common import run_library as _run
from knightctl.cli.completion import complete_device, complete_op, complete_spec


@click.command()
@click.argument("ops", nargs=-1, metavar="[OPS]...", shell_complete=complete_op)
@click.option(
    "--spec",
    type=click.Path(dir_okay=False),
    shell_complete=complete_spec,
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
    shell_complete=complete_device,
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
