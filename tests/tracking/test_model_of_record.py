"""The model of record: the best step by the monitored metric, kept as best.pt, logged, linked to its
step's metrics, named after the spec, registered on request, and loadable in a fresh process that
has no knightctl installed, for every example spec.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from knightctl.checkpoint.files import load_checkpoint
from knightctl.errors import ResumeError, SpecError
from knightctl.training.run import train
from tests.conftest import best_model
from tests.processes import run_knightctl

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
ROUND_TABLE = EXPERIMENTS / "round_table.yaml"


def logged_model(client: MlflowClient, run_id: str):
    (model,) = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return model


@pytest.fixture(scope="module")
def chapter(tmp_path_factory: pytest.TempPathFactory):
    """The chapter's experiment as written (300 epochs): val/loss bottoms out long before the end."""
    folder = tmp_path_factory.mktemp("record")
    uri = f"sqlite:///{folder}/mlflow.db"
    result = train(ROUND_TABLE, tracking_uri=uri, device="cpu", checkpoint_dir=folder / "checkpoints")
    return result, MlflowClient(uri)


def test_the_best_step_is_where_val_loss_was_lowest_not_the_last(chapter) -> None:
    result, client = chapter
    history = client.get_metric_history(result.run_id, "val/loss")
    lowest = min(history, key=lambda m: (m.value, m.step))  # ties: the earlier step
    assert result.best is not None and (result.best.metric, result.best.goal) == ("val/loss", "min")
    assert (result.best.step, result.best.value) == (lowest.step, pytest.approx(lowest.value))
    assert result.best.step < result.steps == 300  # the chapter's run ends past its best
    assert result.final_metrics["val/loss"] > result.best.value
    assert result.best.metrics["val/loss"] == pytest.approx(lowest.value) and "val/accuracy" in result.best.metrics


def test_best_pt_holds_the_best_steps_weights_beside_the_final_checkpoint(chapter) -> None:
    result, client = chapter
    best = load_checkpoint(result.best_checkpoint)
    assert best["kind"] == "best" and best["step"] == result.best.step and best["metric"] == "val/loss"
    assert result.best_checkpoint.parent == result.checkpoint.parent
    stored = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert stored == {"checkpoints/final.pt", "checkpoints/best.pt"}
    final = load_checkpoint(result.checkpoint)
    assert final["best"]["step"] == result.best.step  # a resumed run goes on knowing its best
    assert any(not torch.equal(best["model"][k], final["model"][k]) for k in best["model"])


def test_the_logged_model_is_the_best_one_named_after_the_spec_and_linked_to_its_step(chapter) -> None:
    result, client = chapter
    model = logged_model(client, result.run_id)
    assert model.name == "round_table" and model.tags["knightctl.model_of_record"] == "best"
    assert result.model_of_record == "best" and result.model_uri == f"models:/{model.model_id}"
    linked = {metric.key: metric for metric in model.metrics}
    assert {metric.step for metric in model.metrics} == {result.best.step}  # never step 0's system metrics
    assert linked["val/loss"].value == pytest.approx(result.best.value) and "val/accuracy" in linked
    description = model.tags["mlflow.note.content"]
    assert f"the best val/loss ({result.best.value:.4g}, lower is better) at step {result.best.step}" in description
    assert "east, north" in description and "defeat, victory" in description
    run_tags = client.get_run(result.run_id).data.tags
    for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit", "mlflow.user"):
        assert model.tags.get(key) == run_tags.get(key), key  # "Logged from" the spec, as its run is


def test_the_description_and_the_outcome_give_best_and_final_side_by_side(chapter) -> None:
    result, client = chapter
    tags = client.get_run(result.run_id).data.tags
    final = result.final_metrics["val/loss"]
    first_line = f"FINISHED after 300 steps: best val/loss {result.best.value:.4g} at step {result.best.step}"
    assert tags["knightctl.outcome"] == f"{first_line} (final {final:.4g})"
    note = tags["mlflow.note.content"]
    assert note.startswith(first_line)
    assert f"**Best** by val/loss (step {result.best.step})" in note and "**Final metrics** (step 300)" in note
    assert "| model of record | the best val/loss" in note


def test_log_model_final_logs_the_last_steps_weights(tmp_path: Path, load_logged_model) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(
        ROUND_TABLE, overrides=["train.epochs=150", "tracking.log_model=final"], tracking_uri=uri, device="cpu"
    )
    assert result.best.step < 150 and result.model_of_record == "final"
    client = MlflowClient(uri)
    assert client.get_run(result.run_id).info.run_name == "round_table epochs=150 log_model=final"  # its --sets
    model = logged_model(client, result.run_id)
    assert {metric.step for metric in model.metrics} == {150}
    assert "the weights of the last step, 150" in model.tags["mlflow.note.content"]
    inputs = torch.randn(16, 2, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(load_logged_model(uri, result.model_uri)(inputs), result.model.eval()(inputs))


def test_a_maximised_monitor_and_registration(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(
        ROUND_TABLE,
        overrides=["train.epochs=100", "train.monitor=val/accuracy", "tracking.register_model=knights"],
        tracking_uri=uri,
        device="cpu",
    )
    client = MlflowClient(uri)
    history = client.get_metric_history(result.run_id, "val/accuracy")
    highest = max(history, key=lambda m: (m.value, -m.step))  # ties: the earlier step
    assert (result.best.goal, result.best.step) == ("max", highest.step)
    (version,) = client.search_model_versions("name = 'knights'")
    assert version.run_id == result.run_id and version.source == result.model_uri, version


def test_a_monitor_the_run_never_logs_is_refused_before_any_run(tmp_path: Path) -> None:
    done = run_knightctl("train", str(ROUND_TABLE), "--set", "train.monitor=val/acc", "--set", "train.epochs=2")
    assert done.returncode == 2, done.stderr
    assert "train.monitor: 'val/acc' is not a metric this run logs" in done.stderr and "val/accuracy" in done.stderr
    assert not (Path.cwd() / "mlflow.db").exists()  # refused before the store was touched
    with pytest.raises(SpecError, match="register_model needs a logged model"):
        train(ROUND_TABLE, overrides=["tracking.log_model=false", "tracking.register_model=x"], track=False)


def test_a_resumed_run_keeps_the_best_it_had_before_it_stopped(tmp_path: Path) -> None:
    whole = train(ROUND_TABLE, overrides=["train.epochs=200"], track=False, device="cpu", checkpoint_dir=tmp_path / "a")
    assert whole.best.step < 150
    train(ROUND_TABLE, overrides=["train.epochs=200"], track=False, device="cpu", checkpoint_dir=tmp_path / "b",
          stop_at_step=150)  # fmt: skip
    (folder,) = (tmp_path / "b").iterdir()
    resumed = train(resume=folder / "step-000000150.pt", track=False, device="cpu")
    assert (resumed.best.step, resumed.best.value) == (whole.best.step, whole.best.value)
    for name, value in load_checkpoint(whole.best_checkpoint)["model"].items():
        assert torch.equal(load_checkpoint(resumed.best_checkpoint)["model"][name], value)
    with pytest.raises(ResumeError, match="best.pt holds the model of record's weights only"):
        train(resume=resumed.best_checkpoint, track=False)


# Loads the newest logged model of the store in the working folder and prints its predictions on
# ROWS (JSON: column -> list of values). Run with `python -S` and site-packages appended by hand,
# so that .pth files (knightctl's editable install) are not read: knightctl can only come from the
# model's own code folder.
FRESH_PROCESS = """
import json, sys
sys.path.append(sys.argv[1])
try:
    import knightctl
    raise SystemExit("knightctl is importable before the model loads: the test proves nothing")
except ImportError:
    pass
import mlflow, mlflow.pyfunc, pandas as pd
mlflow.set_tracking_uri("sqlite:///mlflow.db")
(model,) = mlflow.search_logged_models(experiment_ids=[sys.argv[2]], output_format="list")
loaded = mlflow.pyfunc.load_model(model.model_uri)
out = loaded.predict(pd.DataFrame(json.loads(sys.argv[3])))
import knightctl
print(json.dumps({"columns": out.to_dict(orient="list"), "knightctl": knightctl.__file__}))
"""


@pytest.mark.parametrize("name", ["round_table", "excalibur", "mordred"])
def test_every_example_model_predicts_in_a_fresh_process_without_knightctl(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = train(
        EXPERIMENTS / f"{name}.yaml", overrides=["train.epochs=20"], tracking_uri="sqlite:///mlflow.db", device="cpu"
    )
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")  # MLflow caches a store per URI string
    data_rows = torch.randn(12, result.model[0].in_features, generator=torch.Generator().manual_seed(5))
    experiment_id = client.get_run(result.run_id).info.experiment_id
    card = model_card(client, result.run_id, tmp_path)
    features, classes = card["feature_names"], card["class_names"]
    assert classes == result_classes(client, result.run_id)  # the same index order as the run's params
    rows = {feature: data_rows[:, i].tolist() for i, feature in enumerate(features)}
    done = subprocess.run(
        [sys.executable, "-S", "-c", FRESH_PROCESS, site.getsitepackages()[0], experiment_id, json.dumps(rows)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/artifacts/code/knightctl/" in answer["knightctl"]  # knightctl came with the model
    with torch.no_grad():
        outputs = best_model(result)(data_rows)
    if outputs.shape[1] == 1:  # one logit: the chapter's binary battles
        expected = [classes[int(logit > 0)] for logit in outputs[:, 0].tolist()]
    else:
        expected = [classes[i] for i in outputs.argmax(dim=1).tolist()]
    assert answer["columns"]["prediction"] == expected
    for index, label in enumerate(classes):
        probabilities = answer["columns"][f"probability_{label}"]
        reference = torch.sigmoid(outputs[:, 0]) if outputs.shape[1] == 1 else torch.softmax(outputs, 1)[:, index]
        if outputs.shape[1] == 1 and index == 0:
            reference = 1 - reference
        assert probabilities == pytest.approx(reference.tolist(), abs=1e-6)


def model_card(client: MlflowClient, run_id: str, folder: Path) -> dict:
    """card.json of the run's logged model: its feature names, class names and why it was chosen."""
    location = logged_model(client, run_id).artifact_location
    return json.loads(
        Path(mlflow.artifacts.download_artifacts(f"{location}/artifacts/card.json", dst_path=str(folder))).read_text()
    )


def result_classes(client: MlflowClient, run_id: str) -> list[str]:
    return client.get_run(run_id).data.params["data.classes"].split(", ")
