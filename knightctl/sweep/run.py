"""`knightctl sweep`: a sweep's trials in parallel worker processes, each an MLflow run nested under one.

The parent run is made (and with it the sqlite store's tables and the experiment) before any
worker starts, so parallel trials never race MLflow's schema creation. Each trial is `train()`
with the trial's `--set`s, in one of `workers` processes (spawned, one torch thread each unless
OMP_NUM_THREADS says otherwise, so two workers on two cores do not fight over them). A trial
that fails ends FAILED and the others go on. The parent run is found again by the sweep's key
(spec digest and trials): a rerun skips the trials that already FINISHED under it. At the end the
parent holds the best value (`best/METRIC`), the best run's id and trial, and a ranked table as
its description.
"""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from knightctl.errors import Interrupted, KnightctlError, SweepError
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import load_spec
from knightctl.sweep.space import Trial, grid_trials, random_trials, sweep_key
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.sweeps import close_parent, finished_trials, open_parent, trial_tags


@dataclass(frozen=True)
class TrialResult:
    trial: Trial
    status: str  # FINISHED, FAILED, KILLED; or SKIPPED: finished by an earlier run of the same sweep
    run_id: str | None
    value: float | None  # the ranking metric's last value
    error: str | None = None


@dataclass
class SweepResult:
    parent_run_id: str
    tracking_uri: str
    metric: str
    goal: Literal["min", "max"]
    results: list[TrialResult] = field(default_factory=list)

    def ranked(self) -> list[TrialResult]:
        """Trials with a value, best first; then those without."""
        scored = [r for r in self.results if r.value is not None and math.isfinite(r.value)]
        scored.sort(key=lambda r: r.value if self.goal == "min" else -r.value)  # type: ignore[operator]
        return scored + [r for r in self.results if r not in scored]

    @property
    def best(self) -> TrialResult | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].value is not None else None


def sweep(
    spec: str | Path,
    *,
    grid: Sequence[str] = (),
    random: Sequence[str] = (),
    trials: int | None = None,
    seed: int = 0,
    workers: int = 1,
    metric: str = "val/loss",
    goal: Literal["min", "max"] = "min",
    overrides: Sequence[str] = (),
    device: str | None = None,
    tracking_uri: str | None = None,
    plugins: PluginSettings | None = None,
    skip_gradcheck: bool = False,
    on_trial: Callable[[TrialResult, int, int], None] | None = None,
) -> SweepResult:
    """Run every trial of the sweep over `spec` (a grid, or `trials` random draws), `workers` at a time."""
    space = _trials(grid, random, trials, seed)
    base = load_spec(spec, overrides, plugins=plugins)
    for trial in space:  # every trial's values checked as --set checks them, before anything runs
        load_spec(spec, [*overrides, *trial.overrides], plugins=plugins)
    uri, _ = resolve_tracking_uri(tracking_uri, base)
    client, parent_id = open_parent(
        uri, base.tracking.experiment or base.name, f"{base.name} sweep", sweep_key(base.digest(), space), len(space)
    )
    outcome = SweepResult(parent_id, uri, metric, goal)
    finished = {
        key: TrialResult(Trial(overrides), "SKIPPED", run_id, value)
        for key, (overrides, run_id, value) in finished_trials(client, parent_id, metric).items()
    }
    outcome.results += [finished[t.key] for t in space if t.key in finished]
    pending = [t for t in space if t.key not in finished]
    for result in outcome.results:
        if on_trial:
            on_trial(result, len(outcome.results), len(space))
    job = {
        "spec": str(spec),
        "overrides": list(overrides),
        "uri": uri,
        "parent": parent_id,
        "device": device,
        "plugins": plugins,
        "skip_gradcheck": skip_gradcheck,
        "metric": metric,
    }
    status = "FAILED"
    try:
        for result in _run_all(pending, job, workers):
            outcome.results.append(result)
            if on_trial:
                on_trial(result, len(outcome.results), len(space))
        status = "FINISHED" if any(r.status in ("FINISHED", "SKIPPED") for r in outcome.results) else "FAILED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise Interrupted(
            f"SIGINT: sweep stopped after {len(outcome.results)} of {len(space)} trials; MLflow run {parent_id} marked "
            "KILLED",
            run_id=parent_id,
            hint="run the same command again: trials that finished are skipped",
        ) from None
    finally:
        _close(client, outcome, status)
    return outcome


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
            plugins=job["plugins"],
            skip_gradcheck=job["skip_gradcheck"],
            tags=tags,
        )
    except KnightctlError as error:
        status = "KILLED" if isinstance(error, Interrupted) else "FAILED"
        return TrialResult(trial, status, getattr(error, "run_id", None), None, str(error).splitlines()[0])
    except KeyboardInterrupt:
        return TrialResult(trial, "KILLED", None, None, "interrupted")
    return TrialResult(trial, "FINISHED", result.run_id, result.final_metrics.get(job["metric"]))


def _close(client: Any, outcome: SweepResult, status: str) -> None:
    """The parent run closed with the ranked table, the best trial and `status`."""
    best = outcome.best
    chosen = (
        (best.run_id or "", best.trial.overrides, best.value) if best is not None and best.value is not None else None
    )
    close_parent(client, outcome.parent_run_id, status, _table(outcome, outcome.ranked()), outcome.metric, chosen)


def _table(outcome: SweepResult, ranked: list[TrialResult]) -> str:
    lines = [
        f"### Sweep: {len(ranked)} trials, ranked by {outcome.metric} ({outcome.goal})",
        "",
        f"| # | trial | {outcome.metric} | status | run |",
        "|---|---|---|---|---|",
    ]
    for place, result in enumerate(ranked, start=1):
        value = f"{result.value:.6g}" if result.value is not None else "-"
        lines.append(f"| {place} | {result.trial.label} | {value} | {result.status} | {result.run_id or '-'} |")
    return "\n".join(lines) + "\n"
