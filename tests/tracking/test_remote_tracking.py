"""Training against a real `mlflow server` on 127.0.0.1, over HTTP, and reading the run back."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import MlflowServer, run_knightctl

from tests.conftest import best_model

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` with a sqlite backend and proxied artifacts, until the module's tests are done."""
    running = MlflowServer(tmp_path_factory.mktemp("server"))
    running.start()
    yield running.uri
    running.stop()  # the server and its workers


@pytest.mark.slow
def test_a_run_trained_against_a_server_is_complete_there(server: str, tmp_path: Path) -> None:
    done = run_knightctl(
        "train",
        str(ROUND_TABLE),
        "--tracking-uri",
        server,
        "--device",
        "cpu",
        "--set",
        "train.epochs=30",
        "--set",
        "train.log_every_n_steps=1",
        cwd=tmp_path,
        env={"MLFLOW_RUN_CONTEXT": '{"knightctl.test.hall": "camelot"}'},  # read by MLflow's own context
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"dashboard: {server}/#/experiments/" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # nothing was written locally
    client = MlflowClient(server)
    (run,) = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, 31))
    assert run.data.metrics["val/accuracy"] > 0.5 and "system/cpu_utilization_percentage" in run.data.metrics
    assert "| status | FINISHED |" in run.data.tags["mlflow.note.content"]
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"training", "validation"}
    assert all(i.dataset.digest and i.dataset.source_type == "code" for i in run.inputs.dataset_inputs)
    tags = run.data.tags
    assert tags["knightctl.test.hall"] == "camelot" and tags["mlflow.source.name"].endswith(
        "experiments/round_table.yaml"
    )
    artifacts = {a.path for folder in ("plots", "spec", "checkpoints") for a in client.list_artifacts(run_id, folder)}
    assert artifacts == {
        "plots/training_curves.png",
        "plots/decision_boundary.png",
        "plots/confusion_matrix.png",
        "spec/round_table.yaml",
        "spec/resolved.yaml",
        "checkpoints/final.pt",
        "checkpoints/best.pt",
    }


def test_the_logged_model_loads_back_from_the_server(server: str, tmp_path: Path, load_logged_model) -> None:
    import torch

    from knightctl.training.run import train

    result = train(
        ROUND_TABLE, overrides=["train.epochs=5", "tracking.experiment=remote-model"], tracking_uri=server, device="cpu"
    )
    loaded = load_logged_model(server, result.model_uri)
    inputs = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(loaded(inputs), best_model(result)(inputs), atol=1e-6)
