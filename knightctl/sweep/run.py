"""`knightctl sweep`: a sweep's trials claimed from an Optuna study and trained in worker processes,
each an MLflow run nested under the study's one parent run.

Everything is checked before anything is made: the space (sweep/space.py), every grid point's
or distribution bound's values as --set checks them, and the metric against what the trials log.
Then the study is opened (sweep/study.py: made, or continued with the trials it holds) and with it
the parent run, which records the sweep's space and ranking as params and the base spec as
artifacts. Failed, interrupted and stale trials are re-queued; then trials are claimed one at a
time, `workers` at once, each trained by `train()` in a spawned process (the cores shared out as
each one's torch threads unless OMP_NUM_THREADS says otherwise; `threads`, else each trial's
train.threads, decides within that, training/threads.py). With a pruner, a trial reports the metric
at each evaluation and ends FINISHED, tagged pruned, when the pruner says so. As each trial ends,
its best value of the metric is read from its history (sweep/ranking.py ranks by it), told to the
study, and the parent's description shows the ranking so far. Trials that other processes or
earlier runs finished are ranked beside this process's as SKIPPED. The last process to end closes
the parent with the ranked table, a plot, and the best trial as tags and `sweep/best_METRIC`.
"""

from __future__ import annotations

import hashlib
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
from knightctl.sweep.space import Axis, Trial, axis_checks, check_draws, grid_trials, space_axes
from knightctl.sweep.study import (
    DEFAULT_STORAGE,
    RUN_ID_ATTR,
    Claim,
    SweepStudy,
    open_study,
    pruning_rule,
    study_key,
    trial_of,
)
from knightctl.tracking.provenance import spec_provenance
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.sweeps import (
    close_parent,
    describe_parent,
    mark_pruned,
    metric_history,
    open_parent,
    parent_params,
    record_parent,
    trial_tags,
)
from knightctl.training.threads import check_threads

OnTrial = Callable[[TrialResult, SweepResult], None]  # a trial that ended, and the sweep so far
Sampler = Literal["grid", "random", "tpe"]


def sweep(
    spec: str | Path,
    *,
    grid: Sequence[str] = (),
    random: Sequence[str] = (),
    tpe: Sequence[str] = (),
    trials: int | None = None,
    seed: int = 0,
    workers: int = 1,
    metric: str | None = None,
    goal: Goal | Literal["auto"] = "auto",
    study: str | None = None,
    storage: str | None = None,
    prune: Literal["none", "median"] = "none",
    prune_warmup: int = 0,
    overrides: Sequence[str] = (),
    device: str | None = None,
    threads: int | str | None = None,
    tracking_uri: str | None = None,
    plugins: PluginSettings | None = None,
    skip_gradcheck: bool = False,
    on_trial: OnTrial | None = None,
) -> SweepResult:
    """Run this process's share of the sweep over `spec`: a grid (`grid`), or `trials` draws of
    distributions by Optuna's random sampler (`random`) or TPE (`tpe`), `workers` at a time, in the
    study `study` of `storage` (default: one named after the spec and the sweep, in optuna.db), which
    other processes may share; pruned by `prune` after each trial's first `prune_warmup` steps; each
    trial with `threads` torch threads (None: its spec's train.threads)."""
    check_threads(threads)
    sampler, options = _sampler_of(grid, random, tpe, trials)
    axes = space_axes(options, ()) if sampler == "grid" else space_axes((), options)
    points = grid_trials(options) if sampler == "grid" else []
    base = load_spec(spec, overrides, plugins=plugins)
    # Every value a trial can take checked as --set checks it, and the metric against what every
    # trial logs, before anything runs or is made.
    checks = points or [Trial((item,)) for item in axis_checks(axes)]
    specs = [(trial.label, load_spec(spec, [*overrides, *trial.overrides], plugins=plugins)) for trial in checks]
    metric, goal = ranking_of(base, metric, goal, plugins)
    check_metric(metric, [("", base), *specs], plugins)
    uri, _ = resolve_tracking_uri(tracking_uri, base)
    name = study or f"{base.name}-{study_key(base.digest(), axes, sampler, metric, goal)}"
    identity = {"sampler": sampler, "space": "; ".join(f"{a.path} {a.describe()}" for a in axes)}
    identity |= {"metric": metric, "goal": goal, "base_digest": base.digest()}
    budget = len(points) if sampler == "grid" else int(trials or 0)
    shared = open_study(
        storage or DEFAULT_STORAGE,
        name,
        axes=axes,
        sampler=sampler,
        seed=seed,
        budget=budget,
        grid=points,
        identity=identity,
        goal=goal,
        pruner=prune,
    )
    client, outcome = _open_parent(base, shared, uri, metric, goal, axes)
    job = {
        "spec": str(spec),
        # Each trial's model of record is its best step by the metric the sweep ranks by, so the
        # weights a trial keeps are those the ranking judged.
        "overrides": [*overrides, f"train.monitor={metric}", f"train.monitor_mode={goal}"],
        "uri": uri,
        "parent": outcome.parent_run_id,
        "study": (shared.url, shared.name, prune, prune_warmup),
        "metric": metric,
        "device": device,
        "threads": threads,
        "plugins": plugins,
        "skip_gradcheck": skip_gradcheck,
    }
    status = "FAILED"  # until a trial finishes: also if recording the parent fails
    try:
        params = parent_params(
            base,
            axes,
            sampler=sampler,
            metric=metric,
            goal=goal,
            trials=budget,
            seed=None if sampler == "grid" else seed,
            overrides=overrides,
            study=(shared.name, shared.url),
        )
        record_parent(client, outcome, params, base)
        shared.requeue_unfinished()
        mine: set[int] = set()
        _add_done(client, outcome, shared, mine, on_trial)
        ending = _run_all(shared, job, workers, outcome)
        try:
            for claim, result in ending:
                mine.add(claim.number)
                _end_trial(client, outcome, shared, claim, result, on_trial)
                describe_parent(client, outcome, "RUNNING")  # the ranking so far, on the parent's page
        finally:
            ending.close()  # stopped here (Ctrl-C, an error): the trials still running are queued again
        _add_done(client, outcome, shared, mine, on_trial)
        scored = ("FINISHED", "SKIPPED", "PRUNED")
        status = "FINISHED" if any(r.status in scored for r in outcome.results) else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise Interrupted(
            f"SIGINT: sweep stopped after {len(outcome.results)} of {budget} trials; its running trials are "
            f"queued again in study {shared.name!r}; MLflow run {outcome.parent_run_id} marked KILLED",
            run_id=outcome.parent_run_id,
            hint="run the same command again: the study goes on from where it stands",
        ) from None
    finally:
        shared.close()
        if shared.others_running():  # another process's trials still run: the last one out closes the parent
            describe_parent(client, outcome, "RUNNING")
        else:
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


def _sampler_of(
    grid: Sequence[str], random: Sequence[str], tpe: Sequence[str], count: int | None
) -> tuple[Sampler, Sequence[str]]:
    given = [(kind, options) for kind, options in (("grid", grid), ("random", random), ("tpe", tpe)) if options]
    if len(given) != 1:
        raise SweepError(
            "give --grid options, or --random or --tpe options (with --trials): one kind, not several or none"
        )
    kind, options = given[0]
    if kind != "grid":
        check_draws(options, f"--{kind}")
        if not count or count < 1:
            raise SweepError(f"--{kind} needs --trials N (how many draws in all)")
    return kind, options  # type: ignore[return-value]


def _open_parent(
    base: ExperimentSpec, shared: SweepStudy, uri: str, metric: str, goal: Goal, axes: Sequence[Axis]
) -> tuple[Any, SweepResult]:
    """The client and the sweep's outcome so far: the study's parent run, made by the process that made
    the study (the others wait for it), and no results yet."""
    existing = shared.parent_run_id or (None if shared.created else shared.wait_for_parent())
    client, parent_id, experiment_id = open_parent(
        uri,
        base.tracking.experiment or base.name,
        f"{base.name} sweep",
        hashlib.sha256(f"{shared.url}\n{shared.name}".encode()).hexdigest()[:16],
        shared.budget,
        spec_provenance(base, base.name),
        existing=existing,
    )
    if parent_id != existing:
        shared.set_parent_run_id(parent_id)
    outcome = SweepResult(
        parent_id,
        uri,
        metric,
        goal,
        trials=list(shared.grid),
        axes=axes,
        spec_name=base.name,
        experiment_id=experiment_id,
        total=shared.budget,
        study=shared.name,
    )
    return client, outcome


def _add_done(client: Any, outcome: SweepResult, shared: SweepStudy, mine: set[int], on_trial: OnTrial | None) -> None:
    """The study's trials that earlier runs or other processes finished (complete or pruned), as SKIPPED."""
    known = {r.number for r in outcome.results}
    for frozen in shared.study.get_trials(deepcopy=False):
        if frozen.number in mine or frozen.number in known or not frozen.state.is_finished():
            continue
        run_id = frozen.user_attrs.get(RUN_ID_ATTR)
        if frozen.state.name in ("COMPLETE", "PRUNED") and run_id:
            trial = trial_of(frozen.params, shared.axes)
            _know(outcome, trial, frozen.number)
            result = _valued(client, outcome, TrialResult(trial, "SKIPPED", run_id, None, number=frozen.number))
            outcome.results.append(result)
            if on_trial:
                on_trial(result, outcome)


def _end_trial(
    client: Any, outcome: SweepResult, shared: SweepStudy, claim: Claim, result: TrialResult, on_trial: OnTrial | None
) -> None:
    """Tell the study and the parent how `claim` ended."""
    if result.run_id:
        claim.optuna_trial.set_user_attr(RUN_ID_ATTR, result.run_id)
    if result.status == "PRUNED" and result.run_id:
        mark_pruned(client, result.run_id, result.error or "pruned")
    result = _valued(client, outcome, result)
    _tell(shared, claim, result, outcome.metric)  # first: whatever happens next, the study knows
    outcome.results.append(result)
    if on_trial:
        on_trial(result, outcome)


def _tell(shared: SweepStudy, claim: Claim, result: TrialResult, metric: str) -> None:
    if result.status == "KILLED":
        shared.requeue(claim)
    elif result.status == "FINISHED" and result.value is not None:
        shared.finish(claim, "complete", result.value)
    elif result.status == "PRUNED":
        shared.finish(claim, "pruned")
    elif result.status == "FINISHED":
        shared.finish(claim, "failed", final=f"it finished without a finite {metric}")
    else:
        shared.finish(claim, "failed")


def _valued(client: Any, outcome: SweepResult, result: TrialResult) -> TrialResult:
    """`result` with its best value of the metric and that value's step, read from its run's history."""
    if result.status in ("FINISHED", "SKIPPED", "PRUNED") and result.run_id:
        point = best_point(metric_history(client, result.run_id, outcome.metric), outcome.goal)
        if point is not None:
            result = replace(result, value=point[0], step=point[1])
    return result


def _know(outcome: SweepResult, trial: Trial, number: int) -> None:
    """A drawn trial joins the sweep's list (in the study's order: the last tie-break); a grid's are all known."""
    if not any(own.key == trial.key for own in outcome.trials):
        outcome.trials = [*outcome.trials, trial]
        outcome.numbers[trial.key] = number


def _run_all(shared: SweepStudy, job: dict[str, Any], workers: int, outcome: SweepResult) -> Any:
    """Yield each claimed trial and its result as it ends, with up to `workers` trials at a time in
    spawned processes; a new trial is claimed whenever one ends, until the study needs no more."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(threads,)
    ) as pool:
        running: dict[Future[TrialResult], Claim] = {}
        try:
            while True:
                while len(running) < workers and (claim := shared.claim()) is not None:
                    _know(outcome, claim.trial, claim.number)
                    running[pool.submit(_run_trial, claim.trial, claim.number, job)] = claim
                if not running:
                    return
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield running.pop(future), future.result()
        except (KeyboardInterrupt, GeneratorExit):  # on Ctrl-C the workers got the signal too: their trials end KILLED
            for future, claim in running.items():
                future.cancel()
                shared.requeue(claim)
            raise


def _start_worker(threads: int) -> None:
    """Each worker's share of the cores; Ctrl-C reaches a trial only inside its loop (which then
    stops at the step's end with a checkpoint), so an idle worker does not die with a traceback."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_trial(trial: Trial, number: int, job: dict[str, Any]) -> TrialResult:
    """One trial, in a worker: `train()` with the trial's --sets, tagged as a child of the sweep's run
    and a trial of its study, reporting to the study's pruner when there is one."""
    from knightctl.training.run import train  # torch: the workers train, the sweep's own process never does

    url, name, prune, warmup = job["study"]
    tags = trial_tags(job["parent"], trial.key, trial.overrides, trial.label, study=name, number=number)
    try:
        rule = pruning_rule(url, name, number, prune, job["metric"], warmup)
        result = train(
            job["spec"],
            overrides=[*job["overrides"], *trial.overrides],
            tracking_uri=job["uri"],
            device=job["device"],
            threads=job["threads"],
            plugins=job["plugins"],
            skip_gradcheck=job["skip_gradcheck"],
            tags=tags,
            stop_rule=rule,
        )
    except KnightctlError as error:
        status = "KILLED" if isinstance(error, Interrupted) else "FAILED"
        # Every line: a spec error's first line only counts its problems ("spec.yaml: 1 problem").
        why = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
        return TrialResult(trial, status, getattr(error, "run_id", None), None, why, number=number)
    except KeyboardInterrupt:
        return TrialResult(trial, "KILLED", None, None, "interrupted", number=number)
    if rule is not None and rule.reason:
        return TrialResult(trial, "PRUNED", result.run_id, None, rule.reason, number=number)
    return TrialResult(trial, "FINISHED", result.run_id, None, number=number)  # its best value: read by `_add`
