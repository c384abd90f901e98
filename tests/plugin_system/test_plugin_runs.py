"""Runs that use plugins: ops as layers, event hooks, faults inside plugins, and what MLflow records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from plugin_specs import spec_text

from knightctl.errors import DeviceError, GradcheckFailed, PluginError, RunFailed
from knightctl.plugins.files import file_digest
from knightctl.plugins.system import PluginSettings
from knightctl.training.run import train
from tests.conftest import best_model

ROOT = Path(__file__).resolve().parents[2]
TEST_PLUGINS = ROOT / "tests" / "plugins"
NO_DIRS = PluginSettings(dirs=())  # only what each spec lists, whatever the working directory holds


def write_spec(tmp_path: Path, activation: str, plugins: list[Path], epochs: int = 3) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text([str(path) for path in plugins], activation, epochs))
    return spec


def only_run(uri: str) -> object:
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    (run,) = client.search_runs([experiment.experiment_id for experiment in experiments])
    return run


def test_event_hooks_see_the_run_start_each_epoch_and_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("KNIGHTCTL_TEST_EVENTS", str(events))
    train(write_spec(tmp_path, "relu", [TEST_PLUGINS / "recorder.py"]), track=False, plugins=NO_DIRS)
    received = [json.loads(line) for line in events.read_text().splitlines()]
    assert received[0] == {"event": "train_started", "seed": 7, "epochs": 3}
    assert [(event["event"], event["epoch"]) for event in received[1:4]] == [("epoch_completed", n) for n in (1, 2, 3)]
    assert received[3]["evaluated"] is True  # the last epoch is always evaluated
    assert received[4:] == [{"event": "train_finished", "steps": 3}]


def test_an_event_hook_that_raises_fails_the_run_naming_plugin_and_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = write_spec(tmp_path, "relu", [TEST_PLUGINS / "noisy_events.py"])
    with pytest.raises(
        PluginError,
        match="plugin 'noisy_events' raised in hook epoch_completed: RuntimeError: the chronicler dropped his quill",
    ):
        train(spec, tracking_uri=uri, plugins=NO_DIRS)
    assert only_run(uri).info.status == "FAILED"


def test_an_op_that_raises_in_the_dry_forward_is_named_before_any_run_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, "faulty::explodes", [TEST_PLUGINS / "faulty_ops.py"])
    with pytest.raises(PluginError) as caught:
        train(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", plugins=NO_DIRS)
    assert str(caught.value) == (
        "model.1 (faulty::explodes): op faulty::explodes (plugin 'faulty_ops') raised on an input of shape (8, 4): "
        "ValueError: the forward of this op always fails"
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_an_op_whose_backward_raises_fails_the_run_naming_its_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = write_spec(tmp_path, "faulty::bad_backward", [TEST_PLUGINS / "faulty_ops.py"])
    with pytest.raises(
        GradcheckFailed,
        match=r"faulty::bad_backward \(plugin 'faulty_ops'\): reverse error: ArithmeticError: the backward",
    ):
        train(spec, tracking_uri=uri, plugins=NO_DIRS)  # the pre-flight check meets it first
    with pytest.raises(
        RunFailed,
        match=(
            r"training failed at epoch 1 \(step 0\) in plugin 'faulty_ops' \(.*faulty_ops.py\): "
            r"ArithmeticError: the backward"
        ),
    ):
        train(spec, tracking_uri=uri, plugins=NO_DIRS, skip_gradcheck=True)
    assert only_run(uri).info.status == "FAILED"


def test_an_op_without_a_kernel_for_the_device_names_op_and_device(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "faulty::cuda_only", [TEST_PLUGINS / "faulty_ops.py"])
    with pytest.raises(
        DeviceError,
        match=r"model.1 \(faulty::cuda_only\): op faulty::cuda_only \(plugin 'faulty_ops'\) has no kernel for cpu",
    ) as caught:
        train(spec, track=False, plugins=NO_DIRS)
    assert "--device cpu" in str(caught.value.hint) and "register a kernel" in str(caught.value.hint)


def test_excalibur_with_plugin_activations_learns_as_well_as_the_chapter_model() -> None:
    excalibur = train(ROOT / "experiments" / "excalibur.yaml", track=False, plugins=NO_DIRS)
    round_table = train(ROOT / "experiments" / "round_table.yaml", track=False, plugins=NO_DIRS)
    assert excalibur.final_metrics["val/accuracy"] >= 0.93
    assert excalibur.final_metrics["val/accuracy"] >= round_table.final_metrics["val/accuracy"] - 0.03
    layers = [type(layer).__name__ for layer in excalibur.model]
    assert layers == ["Linear", "OpLayer", "Linear", "OpLayer", "Linear"]


def test_mlflow_records_the_plugins_and_ops_a_run_used_and_logs_a_loadable_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_logged_model
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(
        ROOT / "experiments" / "excalibur.yaml", overrides=["train.epochs=5"], tracking_uri=uri, plugins=NO_DIRS
    )
    tags = MlflowClient(uri).get_run(result.run_id).data.tags
    assert tags["ops"] == "knight::sigmoid_gate, knight::smooth_relu"
    digest = file_digest(ROOT / "plugins" / "smooth_relu.py")
    assert tags["plugin.smooth_relu"] == f"smooth_relu@sha256:{digest[:12]} from {ROOT / 'plugins' / 'smooth_relu.py'}"
    used = tags["plugins"].split(", ")
    assert "builtin.layers==0.1.0" in used and f"smooth_relu@sha256:{digest[:12]}" in used
    assert not any(name.startswith("swish") for name in used)  # loaded or not, only what the run used
    assert (
        tags["gradcheck.knight.smooth_relu"] == tags["gradcheck.knight.sigmoid_gate"] == "passed"
    )  # the pre-flight check
    assert "gradcheck/report.json" in {a.path for a in MlflowClient(uri).list_artifacts(result.run_id, "gradcheck")}
    loaded = load_logged_model(uri, result.model_uri)  # exported with the custom op's fake kernel
    rows = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    torch.testing.assert_close(loaded(rows), best_model(result)(rows))
