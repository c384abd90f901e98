"""`knightctl components [KIND]`: parse, call `plugins.catalog.catalog`, render the list."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from knightctl.cli.common import load_plugins_warned as _load_plugins
from knightctl.cli.common import plugin_settings as _plugin_settings
from knightctl.cli.common import run_library as _run


def _complete_kind(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from knightctl.plugins.catalog import KINDS  # pydantic, which --help does without

    return [CompletionItem(kind) for kind in KINDS if kind.startswith(incomplete)]


@click.command()
@click.argument("kind", required=False, shell_complete=_complete_kind)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON (the keys are in the README).")
def components(kind: str | None, as_json: bool) -> None:
    """List the datasets, layers, losses, optimizers, schedulers and metrics (or only KIND's) with
    their options, defaults and the plugin that registered each."""
    from knightctl.console.core import make_console
    from knightctl.console.listings import render_components
    from knightctl.plugins.catalog import catalog

    system = _load_plugins(_plugin_settings())
    render_components(make_console(), _run(lambda: catalog(system.registry, (kind,) if kind else ())), as_json=as_json)
