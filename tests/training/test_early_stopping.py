"""train.early_stopping: the run ends FINISHED once its metric stops improving, says why and where
its best step was, keeps that step as its model of record, and a resumed run stops where an
uninterrupted one would."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from knightctl.errors import ResumeError, SpecError
from knightctl.spec.model import load_spec
from knightctl.training.run import train

ROUND_TABLE = Path(__file__).resolve().parents[2] / "experiments" / "round_table.yaml"
EVERY_EPOCH = ["train.eval_every_n_epochs=1", "train.epochs=300"]  # full batch: one step an epoch


def _train(tmp_path: Path, *sets: str, **options: object):  # noqa: ANN202 - RunResult
    return train(
        ROUND_TABLE,
        overrides=[*EVERY_EPOCH, *sets],
        device="cpu",
        track=False,
        skip_gradcheck=True,
        checkpoint_dir=tmp_path / "checkpoints",
        **options,
    )


def test_training_stops_after_patience_evaluations_without_improvement_and_keeps_the_best_step(
    tmp_path: Path,
) -> None:
    result = _train(tmp_path, "train.early_stopping={patience: 5}")
    assert result.steps < 300 and result.stopped_early is not None
    assert result.stopped_early.startswith(f"stopped early at epoch {result.steps} of 300 (step {result.steps}): ")
    losses = [(step, values["val/loss"]) for step, values in result.history if "val/loss" in values]
    best_step, best_loss = min(losses, key=lambda point: (point[1], point[0]))
    assert result.steps - best_step == 5  # five evaluations after the best, none better
    assert f"val/loss did not improve for 5 evaluations (best {best_loss:.4g} at step {best_step})" in (
        result.stopped_early
    )
    assert result.best is not None and result.best.step == best_step  # the model of record is that step
    assert result.checkpoint is not None and result.checkpoint.name == f"step-{result.steps:09d}.pt"
    assert result.history[-1][0] == result.steps and "train/loss" in result.history[-1][1]  # the last window logged


def test_min_delta_and_a_max_metric(tmp_path: Path) -> None:
    # Accuracy never beats its first value by 2: the first evaluation is the best, then three without.
    result = _train(tmp_path, "train.early_stopping={monitor: val/accuracy, patience: 3, min_delta: 2.0}")
    assert result.steps == 4 and result.stopped_early is not None
    assert "val/accuracy did not improve by more than 2 for 3 evaluations (best " in result.stopped_early
    assert result.best is not None and result.best.metric == "val/loss"  # train.monitor still picks the model


def test_a_run_that_never_runs_out_of_patience_is_not_said_to_stop_early(tmp_path: Path) -> None:
    result = _train(tmp_path, "train.epochs=20", "train.early_stopping={patience: 50}")
    assert result.steps == 20 and result.stopped_early is None


def test_a_resumed_run_stops_where_an_uninterrupted_one_does_and_a_stopped_run_is_not_resumed(
    tmp_path: Path,
) -> None:
    whole = _train(tmp_path / "whole", "train.early_stopping={patience: 5}")
    cut = _train(tmp_path / "cut", "train.early_stopping={patience: 5}", stop_at_step=whole.steps - 3)
    assert cut.checkpoint is not None and cut.stopped_early is None
    resumed = train(resume=cut.checkpoint, device="cpu", track=False, skip_gradcheck=True)
    assert resumed.steps == whole.steps and resumed.stopped_early == whole.stopped_early
    assert resumed.checkpoint is not None
    with pytest.raises(ResumeError, match=r"stopped early at step \d+ \(val/loss had not improved for 5 evaluations"):
        train(resume=resumed.checkpoint, device="cpu", track=False, skip_gradcheck=True)


def test_the_run_ends_finished_and_its_description_says_why_and_where_the_best_step_was(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = train(
        ROUND_TABLE,
        overrides=[*EVERY_EPOCH, "train.early_stopping={patience: 5}", "tracking.log_model=false"],
        device="cpu",
        tracking_uri=store,
        skip_gradcheck=True,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    run = MlflowClient(store).get_run(str(result.run_id))
    assert run.info.status == "FINISHED"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"FINISHED after {result.steps} steps, stopped early at epoch {result.steps} of 300: best ")
    assert f"| early stopping | {result.stopped_early} |" in note
    assert run.data.params["train.early_stopping.patience"] == "5"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "train.early_stopping={monitor: val/acc, patience: 3}",
            "train.early_stopping.monitor: 'val/acc' is not a metric this run logs",
        ),
        ("train.early_stopping={patience: 0}", "train.early_stopping.patience"),
        ("train.early_stopping={monitor: val/loss}", "train.early_stopping.patience"),
        ("train.early_stopping={patience: 3, min_delta: -1}", "train.early_stopping.min_delta"),
    ],
)
def test_bad_early_stopping_settings_are_refused_naming_the_field(setting: str, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec = load_spec(ROUND_TABLE, [setting])
        train(spec, device="cpu", track=False, skip_gradcheck=True)
