"""`knightctl train` as a user runs it: real subprocesses, a real sqlite store, real signals."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import run_knightctl

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


@pytest.mark.slow
def test_train_uses_the_embedded_default_store_in_the_working_directory(tmp_path: Path) -> None:
    done = run_knightctl(
        "train",
        str(ROUND_TABLE),
        "--set",
        "train.epochs=20",
        "--device",
        "cpu",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "mlruns").is_dir()  # MLflow's default artifact root beside the store
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "20"
    assert run.info.run_id in done.stdout
    assert "knightctl ui" in done.stdout


def test_output_without_a_terminal_is_plain_lines(tmp_path: Path) -> None:
    done = run_knightctl(
        "train", str(ROUND_TABLE), "--set", "train.epochs=30", "--no-track", cwd=tmp_path, env={"NO_COLOR": "1"}
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout and "\r" not in done.stdout
    assert "epoch 30/30" in done.stdout
    assert "val/accuracy" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # --no-track writes no store


def test_a_bad_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(ROUND_TABLE.read_text().replace("lr: 0.1", "lr: -0.1"))
    done = run_knightctl("train", str(spec), cwd=tmp_path)
    assert done.returncode == 2
    assert "optimizer.lr" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_an_absent_cuda_device_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run_knightctl("train", str(ROUND_TABLE), "--device", "cuda", cwd=tmp_path)
    assert done.returncode == 2
    assert "--device cuda" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_a_tracking_uri_mlflow_cannot_use_is_named_without_a_traceback(tmp_path: Path) -> None:
    done = run_knightctl(
        "train", str(ROUND_TABLE), "--tracking-uri", "bogus://nowhere", "--set", "train.epochs=2", cwd=tmp_path
    )
    assert done.returncode == 1
    assert "cannot start an MLflow run on bogus://nowhere" in done.stderr
    assert "Traceback" not in done.stderr
