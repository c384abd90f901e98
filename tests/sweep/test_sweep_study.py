"""Sweeps on an Optuna study: processes share it without running a trial twice, a pruner stops a
trial that lags, a stopped study goes on, and a stale trial is failed and queued again. Real
`knightctl sweep` processes and real sqlite files (MLflow's and Optuna's)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from processes import start_knightctl

from knightctl.errors import Interrupted, SweepError
from knightctl.sweep import study as study_module
from knightctl.sweep.run import sweep
from knightctl.sweep.space import grid_trials, space_axes
from knightctl.sweep.study import open_study

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
QUICK = ["train.epochs=4", "tracking.log_model=false"]


def _children(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.mark.slow
def test_two_processes_on_one_study_run_each_point_of_a_four_point_grid_once_under_one_parent(tmp_path: Path) -> None:
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    sets = [arg for item in QUICK for arg in ("--set", item)]
    command = ["sweep", str(ROUND_TABLE), "--grid", "optimizer.lr=0.1,0.01", "--grid", "train.batch_size=full,64"]
    command += ["--study", "shared", "--storage", storage, "--tracking-uri", uri, "--skip-gradcheck", *sets]
    processes = [start_knightctl(*command, cwd=tmp_path) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the last process out closed it
    children = _children(client, parents[0].info.run_id)
    assert len(children) == len(runs) - 1 == 4  # every trial run nested under the one parent
    points = sorted(run.data.tags["knightctl.trial.overrides"] for run in children)
    assert points == sorted("\n".join(trial.overrides) for trial in grid_trials(command[3:6:2]))  # each once
    assert {run.data.tags["knightctl.trial.study"] for run in children} == {"shared"}
    study = optuna.load_study(study_name="shared", storage=storage)
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 4  # no trial voided, none run twice
    assert study.user_attrs["knightctl.parent_run_id"] == parents[0].info.run_id
    ran = [out.count(" FINISHED  ") for out, _ in outputs]
    assert sum(ran) == 4, outputs  # each trial trained by one process or the other


@pytest.mark.slow
def test_a_study_stopped_by_ctrl_c_goes_on_where_it_stood_and_prunes_a_trial_that_lags_the_median(
    tmp_path: Path,
) -> None:
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    options = dict(
        grid=["optimizer.lr=0.1,0.05,0.0001"],  # the last barely moves: behind the first two at every step
        prune="median",
        study="s",
        storage=storage,
        tracking_uri=uri,
        skip_gradcheck=True,
        overrides=["train.epochs=10", "train.eval_every_n_epochs=1", "tracking.log_model=false"],
    )

    def interrupt(result, so_far):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt  # Ctrl-C in the sweep's own process, as the first trial ends

    with pytest.raises(Interrupted, match="the study goes on"):
        sweep(ROUND_TABLE, on_trial=interrupt, **options)  # type: ignore[arg-type]
    client = MlflowClient(uri)
    (parent,) = [r for r in client.search_runs(["1"]) if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"

    outcome = sweep(ROUND_TABLE, **options)  # type: ignore[arg-type]
    assert outcome.parent_run_id == parent.info.run_id
    statuses = {result.trial.label: result.status for result in outcome.results}
    assert statuses == {"lr=0.1": "SKIPPED", "lr=0.05": "FINISHED", "lr=0.0001": "PRUNED"}
    assert len(_children(client, parent.info.run_id)) == 3
    reopened = client.get_run(parent.info.run_id)
    assert reopened.info.status == "FINISHED"
    assert "| FINISHED (earlier run or another process) |" in reopened.data.tags["mlflow.note.content"]
    pruned = next(result for result in outcome.results if result.status == "PRUNED")
    run = client.get_run(pruned.run_id)
    assert run.info.status == "FINISHED"  # pruned is no failure
    assert run.data.tags["knightctl.trial.pruned"].startswith("pruned by the median pruner: val/loss ")
    first = run.data.tags["mlflow.note.content"].splitlines()[0]
    assert first.startswith("FINISHED after ") and ", stopped early at epoch " in first and " of 10:" in first
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    with pytest.raises(SweepError, match="study 's' in .* was made for another sweep: its space is "):
        sweep(ROUND_TABLE, **{**options, "grid": ["optimizer.lr=0.5,0.6"]})  # type: ignore[arg-type]


def test_a_trial_whose_process_stopped_beating_is_failed_and_queued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_module, "GRACE_S", 2)
    grid = ["optimizer.lr=0.1,0.2"]
    options = dict(
        axes=space_axes(grid, ()), sampler="grid", seed=0, budget=2, grid=grid_trials(grid), identity={}, goal="min"
    )
    first = open_study(f"sqlite:///{tmp_path}/optuna.db", "s", **options)  # type: ignore[arg-type]
    claim = first.claim()
    assert claim is not None and claim.trial.overrides == ("optimizer.lr=0.1",)
    time.sleep(1.5)  # a beat or two, then the process "dies": its beats stop
    first.close()
    time.sleep(2.5)
    later = open_study(f"sqlite:///{tmp_path}/optuna.db", "s", **options)  # type: ignore[arg-type]
    assert later.requeue_unfinished() == [claim.number]
    states = [(t.number, t.state.name, t.user_attrs.get("knightctl.retry_of")) for t in later.study.trials]
    assert states == [(0, "FAIL", None), (1, "WAITING", 0)]
    again = later.claim()  # the stale point first, then the one never claimed, then nothing
    assert again is not None and again.trial.overrides == ("optimizer.lr=0.1",) and again.retry_of == 0
    rest = later.claim()
    assert rest is not None and rest.trial.overrides == ("optimizer.lr=0.2",)
    assert later.claim() is None
    later.close()
