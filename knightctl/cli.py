"""The `knightctl` command: parse options, call one library function, render, map errors to exit codes.

Heavy modules (torch, mlflow, pydantic, rich) are imported inside the commands, so `--help`
stays instant.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable, NoReturn

import click

from knightctl._version import __version__
from knightctl.errors import KnightctlError, Terminated

_SET_HELP = "Override a spec value, PATH=VALUE (e.g. optimizer.lr=0.01, model.0.out_features=8); repeatable."


def _fail(error: BaseException, code: int) -> NoReturn:
    from knightctl.console import make_console, render_error

    render_error(make_console(stderr=True), error)
    sys.exit(code)


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _run(action: Callable[[], Any]) -> Any:
    """Call the library; a KnightctlError becomes its message and exit code, never a traceback.

    SIGTERM is raised as `Terminated` (a KeyboardInterrupt) so that it closes a run like Ctrl-C.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return action()
    except KnightctlError as error:
        _fail(error, error.exit_code)
    except KeyboardInterrupt as interrupt:
        _fail(KnightctlError("interrupted"), 143 if isinstance(interrupt, Terminated) else 130)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="knightctl")
def main() -> None:
    """knightctl: train experiments from YAML specs, with plugin autograd ops, tracked in MLflow."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
@click.option("--device", default=None, metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps (default: the spec's train.device).")
@click.option("--tracking-uri", default=None, metavar="URI", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, the spec, then sqlite:///mlflow.db).")
@click.option("--no-track", is_flag=True, help="Train without MLflow.")
@click.option("--deterministic", is_flag=True, default=None, help="Use deterministic algorithms only (slower on CUDA).")
def train(spec: str, overrides: tuple[str, ...], device: str | None, tracking_uri: str | None, no_track: bool, deterministic: bool | None) -> None:
    """Train the experiment in SPEC and log it to MLflow."""
    from knightctl.console import ProgressObserver, make_console, render_summary
    from knightctl.training import train as train_experiment

    console = make_console()
    progress = ProgressObserver(console)
    try:
        result = _run(lambda: train_experiment(spec, overrides=overrides, device=device, tracking_uri=tracking_uri, track=not no_track, deterministic=deterministic, observers=[progress]))
    finally:
        progress.close()
    render_summary(console, result)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE", help=_SET_HELP)
def validate(spec: str, overrides: tuple[str, ...]) -> None:
    """Check SPEC without running it: print the resolved spec, or every error with its place."""
    from knightctl.console import make_console, render_spec
    from knightctl.spec import load_spec

    render_spec(make_console(), _run(lambda: load_spec(spec, overrides)))


if __name__ == "__main__":
    main()
