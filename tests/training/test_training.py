"""Training the chapter's experiment end to end, read back from a real MLflow sqlite store."""

from __future__ import annotations

import math
import multiprocessing
import os
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from knightctl.errors import DataError, ModelShapeError, RunFailed
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.tracking.provenance import git_commit
from knightctl.training.build import build_components
from knightctl.training.run import train
from tests.conftest import best_model

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory):
    """round_table trained once with tracking into a fresh store; MLflow's ./mlruns stays in tmp."""
    workdir = tmp_path_factory.mktemp("tracked")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        uri = f"sqlite:///{workdir}/mlflow.db"
        result = train(ROUND_TABLE, tracking_uri=uri, device="cpu")
        yield result, MlflowClient(uri)
    finally:
        os.chdir(previous)


def test_round_table_reaches_ninety_percent_validation_accuracy(tracked) -> None:
    result, _ = tracked
    assert result.final_metrics["val/accuracy"] >= 0.90
    assert result.steps == 300  # full batch: one step per epoch


def test_run_is_finished_with_the_flattened_spec_as_params(tracked) -> None:
    result, client = tracked
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer.lr"] == "0.1"
    assert params["optimizer.name"] == "adam"
    assert params["model.0.type"] == "linear" and params["model.0.out_features"] == "5"
    assert params["model.1.type"] == "relu"
    assert params["train.batch_size"] == "full"
    assert params["seed"] == "42"


def test_run_tags_name_versions_device_seed_and_commit(tracked) -> None:
    result, client = tracked
    tags = client.get_run(result.run_id).data.tags
    assert tags["torch.version"] == torch.__version__
    assert tags["mlflow.version"] == mlflow.__version__
    assert tags["knightctl.version"]
    assert tags["device"] == "cpu"
    assert tags["seed"] == "42"
    assert tags["deterministic"] == "false"
    assert len(tags["spec.digest"]) == 64
    # the commit of the repository that holds the spec (this checkout), wherever the run started
    repository = git_commit(ROUND_TABLE.parent)
    assert tags.get("mlflow.source.git.commit") == (repository[0] if repository else None)


def test_metrics_are_stored_per_logged_step(tracked) -> None:
    result, client = tracked
    losses = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(10, 301, 10))  # log_every_n_steps: 10
    accuracy = client.get_metric_history(result.run_id, "val/accuracy")
    assert accuracy[-1].step == 300
    assert accuracy[-1].value == pytest.approx(result.final_metrics["val/accuracy"])
    for key in ("train/grad_norm", "train/lr", "train/samples_per_s", "val/loss", "epoch"):
        assert client.get_metric_history(result.run_id, key), key


def test_spec_and_resolved_spec_are_artifacts(tracked) -> None:
    result, client = tracked
    names = {a.path for a in client.list_artifacts(result.run_id, "spec")}
    assert names == {"spec/round_table.yaml", "spec/resolved.yaml"}
    original = Path(client.download_artifacts(result.run_id, "spec/round_table.yaml")).read_text()
    assert original == ROUND_TABLE.read_text()
    resolved = Path(client.download_artifacts(result.run_id, "spec/resolved.yaml")).read_text()
    assert "log_every_n_steps: 10" in resolved  # defaults filled in


def test_logged_model_loads_and_predicts_like_the_trained_one(tracked, load_logged_model) -> None:
    result, client = tracked
    loaded = load_logged_model(client.tracking_uri, result.model_uri)
    inputs = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = best_model(result)(inputs)
        assert torch.allclose(loaded(inputs), expected, atol=1e-6)


def test_training_matches_the_chapters_loop_weight_for_weight() -> None:
    """The chapter's code, run by hand on the same data and seed, ends with identical weights."""
    spec = load_spec(ROUND_TABLE, ["train.epochs=40"])
    result = train(spec, track=False, device="cpu")
    data = build_components(spec, load_plugins().registry, torch.device("cpu"), 42).data
    torch.manual_seed(42)
    model = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))
    criterion = nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(40):
        optimizer.zero_grad()
        output = model(data.train_x)
        loss = criterion(output, data.train_y)
        loss.backward()
        optimizer.step()
    trained = result.model.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(trained[name], value), name


def test_battles_need_the_hidden_layer() -> None:
    """A one-unit bottleneck (close to a linear model) cannot learn the disc the data is drawn from."""
    narrow = train(
        ROUND_TABLE,
        overrides=["model.0.out_features=1", "model.2.in_features=1", "train.epochs=150"],
        track=False,
        device="cpu",
    )
    assert narrow.final_metrics["val/accuracy"] < 0.8


def test_mini_batches_are_a_fresh_permutation_each_epoch_and_reproducible() -> None:
    first = train(ROUND_TABLE, overrides=["train.batch_size=64", "train.epochs=3"], track=False, device="cpu")
    again = train(ROUND_TABLE, overrides=["train.batch_size=64", "train.epochs=3"], track=False, device="cpu")
    assert first.steps == 3 * 13  # 800 training rows in batches of 64
    for name, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value)


def test_seed_is_generated_when_absent_and_reported(tmp_path: Path) -> None:
    spec_text = ROUND_TABLE.read_text().replace("seed: 42\n", "")
    path = tmp_path / "unseeded.yaml"
    path.write_text(spec_text)
    result = train(path, overrides=["train.epochs=2"], track=False, device="cpu")
    assert isinstance(result.info.seed, int) and result.info.seed >= 0


def test_shape_mismatch_found_by_the_dry_forward_names_the_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # flatten has no static width, so only the dry forward can see that linear wants 3 features
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\nseed: 1\ndata: battles\nmodel: [flatten, {type: linear, in_features: 3, out_features: 1}]\n"
        "loss: bce_with_logits\noptimizer: {name: adam, lr: 0.1}\ntrain: {epochs: 1}\n"
    )
    with pytest.raises(ModelShapeError, match=r"model\.1 \(linear\) cannot take an input of shape \(8, 2\)"):
        train(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", device="cpu")
    assert not (tmp_path / "mlflow.db").exists()  # caught before any run was created
    assert not multiprocessing.active_children()  # the metric writer, started early, was stopped


def test_cross_entropy_needs_one_output_per_class(tmp_path: Path) -> None:
    csv = tmp_path / "moves.csv"
    csv.write_text("a,b,move\n" + "".join(f"{i % 7},{i % 3},{['x', 'y', 'z'][i % 3]}\n" for i in range(30)))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\nseed: 1\ndata: {name: csv, path: moves.csv, features: [a, b], target: move}\n"
        "model: [{type: linear, in_features: 2, out_features: 2}]\nloss: cross_entropy\n"
        "optimizer: {name: sgd, lr: 0.1}\ntrain: {epochs: 1}\n"
    )
    with pytest.raises(ModelShapeError, match="3 classes"):
        train(spec, track=False, device="cpu")


def test_non_numeric_csv_feature_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,0\n3,oops,1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: t\ndata: {name: csv, path: d.csv, features: [a, b], target: y, val_fraction: 0.0}\n"
        "model: [{type: linear, in_features: 2, out_features: 1}]\nloss: bce_with_logits\n"
        "optimizer: {name: sgd, lr: 0.1}\ntrain: {epochs: 1}\n"
    )
    with pytest.raises(DataError, match=r"d\.csv:3: column 'b' holds 'oops'"):
        train(spec, track=False, device="cpu")


@pytest.mark.slow
def test_diverging_loss_fails_the_run_and_marks_it_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Adam moves each weight by about lr per step: 1e30 sends the logits past float32's range
    with pytest.raises(RunFailed, match="loss became") as caught:
        train(
            ROUND_TABLE,
            overrides=["optimizer.lr=1e30", "train.epochs=20", "tracking.experiment=diverge"],
            tracking_uri=uri,
            device="cpu",
        )
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("diverge")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    traceback_text = Path(client.download_artifacts(run.info.run_id, "error/traceback.txt")).read_text()
    assert "NonFiniteLoss" in traceback_text and "loss became" in traceback_text
    # Told as a failure at a glance: the outcome first, the non-finite loss on the curve at its step.
    bad_step = caught.value.step  # a NonFiniteLoss
    outcome = run.data.tags["knightctl.outcome"]
    assert outcome.startswith("FAILED after ") and f"the training loss became nan at step {bad_step}" in outcome
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(outcome + "\n") and "**Last metrics**" in note and "**Final metrics**" not in note
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert losses[-1].step == bad_step and math.isnan(losses[-1].value)
    assert all(math.isfinite(point.value) for point in losses[:-1])
    assert "plots/training_curves.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]


@pytest.mark.slow
def test_an_exception_inside_the_loop_fails_the_run_naming_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # lr 1e38 overflows float32 inside Adam's update itself: a real RuntimeError from torch
    with pytest.raises(RunFailed, match=r"training failed at epoch \d+ \(step \d+\): RuntimeError"):
        train(
            ROUND_TABLE, overrides=["optimizer.lr=1e38", "tracking.experiment=overflow"], tracking_uri=uri, device="cpu"
        )
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("overflow").experiment_id])
    assert run.info.status == "FAILED"
    assert "RuntimeError" in Path(client.download_artifacts(run.info.run_id, "error/traceback.txt")).read_text()


def test_a_spec_inside_a_git_repository_records_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "notes.txt").write_text("the round table\n")
    spec = tmp_path / "round_table.yaml"
    spec.write_text(ROUND_TABLE.read_text())
    git("add", "notes.txt", "round_table.yaml")
    git("-c", "user.name=Merlin", "-c", "user.email=merlin@camelot.invalid", "commit", "-qm", "first")
    (tmp_path / "notes.txt").write_text("the round table, revised\n")  # an uncommitted change
    monkeypatch.chdir(tmp_path.parent)  # the spec's repository counts, not the working folder
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(spec, overrides=["train.epochs=2", "tracking.log_model=false"], tracking_uri=uri, device="cpu")
    tags = MlflowClient(uri).get_run(result.run_id).data.tags
    assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
    assert tags["git.dirty"] == "true"


def test_blobs_are_separable_clusters_reproducible_by_seed(tmp_path: Path) -> None:
    spec = tmp_path / "blobs.yaml"
    spec.write_text(
        "name: blobs\nseed: 5\ndata: {name: blobs, n_samples: 600, n_features: 6, n_classes: 3, spread: 0.5}\n"
        "model: [{type: linear, in_features: 6, out_features: 3}]\nloss: cross_entropy\n"
        "optimizer: {name: adam, lr: 0.05}\ntrain: {epochs: 60}\n"
    )
    first = train(spec, track=False, device="cpu")
    again = train(spec, track=False, device="cpu")
    assert first.info.n_train == 480 and first.info.n_val == 120
    assert first.final_metrics["val/accuracy"] >= 0.95  # centres about 3.5 apart, points within 0.5 of theirs
    for name, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value)
