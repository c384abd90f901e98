"""`knightctl train` as a user runs it: real subprocesses, a real sqlite store, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


def knightctl(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "knightctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_train_uses_the_embedded_default_store_in_the_working_directory(tmp_path: Path) -> None:
    done = knightctl("train", str(ROUND_TABLE), "--set", "train.epochs=20", "--device", "cpu", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""})
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
    done = knightctl("train", str(ROUND_TABLE), "--set", "train.epochs=30", "--no-track", cwd=tmp_path, env={"NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout and "\r" not in done.stdout
    assert "epoch 30/30" in done.stdout
    assert "val/accuracy" in done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # --no-track writes no store


def test_a_bad_spec_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(ROUND_TABLE.read_text().replace("lr: 0.1", "lr: -0.1"))
    done = knightctl("train", str(spec), cwd=tmp_path)
    assert done.returncode == 2
    assert "optimizer.lr" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_an_absent_cuda_device_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = knightctl("train", str(ROUND_TABLE), "--device", "cuda", cwd=tmp_path)
    assert done.returncode == 2
    assert "--device cuda" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_marks_the_run_killed(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "knightctl", "train", str(ROUND_TABLE), "--set", "train.epochs=1000000", "--set", "train.eval_every_n_epochs=1000",
         "--set", "train.log_every_n_steps=1", "--device", "cpu"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    for line in process.stdout:  # printed just before the first step
        if line.startswith("MLflow run") or time.monotonic() > deadline:
            break
    time.sleep(1.0)  # well inside the loop: a million epochs take minutes
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert "interrupted at epoch" in stderr and "marked KILLED" in stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    assert run.info.status == "KILLED"
    assert "| status | KILLED: " in run.data.tags["mlflow.note.content"]
    # Every step's loss is stored, those after the last evaluation (at a multiple of 1000) too.
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) % 1000 != 0


def test_a_tracking_uri_mlflow_cannot_use_is_named_without_a_traceback(tmp_path: Path) -> None:
    done = knightctl("train", str(ROUND_TABLE), "--tracking-uri", "bogus://nowhere", "--set", "train.epochs=2", cwd=tmp_path)
    assert done.returncode == 1
    assert "cannot start an MLflow run on bogus://nowhere" in done.stderr
    assert "Traceback" not in done.stderr
