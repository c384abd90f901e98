"""What a reviewer finds in MLflow for a trained run, read back through MlflowClient.

One run of excalibur (the chapter's battles with two plugin ops as activations), trained inside a
fresh git repository so that the commit is recorded too; then each item of the run's contents.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import mlflow.data
import pytest
import torch
from mlflow.tracking import MlflowClient

from knightctl.checkpoint.files import load_checkpoint
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.tracking.run import flatten
from knightctl.tracking.systemmetrics import SystemSampler, next_interval
from knightctl.training.build import build_components
from knightctl.training.run import train
from tests.conftest import best_model

ROOT = Path(__file__).resolve().parents[2]
EXCALIBUR = ROOT / "experiments" / "excalibur.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OVERRIDES = ["train.epochs=60", "train.batch_size=100", "train.log_every_n_steps=4"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory):
    """excalibur, 60 epochs in batches of 100 (eight steps an epoch), tracked in a fresh store."""
    workdir = tmp_path_factory.mktemp("dashboard")
    git(workdir, "init", "-q")
    (workdir / "notes.txt").write_text("the sword in the stone\n")
    for folder, name in [
        ("experiments", "excalibur.yaml"),
        ("plugins", "sigmoid_gate.py"),
        ("plugins", "smooth_relu.py"),
    ]:
        (workdir / folder).mkdir(exist_ok=True)
        shutil.copyfile(ROOT / folder / name, workdir / folder / name)  # the spec's repository is this one
    git(workdir, "add", ".")
    git(workdir, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    previous = os.getcwd()
    os.chdir(workdir)
    try:
        uri = f"sqlite:///{workdir}/mlflow.db"
        result = train(workdir / "experiments" / "excalibur.yaml", overrides=OVERRIDES, tracking_uri=uri, device="cpu")
        client = MlflowClient(uri)
        yield result, client, client.get_run(result.run_id), git(workdir, "rev-parse", "HEAD")
    finally:
        os.chdir(previous)


def download(client: MlflowClient, run_id: str, path: str) -> Path:
    return Path(client.download_artifacts(run_id, path))


def test_the_description_tells_the_runs_story(reviewed) -> None:
    result, _, run, _ = reviewed
    note = run.data.tags["mlflow.note.content"]
    best, accuracy, loss = result.best, result.final_metrics["val/accuracy"], result.final_metrics["val/loss"]
    outcome = f"FINISHED after 480 steps: best val/loss {best.value:.4g} at step {best.step} (final {loss:.4g})"
    assert note.startswith(f"{outcome}\n\n### excalibur\n") and run.data.tags["knightctl.outcome"] == outcome
    assert "| status | FINISHED |" in note
    assert "| device | cpu (" in note
    assert "| data | battles: 800 training rows, 200 validation rows" in note
    assert (
        "| model | Linear(2→10) → knight::sigmoid_gate → Linear(5→5) → "
        "knight::smooth_relu → Linear(5→1); 66 parameters |" in note
    )
    assert "480 steps in" in note  # 60 epochs of 8
    assert (
        "| gradient check | passed: knight::sigmoid_gate passed, knight::smooth_relu passed, model excalibur passed |"
        in note
    )
    assert f"**Final metrics** (step 480): val/accuracy {accuracy:.4g} · val/loss {loss:.4g}" in note


def test_params_are_the_flattened_resolved_spec(reviewed) -> None:
    result, _, run, _ = reviewed
    spec = load_spec(EXCALIBUR, OVERRIDES)
    flat = flatten(spec.to_data())
    unset = {key for key, value in flat.items() if value == "None"}
    built = {"model.n_parameters": "66", "data.n_train": "800", "data.n_val": "200", "data.n_features": "2"}
    built["data.classes"] = "defeat, victory"  # in index order
    built["torch.num_threads"] = "1"  # train.threads auto, resolved: one thread for a model this small
    assert unset and "description" in flat  # the spec has both, and neither is a param: no "None", no repeat
    assert run.data.params == {k: v for k, v in flat.items() if k not in unset and k != "description"} | built
    assert run.data.params["model.3.beta"] == "2.0" and run.data.params["train.batch_size"] == "100"


def test_tags_name_versions_device_seed_commit_plugins_and_ops(reviewed) -> None:
    _, _, run, commit = reviewed
    tags = run.data.tags
    assert tags["torch.version"] == torch.__version__ and tags["mlflow.version"] == mlflow.__version__
    assert tags["device"] == "cpu" and tags["seed"] == "42"
    assert tags["mlflow.source.git.commit"] == commit and tags["git.dirty"] == "false"  # read before mlflow.db existed
    assert tags["mlflow.user"] and tags["mlflow.source.name"].endswith("experiments/excalibur.yaml")
    assert tags["ops"] == "knight::sigmoid_gate, knight::smooth_relu"
    assert "sigmoid_gate@sha256:" in tags["plugins"] and "smooth_relu@sha256:" in tags["plugins"]
    assert tags["gradcheck.verdict"] == "passed"


def test_metrics_per_logged_step_and_per_evaluation(reviewed) -> None:
    result, client, _, _ = reviewed
    losses = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(4, 481, 4))
    accuracy = client.get_metric_history(result.run_id, "val/accuracy")
    assert [m.step for m in accuracy] == list(range(32, 481, 32))  # auto: every 4th epoch, at least 25 steps apart
    assert accuracy[-1].value == pytest.approx(result.final_metrics["val/accuracy"])


def test_system_metrics_sample_cpu_and_memory(reviewed) -> None:
    _, _, run, _ = reviewed
    metrics = run.data.metrics
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0
    assert metrics["system/system_memory_usage_megabytes"] > 0


class PacedEpochs:
    """An observer that makes every epoch last a while, so that a run's length does not hang on how
    fast the machine is (a fast one trained 6000 epochs in under the 2.6 s this test needs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run_started(self, info) -> None:
        pass

    def epoch_completed(self, epoch: int, step: int, metrics) -> None:
        time.sleep(self.seconds)

    def run_finished(self, result) -> None:
        pass


def test_a_run_of_a_few_seconds_gets_ten_system_samples_from_when_training_starts(tmp_path: Path) -> None:
    """Sampled from the loop's first step, a tenth of the time trained so far apart (0.25 s to 5 s)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = ROOT / "experiments" / "round_table.yaml"
    result = train(
        spec,
        overrides=["train.epochs=400", "tracking.log_model=false"],
        tracking_uri=uri,
        device="cpu",
        observers=[PacedEpochs(seconds=0.008)],  # 400 epochs of at least 8 ms: 3.2 s on any machine
    )
    client = MlflowClient(uri)
    cpu = client.get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert result.loop_seconds > 3.2
    assert len(cpu) >= 10
    first_loss = min(m.timestamp for m in client.get_metric_history(result.run_id, "train/loss"))
    assert min(m.timestamp for m in cpu) >= first_loss - 1000  # ms: not during the set-up before the loop
    assert sorted(m.value for m in cpu)[0] > 0.0  # primed: psutil's first reading, 0%, is never published
    assert next_interval(0.0) == 0.25 and next_interval(30.0) == 3.0 and next_interval(3600.0) == 5.0


def test_the_sampler_goes_on_from_a_resumed_run_s_steps_and_spares_a_lost_server_its_last_sample(
    tmp_path: Path,
) -> None:
    """Through MLflow's own monitor: steps continue where the run's system metrics stopped; a stop
    before the first interval still logs one sample, unless the server is away; no start, no sample."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("system")).info.run_id

    def steps() -> list[int]:
        return [m.step for m in client.get_metric_history(run_id, "system/cpu_utilization_percentage")]

    first = SystemSampler(uri, run_id)
    first.begin()
    deadline = time.monotonic() + 60  # s: samples come at 0.25 s, 0.5 s, ...; a loaded machine is late
    while len(steps()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.finish()
    logged = steps()
    assert len(logged) >= 3 and logged == list(range(len(logged)))  # and the last, at the finish
    resumed = SystemSampler(uri, run_id)
    resumed.begin()
    resumed.finish()  # before its first interval: the last sample alone
    assert steps() == [*logged, len(logged)]
    away = SystemSampler(uri, run_id)
    away.begin()
    away.finish(last_sample=False)
    SystemSampler(uri, run_id).finish()  # never begun: training did not start
    time.sleep(0.3)  # s: past the first interval, were anything still sampling
    assert steps() == [*logged, len(logged)]


def test_datasets_are_logged_with_digest_source_and_context(reviewed) -> None:
    result, _, run, _ = reviewed
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    spec = load_spec(EXCALIBUR, OVERRIDES)
    data = build_components(
        spec, load_plugins(files=spec.plugin_paths()).registry, torch.device("cpu"), 42
    ).data  # the run's split
    for context, x, y in (("training", data.train_x, data.train_y), ("validation", data.val_x, data.val_y)):
        expected = mlflow.data.from_numpy(x.numpy(), targets=y.numpy(), name="battles")
        assert inputs[context].name == "battles"
        assert inputs[context].digest == expected.digest
        assert inputs[context].source_type == "code"
        assert "battles(n_samples=1000, noise=0.1)" in inputs[context].source


def test_artifacts_hold_spec_plots_gradcheck_report_and_checkpoint(reviewed) -> None:
    result, client, _, _ = reviewed
    run_id = result.run_id
    assert download(client, run_id, "spec/excalibur.yaml").read_text() == EXCALIBUR.read_text()
    assert "log_every_n_steps: 4" in download(client, run_id, "spec/resolved.yaml").read_text()
    for plot in ("plots/training_curves.png", "plots/decision_boundary.png"):
        assert download(client, run_id, plot).read_bytes().startswith(PNG_MAGIC), plot
    report = json.loads(download(client, run_id, "gradcheck/report.json").read_text())
    assert report["verdict"] == "passed" and {op["name"] for op in report["ops"]} == {
        "knight::sigmoid_gate",
        "knight::smooth_relu",
        "model excalibur",
    }
    checkpoint = load_checkpoint(download(client, run_id, "checkpoints/final.pt"))
    assert checkpoint["step"] == 480 and checkpoint["epoch"] == 60 and checkpoint["seed"] == 42
    for name, value in result.model.state_dict().items():
        assert torch.equal(checkpoint["model"][name], value), name
    assert checkpoint["optimizer"]["state"]  # Adam's moments, for a resume


def test_the_logged_model_predicts_like_the_trained_one(reviewed, load_logged_model) -> None:
    result, client, _, _ = reviewed
    loaded = load_logged_model(client.tracking_uri, result.model_uri)
    inputs = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(loaded(inputs), best_model(result)(inputs), atol=1e-6)


def test_a_model_of_every_example_op_is_logged_and_loads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_logged_model
) -> None:
    """pt2 (torch.export) works for autograd.Functions, plain functions and custom ops alike."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "plugins" / "knightctl-grail" / "knightctl_grail" / "__init__.py", tmp_path / "grail.py")
    ops = [
        "knight::smooth_relu",
        "knight::swish",
        "knight::squareplus",
        "knight::grad_reverse",
        "knight::sign_ste",
        "grail::soft_clamp",
    ]
    plugins = [
        str(ROOT / "plugins" / f"{name}.py")
        for name in ("sigmoid_gate", "smooth_relu", "swish", "squareplus", "gradient_reversal", "straight_through")
    ]
    spec = tmp_path / "every_op.yaml"
    spec.write_text(
        "name: every_op\nseed: 3\n"
        f"plugins: {json.dumps([*plugins, 'grail.py'])}\n"
        "data: {name: battles, n_samples: 200}\n"
        "model:\n  - {type: linear, in_features: 2, out_features: 10}\n  - knight::sigmoid_gate\n"
        + "".join(f"  - {op}\n" for op in ops)
        + "  - {type: linear, in_features: 5, out_features: 1}\n"
        "loss: bce_with_logits\noptimizer: {name: adam, lr: 0.05}\ntrain: {epochs: 5}\n"
    )
    result = train(spec, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", device="cpu", skip_gradcheck=True)
    loaded = load_logged_model(f"sqlite:///{tmp_path}/mlflow.db", result.model_uri)
    inputs = torch.randn(32, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(loaded(inputs), best_model(result)(inputs), atol=1e-6)


@pytest.mark.cuda
def test_a_cuda_run_samples_the_gpu_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(
        ROOT / "experiments" / "round_table.yaml",
        overrides=["train.epochs=50", "tracking.log_model=false"],
        tracking_uri=uri,
        device="cuda",
    )
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics
    assert any(key.startswith("system/gpu_0_") for key in metrics), sorted(metrics)
    assert "| device | cuda" in MlflowClient(uri).get_run(result.run_id).data.tags["mlflow.note.content"]
