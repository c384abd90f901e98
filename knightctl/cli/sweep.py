"""`knightctl sweep`: parse the space and the study, call `sweep.run.sweep`, render each trial and the ranking."""

from __future__ import annotations

import sys

import click

from knightctl.cli.common import device_option, run_tracking_uri_option, threads_option
from knightctl.cli.common import load_plugins_warned as _load_plugins
from knightctl.cli.common import plugin_settings as _plugin_settings
from knightctl.cli.common import run_library as _run
from knightctl.cli.completion import complete_spec


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False), shell_complete=complete_spec)
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
    help="Draw a spec path's value at random (Optuna's random sampler): uniform:LOW:HIGH, loguniform:LOW:HIGH, "
    "int:LOW:HIGH, choice:A,B; repeatable.",
)
@click.option(
    "--tpe",
    "tpe_draws",
    multiple=True,
    metavar="PATH=DIST:ARGS",
    help="Draw a spec path's value by Optuna's TPE, which learns from the trials so far (the same forms as "
    "--random); repeatable.",
)
@click.option(
    "--trials",
    type=click.IntRange(1, 100000),
    default=None,
    metavar="N",
    help="How many draws the study holds in all, by every process (with --random or --tpe).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the sampler (with the trial's number: the same seed draws the same trials).",
)
@click.option(
    "--study",
    metavar="NAME",
    help="The Optuna study to run in or continue; processes given the same --study and --storage share its "
    "trials. Default: the spec's name and a digest of the sweep.",
)
@click.option(
    "--storage",
    metavar="URL",
    help="Where the study lives: a SQLAlchemy URL such as postgresql://host/db for processes on several "
    "machines. Default: sqlite:///optuna.db in the working folder.",
)
@click.option(
    "--prune",
    type=click.Choice(["none", "median"]),
    default="none",
    show_default=True,
    help="Stop a trial at an evaluation where its metric is worse than the median of the completed trials' "
    "at that step (after two completed); it ends FINISHED, tagged pruned.",
)
@click.option(
    "--prune-warmup",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    metavar="STEPS",
    help="No trial is pruned before this step (a slow start is not a bad trial).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    metavar="N",
    help="Trials this process runs at once, each in its own process.",
)
@click.option(
    "--metric",
    metavar="NAME",
    help="The metric that ranks the trials, by the best value each trial reached (not its last); each trial "
    "keeps its best step by it as its model. Default: the spec's train.monitor (auto: val/loss).",
)
@click.option(
    "--goal",
    type=click.Choice(["auto", "min", "max"]),
    default="auto",
    show_default=True,
    help="Whether the best trial has the lowest or the highest metric; auto: max for accuracy-like names.",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="PATH=VALUE", help="Override a spec value for every trial; repeatable."
)
@device_option
@threads_option
@run_tracking_uri_option
@click.option("--skip-gradcheck", is_flag=True, help="Train each trial without checking its ops' gradients first.")
def sweep(
    spec: str,
    grids: tuple[str, ...],
    draws: tuple[str, ...],
    tpe_draws: tuple[str, ...],
    trials: int | None,
    seed: int,
    study: str | None,
    storage: str | None,
    prune: str,
    prune_warmup: int,
    workers: int,
    metric: str | None,
    goal: str,
    overrides: tuple[str, ...],
    device: str | None,
    threads: int | str | None,
    tracking_uri: str | None,
    skip_gradcheck: bool,
) -> None:
    """Train SPEC once per trial of a grid, random or TPE search in an Optuna study, WORKERS at a time;
    rank the trials. Several processes, here or on other machines, share a study: each claims trials
    the others have not. Exit 1 if none finished."""
    import optuna

    from knightctl.console.core import make_console
    from knightctl.console.sweeps import render_sweep, render_trial
    from knightctl.sweep.run import sweep as run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's line is ours; Optuna's INFO lines repeat it
    settings = _plugin_settings()
    _load_plugins(settings)
    console = make_console()
    outcome = _run(
        lambda: run_sweep(
            spec,
            grid=grids,
            random=draws,
            tpe=tpe_draws,
            trials=trials,
            seed=seed,
            study=study,
            storage=storage,
            prune=prune,  # type: ignore[arg-type]
            prune_warmup=prune_warmup,
            workers=workers,
            metric=metric,
            goal=goal,
            overrides=overrides,  # type: ignore[arg-type]
            device=device,
            threads=threads,
            tracking_uri=tracking_uri,
            plugins=settings,
            skip_gradcheck=skip_gradcheck,
            on_trial=lambda result, so_far: render_trial(console, result, so_far),
        )
    )
    render_sweep(console, outcome)
    if outcome.best is None:
        sys.exit(1)
