"""What every command shares: the library call that maps errors to exit codes, and the plugin settings."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from knightctl.cli.completion import complete_device
from knightctl.distributed.jobs import LAUNCHED_ENV
from knightctl.errors import KnightctlError, Terminated

SET_HELP = "Override a spec value, PATH=VALUE (e.g. optimizer.lr=0.01, model.0.out_features=8); repeatable."

# The options `train` and `sweep` share, spelled once.
device_option = click.option(
    "--device",
    default=None,
    metavar="DEVICE",
    shell_complete=complete_device,
    help="auto, cpu, cuda, cuda:N or mps (default: the spec's train.device).",
)
run_tracking_uri_option = click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the spec, then sqlite:///mlflow.db).",
)


class _Threads(click.ParamType):
    """`auto` or a positive number of threads."""

    name = "threads"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value).strip()
        if text == "auto":
            return text
        if text.isascii() and text.isdigit() and int(text) > 0:
            return int(text)
        self.fail(f"{value!r} is not a positive integer or 'auto'", param, ctx)


threads_option = click.option(
    "--threads",
    type=_Threads(),
    default=None,
    metavar="N|auto",
    help="CPU threads torch trains with (default: the spec's train.threads; auto: one for a small model, else "
    "torch's own count).",
)


def fail(error: BaseException, code: int) -> NoReturn:
    from knightctl.console.core import make_console, render_error

    if not os.environ.get(LAUNCHED_ENV):  # a rank started by `train --nproc-per-node`, which reports the first failure
        render_error(make_console(stderr=True), error)
    sys.exit(code)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def run_library(action: Callable[[], Any]) -> Any:
    """Call the library; a KnightctlError becomes its message and exit code, never a traceback.

    SIGTERM is raised as `Terminated` (a KeyboardInterrupt) so that it closes a run like Ctrl-C.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return action()
    except KnightctlError as error:
        fail(error, error.exit_code)
    except KeyboardInterrupt as interrupt:
        fail(KnightctlError("interrupted"), 143 if isinstance(interrupt, Terminated) else 130)


def plugin_settings() -> Any:
    """The plugin settings: the environment's, with the command line's options on top."""
    from knightctl.plugins.system import PluginSettings

    return PluginSettings.from_env().override(**click.get_current_context().find_root().obj)


def load_plugins_warned(settings: Any) -> Any:
    """Load the plugins (idempotent) and warn about any that failed, before the command goes on."""
    from knightctl.console.core import make_console, render_warnings
    from knightctl.plugins.loader import load

    system = run_library(lambda: load(settings))
    render_warnings(make_console(stderr=True), system.warnings())
    return system
