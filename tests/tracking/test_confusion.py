"""A tracked classifier's task metrics in a real sqlite MLflow store: per evaluation, the confusion
matrix as a table and a PNG, and the description's few lines about them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from knightctl.plugins.events import RunResult
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.tracking.confusion import CONFUSION_ARTIFACT, CONFUSION_TABLE
from knightctl.tracking.tags import NOTE_TAG
from knightctl.training.build import build_components
from knightctl.training.run import train


def test_a_classifier_logs_its_confusion_matrix_as_a_table_and_a_png(tmp_path: Path) -> None:
    spec = tmp_path / "blobs.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            name: three_blobs
            seed: 5
            data: {name: blobs, n_samples: 150, n_features: 2, n_classes: 3, spread: 0.3}
            model: [{type: linear, in_features: 2, out_features: 3}]
            loss: cross_entropy
            optimizer: {name: adam, lr: 0.1}
            train: {epochs: 8, batch_size: full, device: cpu, eval_every_n_epochs: 1, monitor: val/f1/blob1}
            tracking: {log_model: false}
            """
        )
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(spec, tracking_uri=uri, skip_gradcheck=True)
    client = MlflowClient(uri)
    run = client.get_run(result.run_id)

    # Each evaluation logs the task metrics; a per-class one is monitored, maximised.
    assert len(client.get_metric_history(result.run_id, "val/macro_f1")) == 8
    assert {f"val/{m}/blob{i}" for m in ("precision", "recall", "f1") for i in range(3)} <= set(run.data.metrics)
    assert "val/roc_auc" not in run.data.metrics  # binary only
    assert result.best is not None and result.best.goal == "max"

    # The confusion matrix of the model of record: rows are the true classes of the validation split.
    evaluation = result.evaluation
    assert evaluation is not None and evaluation.step == result.best.step
    confusion = torch.tensor(evaluation.confusion)
    split = build_components(load_spec(spec), load_plugins().registry, torch.device("cpu"), 5).data
    assert confusion.sum(dim=1).tolist() == torch.bincount(split.val_y, minlength=3).tolist()
    accuracy = confusion.diagonal().sum().item() / confusion.sum().item()
    assert evaluation.values["val/accuracy"] == accuracy_at(result, evaluation.step) == pytest.approx(accuracy)

    # A table as log_table writes it: the dashboard finds it by the run's mlflow.loggedArtifacts tag.
    # (Read back by hand: MlflowClient.load_table searches the global store, not the client's.)
    logged = json.loads(client.get_run(result.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": CONFUSION_TABLE, "type": "table"} in logged
    table = json.loads(Path(client.download_artifacts(result.run_id, CONFUSION_TABLE, str(tmp_path))).read_text())
    assert table["columns"] == ["actual", "predicted blob0", "predicted blob1", "predicted blob2"]
    assert [row[0] for row in table["data"]] == ["blob0", "blob1", "blob2"]
    assert [row[1:] for row in table["data"]] == confusion.tolist()
    plots = {item.path for item in client.list_artifacts(result.run_id, "plots")}
    assert CONFUSION_ARTIFACT in plots
    png = Path(client.download_artifacts(result.run_id, CONFUSION_ARTIFACT, str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The description: the task metrics in a few lines, per class in one, not a wall of numbers.
    note = run.data.tags[NOTE_TAG]
    assert f"**Task metrics** of {evaluation.weights}, on the validation split: accuracy " in note
    assert "Per class (precision / recall / f1): blob0 " in note
    assert "val/f1/blob0" not in note  # the per-class keys are in the line above, not one by one
    assert "Confusion matrix: `confusion_matrix.json` (table) and `plots/confusion_matrix.png`" in note
    assert len([line for line in note.splitlines() if "blob0" in line]) == 1  # the per-class line


def accuracy_at(result: RunResult, step: int) -> float:
    return next(values["val/accuracy"] for s, values in result.history if s == step and "val/accuracy" in values)
