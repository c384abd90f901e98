"""`knightctl sweep`: a sweep's trials in parallel worker processes, each an MLflow run nested under one.

The parent run is made (and with it the sqlite store's tables and the experiment) before any
worker starts, so parallel trials never race MLflow's schema creation; it records the sweep's space
and ranking as params and the base spec as artifacts. Each trial is `train()` with the trial's
`--set`s, in one of `workers` processes (spawned, with the cores shared out as each one's torch
threads unless OMP_NUM_THREADS says otherwise, so two workers on two cores do not fight over them;
`threads`, else each trial's train.threads, decides within that, training/threads.py). A trial
that fails ends FAILED and the others go on. As each trial ends, its best value of the metric is
read from its history (sweep/ranking.py ranks by it) and the parent's description shows the
ranking so far. The parent run is found again by the sweep's key (spec digest, trials and
ranking): a rerun skips the trials that already FINISHED under it. At the end the parent holds the
ranked table as its description, a plot of the trials, the best trial as tags and its value as
`sweep/best_METRIC`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from knightctl.errors import Interrupted, KnightctlError, SweepError
from knightctl.plugins.loader import load as load_plugins
from knightctl.plugins.system import PluginSettings
from knightctl.spec.metrics import metric_goal
from knightctl.spec.model import ExperimentSpec, load_spec
from knightctl.spec.monitor import monitor_goal, monitored_metric
from knightctl.sweep.metriccheck import check_metric
from knightctl.sweep.ranking import Goal, SweepResult, TrialResult, best_point
from knightctl.sweep.space import Trial, grid_trials, random_trials, space_axes, sweep_key
from knightctl.tracking.provenance import spec_provenance
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.sweeps import (
    close_parent,
    describe_parent,
    finished_trials,
    metric_history,
    open_parent,
    parent_params,
    record_parent,
    trial_tags,
)
from knightctl.training.threads import check_threads

OnTrial = Callable[[TrialResult, SweepResult], None]  # a trial that ended, and the sweep so far


def sweep(
    spec: str | Path,
    *,
    grid: Sequence[str] = (),
    random: Sequence[str] = (),
    trials: int | None = None,
    seed: int = 0,
    workers: int = 1,
    metric: str | None = None,
    goal: Goal | Literal["auto"] = "auto",
    overrides: Sequence[str] = (),
    device: str | None = None,
    threads: int | str | None = None,
    tracking_uri: str | None = None,
    plugins: PluginSettings | None = None,
    skip_gradcheck: bool = False,
    on_trial: OnTrial | None = None,
) -> SweepResult:
    """Run every trial of the sweep over `spec` (a grid, or `trials` random draws), `workers` at a time;
    each trial with `threads` torch threads (None: its spec's train.threads, training/threads.py)."""
    check_threads(threads)
    space = _trials(grid, random, trials, seed)
    base = load_spec(spec, overrides, plugins=plugins)
    # Every trial's values checked as --set checks them, and the metric against what every trial
    # logs, before anything runs or is made.
    specs = [(trial.label, load_spec(spec, [*overrides, *trial.overrides], plugins=plugins)) for trial in space]
    metric, goal = ranking_of(base, metric, goal, plugins)
    check_metric(metric, [("", base), *specs], plugins)
    uri, _ = resolve_tracking_uri(tracking_uri, base)
    client, outcome = _open_parent(base, space, uri, metric, goal)
    job = {
        "spec": str(spec),
        # Each trial's model of record is its best step by the metric the sweep ranks by, so the
        # weights a trial keeps are those the ranking judged.
        "overrides": [*overrides, f"train.monitor={metric}", f"train.monitor_mode={goal}"],
        "uri": uri,
        "parent": outcome.parent_run_id,
        "device": device,
        "threads": threads,
        "plugins": plugins,
        "skip_gradcheck": skip_gradcheck,
    }
    status = "FAILED"  # until a trial finishes: also if recording the parent fails
    try:
        _record(client, outcome, base, grid, random, seed, overrides)
        pending = _skip_finished(client, outcome, on_trial)
        for result in _run_all(pending, job, workers):
            _add(client, outcome, result, on_trial)
            describe_parent(client, outcome, "RUNNING")  # the ranking so far, on the parent's page
        status = "FINISHED" if any(r.status in ("FINISHED", "SKIPPED") for r in outcome.results) else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise Interrupted(
            f"SIGINT: sweep stopped after {len(outcome.results)} of {len(space)} trials; MLflow run "
            f"{outcome.parent_run_id} marked KILLED",
            run_id=outcome.parent_run_id,
            hint="run the same command again: trials that finished are skipped",
        ) from None
    finally:
        close_parent(client, outcome, status)
    return outcome


def ranking_of(
    spec: ExperimentSpec, metric: str | None, goal: Goal | Literal["auto"], plugins: PluginSettings | None = None
) -> tuple[str, Goal]:
    """The metric the sweep ranks by and its goal: as given, or (None, auto) the spec's own
    `train.monitor` and `train.monitor_mode`, by the rule that picks a run's model of record (a
    registered metric's declared goal first)."""
    own = monitored_metric(spec, has_validation=spec.data.val_fraction > 0)
    metric = metric or own
    if goal == "auto":
        declared = metric_goal(metric, load_plugins(plugins, files=spec.plugin_paths()).registry)
        goal = monitor_goal(metric, spec.train.monitor_mode if metric == own else "auto", declared)
    return metric, goal


def _open_parent(
    base: ExperimentSpec, space: list[Trial], uri: str, metric: str, goal: Goal
) -> tuple[Any, SweepResult]:
    """The client and the sweep's outcome so far: its parent run, new or reopened, and no results yet."""
    client, parent_id, experiment_id = open_parent(
        uri,
        base.tracking.experiment or base.name,
        f"{base.name} sweep",
        sweep_key(base.digest(), space, metric, goal),
        len(space),
        spec_provenance(base, base.name),
    )
    outcome = SweepResult(parent_id, uri, metric, goal, trials=space, spec_name=base.name, experiment_id=experiment_id)
    return client, outcome


def _record(
    client: Any,
    outcome: SweepResult,
    base: ExperimentSpec,
    grid: Sequence[str],
    random: Sequence[str],
    seed: int,
    overrides: Sequence[str],
) -> None:
    """The sweep's space, how its trials are made and ranked, and its base spec, on the parent run."""
    outcome.axes = space_axes(grid, random)
    params = parent_params(
        base,
        outcome.axes,
        sampler="grid" if grid else "random",
        metric=outcome.metric,
        goal=outcome.goal,
        trials=len(outcome.trials),
        seed=None if grid else seed,  # a grid draws nothing
        overrides=overrides,
    )
    record_parent(client, outcome, params, base)


def _skip_finished(client: Any, outcome: SweepResult, on_trial: OnTrial | None) -> list[Trial]:
    """The trials still to run; those an earlier run of the sweep finished are added as SKIPPED."""
    finished = finished_trials(client, outcome.parent_run_id)
    for trial in outcome.trials:
        if trial.key in finished:
            _add(client, outcome, TrialResult(trial, "SKIPPED", finished[trial.key], None), on_trial)
    return [trial for trial in outcome.trials if trial.key not in finished]


def _add(client: Any, outcome: SweepResult, result: TrialResult, on_trial: OnTrial | None) -> None:
    """`result` with its best value of the metric (read from its run's history), told to `on_trial`."""
    if result.status in ("FINISHED", "SKIPPED") and result.run_id:
        point = best_point(metric_history(client, result.run_id, outcome.metric), outcome.goal)
        if point is not None:
            result = replace(result, value=point[0], step=point[1])
    outcome.results.append(result)
    if on_trial:
        on_trial(result, outcome)


def _trials(grid: Sequence[str], random: Sequence[str], count: int | None, seed: int) -> list[Trial]:
    if bool(grid) == bool(random):
        raise SweepError("give --grid options or --random options (with --trials), not both and not neither")
    if random:
        if not count or count < 1:
            raise SweepError("--random needs --trials N (how many draws)")
        return random_trials(random, count, seed)
    return grid_trials(grid)


def _run_all(trials: list[Trial], job: dict[str, Any], workers: int) -> Any:
    """Yield each trial's result as it ends, with `workers` trials at a time in spawned processes."""
    if not trials:
        return
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with ProcessPoolExecutor(
        max_workers=min(workers, len(trials)),
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(threads,),
    ) as pool:
        running: set[Future[TrialResult]] = {pool.submit(_run_trial, trial, job) for trial in trials}
        try:
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        except KeyboardInterrupt:  # the workers got the signal too: their trials stop and end KILLED
            for future in running:
                future.cancel()
            raise


def _start_worker(threads: int) -> None:
    """Each worker's share of the cores; Ctrl-C reaches a trial only inside its loop (which then
    stops at the step's end with a checkpoint), so an idle worker does not die with a traceback."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_trial(trial: Trial, job: dict[str, Any]) -> TrialResult:
    """One trial, in a worker: `train()` with the trial's --sets, tagged as a child of the sweep's run."""
    from knightctl.training.run import train  # torch: the workers train, the sweep's own process never does

    tags = trial_tags(job["parent"], trial.key, trial.overrides, trial.label)
    try:
        result = train(
            job["spec"],
            overrides=[*job["overrides"], *trial.overrides],
            tracking_uri=job["uri"],
            device=job["device"],
            threads=job["threads"],
            plugins=job["plugins"],
            skip_gradcheck=job["skip_gradcheck"],
            tags=tags,
        )
    except KnightctlError as error:
        status = "KILLED" if isinstance(error, Interrupted) else "FAILED"
        # Every line: a spec error's first line only counts its problems ("spec.yaml: 1 problem").
        why = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        return TrialResult(trial, status, getattr(error, "run_id", None), None, why)
    except KeyboardInterrupt:
        return TrialResult(trial, "KILLED", None, None, "interrupted")
    return TrialResult(trial, "FINISHED", result.run_id, None)  # its best value: read by the parent (`_add`)
