"""The `knightctl` command: parse options, call one library function, render, map errors to exit codes.

Heavy modules (torch, mlflow, pydantic, rich) are imported inside the commands, so `--help`
stays instant.
"""

from __future__ import annotations

import click

from knightctl._version import __version__
from knightctl.cli.common import SET_HELP as _SET_HELP
from knightctl.cli.common import load_plugins_warned as _load_plugins
from knightctl.cli.common import plugin_settings as _plugin_settings
from knightctl.cli.common import run_library as _run
from knightctl.cli.completion import complete_spec, completion
from knightctl.cli.components import components
from knightctl.cli.gradcheck import gradcheck
from knightctl.cli.inference import evaluate, predict
from knightctl.cli.runs import runs, sync, ui
from knightctl.cli.sweep import sweep
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


for command in (train, gradcheck, runs, sweep, sync, ui, components, predict, evaluate, completion):
    main.add_command(command)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False), shell_complete=complete_spec)
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
def validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC without running it: print the resolved spec, or every error with its place."""
    from knightctl.console.core import make_console, render_spec
    from knightctl.spec.model import load_spec

    settings = _plugin_settings()
    _load_plugins(settings)
    render_spec(make_console(), _run(lambda: load_spec(spec, overrides, plugins=settings)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def ops(as_json: bool) -> None:
    """List the registered ops: plugin, where it came from, what each supports and its options."""
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


if __name__ == "__main__":
    main()
