"""`knightctl sweep`: trials drawn as --sets, run in parallel worker processes on one real sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from knightctl.errors import SpecError, SweepError
from knightctl.sweep.run import sweep
from knightctl.sweep.space import check_draws, grid_trials
from knightctl.tracking.tags import PARENT_TAG

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
EPOCHS = 6
STEPS = {"full": EPOCHS, "64": EPOCHS * 13}  # 800 training rows: one batch, or 13 of 64


def test_a_grid_is_every_combination_in_order_and_keeps_bracketed_values_whole() -> None:
    trials = grid_trials(["optimizer.lr=0.1,0.01", "optimizer.betas=[0.9, 0.99],[0.8, 0.9]"])
    assert [t.overrides for t in trials] == [
        ("optimizer.lr=0.1", "optimizer.betas=[0.9, 0.99]"),
        ("optimizer.lr=0.1", "optimizer.betas=[0.8, 0.9]"),
        ("optimizer.lr=0.01", "optimizer.betas=[0.9, 0.99]"),
        ("optimizer.lr=0.01", "optimizer.betas=[0.8, 0.9]"),
    ]
    assert len({t.key for t in trials}) == 4 and trials[0].label == "lr=0.1 betas=[0.9, 0.99]"


def test_every_distribution_reads_and_a_path_given_twice_is_refused() -> None:
    check_draws(["optimizer.lr=loguniform:1e-4:1e-1", "train.batch_size=choice:32,64", "train.epochs=int:2:5"])
    with pytest.raises(SweepError, match="a path given twice: optimizer.lr"):
        check_draws(["optimizer.lr=uniform:0:1", "optimizer.lr=uniform:0:2"], "--tpe")


@pytest.mark.parametrize(
    ("grid", "random", "message"),
    [
        ([], [], "one kind, not several or none"),
        (["optimizer.lr=0.1"], ["optimizer.lr=uniform:0:1"], "one kind, not several or none"),
        ([], ["optimizer.lr=gauss:0:1"], "unknown distribution 'gauss'"),
        ([], ["optimizer.lr=loguniform:0:1"], "both above 0"),
        (["optimizer.lr"], [], "expected PATH=VALUES"),
    ],
)
def test_a_bad_sweep_option_is_an_error_naming_it(grid: list[str], random: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        sweep(ROUND_TABLE, grid=grid, random=random, trials=2, tracking_uri="sqlite:///unused.db")
    assert not Path("unused.db").exists() and not Path("optuna.db").exists()


def test_a_bad_value_in_any_trial_is_the_spec_error_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="optimizer.lr"):
        sweep(ROUND_TABLE, grid=["optimizer.lr=0.1,-1"], tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_four_trials_on_two_workers_store_every_trial_and_metric_and_the_failed_rank_last(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    options = dict(
        grid=["optimizer.lr=0.1,1e30", "train.batch_size=full,64"],
        workers=2,
        tracking_uri=uri,
        skip_gradcheck=True,
        overrides=[f"train.epochs={EPOCHS}", "train.log_every_n_steps=1", "tracking.log_model=false"],
    )
    seen: list[str] = []
    outcome = sweep(
        ROUND_TABLE,
        on_trial=lambda result, so_far: seen.append(f"{len(so_far.results)}/{len(so_far.trials)} {result.status}"),
        **options,
    )
    assert [line.split()[0] for line in seen] == ["1/4", "2/4", "3/4", "4/4"]  # told as each trial ends
    by_status = sorted(r.status for r in outcome.results)
    assert by_status == ["FAILED", "FAILED", "FINISHED", "FINISHED"]  # lr=1e30 diverges; the others go on
    client = MlflowClient(uri)
    parent = client.get_run(outcome.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{outcome.parent_run_id}'"
    )
    assert len(children) == 4
    for child in children:
        batch = "64" if "train.batch_size=64" in child.data.tags["knightctl.trial.overrides"] else "full"
        if child.info.status == "FINISHED":
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/loss")]
            assert sorted(steps) == list(range(1, STEPS[batch] + 1))  # every metric of every trial
        else:
            assert child.info.status == "FAILED" and "optimizer.lr=1e30" in child.data.tags["knightctl.trial.overrides"]
    best = outcome.best
    assert (
        best is not None
        and best.status == "FINISHED"
        and best.value == min(r.value for r in outcome.results if r.value is not None)
    )
    assert parent.info.status == "FINISHED" and parent.data.tags["knightctl.best_run_id"] == best.run_id
    assert parent.data.metrics == {"sweep/best_val_loss": best.value}
    rows = [line for line in parent.data.tags["mlflow.note.content"].splitlines() if line.startswith("| ")][2:]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| -", "| -"]  # the failed ones last, unranked
    assert all(" | - | - | FAILED: " in row for row in rows[2:])  # no value, no step
