"""Tracking stores that cannot take a run, or that several runs share (FAULTS 25, 27 and 28)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ports import free_port
from processes import run_knightctl, start_knightctl

from knightctl.errors import TrackingError
from knightctl.tracking.stores import sqlite_path
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
QUICK = ["train.epochs=2", "tracking.log_model=false"]


def make_file_store(folder: Path) -> str:
    """An MLflow file store in folder/mlruns with one run, made by MLflow itself (opted back in)."""
    script = (
        "import mlflow\nmlflow.set_tracking_uri('file:./mlruns')\n"
        "with mlflow.start_run(run_name='before the upgrade') as run:\n"
        "    mlflow.log_metric('val/accuracy', 0.9)\n    print(run.info.run_id)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_TRACKING_URI": ""},
    )
    return done.stdout.strip().splitlines()[-1]


def test_sqlite_paths_are_read_like_sqlalchemy_reads_them() -> None:
    assert sqlite_path("sqlite:///mlflow.db") == Path("mlflow.db")
    assert sqlite_path("sqlite:////tmp/x/mlflow.db") == Path("/tmp/x/mlflow.db")
    assert sqlite_path("http://127.0.0.1:5000") is None


@pytest.mark.slow
def test_an_unreachable_server_fails_in_seconds_naming_it(tmp_path: Path) -> None:
    """FAULTS 25: MLflow alone would retry for about five minutes."""
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = run_knightctl(
        "train", str(ROUND_TABLE), "--tracking-uri", uri, "--set", "train.epochs=2", cwd=tmp_path, timeout=120
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert f"the MLflow tracking server {uri} is unreachable" in done.stderr
    assert "--no-track" in done.stderr and "Traceback" not in done.stderr
    assert elapsed < 30  # interpreter, torch and MLflow imports included; the check itself is one refused connection


@pytest.mark.slow
def test_two_runs_on_one_new_sqlite_store_both_store_every_metric(tmp_path: Path) -> None:
    """FAULTS 27: started together on a store that does not exist yet, logging every step."""
    args = [
        "train",
        str(ROUND_TABLE),
        "--device",
        "cpu",
        "--set",
        "train.batch_size=64",
        "--set",
        "train.epochs=20",
        "--set",
        "train.log_every_n_steps=1",
        "--set",
        "tracking.log_model=false",
    ]
    processes = [start_knightctl(*args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""}) for _ in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(
            range(1, 261)
        )  # 20 epochs of 13


def test_a_file_store_uri_is_refused_with_the_migration_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULTS 28, asked for by name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError) as caught:
        train(ROUND_TABLE, overrides=QUICK, tracking_uri="./mlruns", device="cpu")
    assert "./mlruns is an MLflow file store, which MLflow 3.13 and later no longer open" in str(caught.value)
    assert "mlflow migrate-filestore --source mlruns --target sqlite:///mlflow.db" in (caught.value.hint or "")


@pytest.mark.slow
def test_an_old_mlruns_is_migrated_by_the_command_the_error_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAULTS 28, found beside the default store: refused before the database exists, then migrated for real."""
    old_run = make_file_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(TrackingError, match="holds runs of an MLflow file store") as caught:
        train(ROUND_TABLE, overrides=QUICK, tracking_uri=uri, device="cpu")
    assert not (tmp_path / "mlflow.db").exists()  # nothing was created that would block the migration
    command = re.search(r"mlflow migrate-filestore [^;,]*", caught.value.hint or "").group(0).strip()
    assert command == f"mlflow migrate-filestore --source ./mlruns --target {uri}"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    subprocess.run(
        [str(mlflow_cli), *shlex.split(command)[1:]], cwd=tmp_path, check=True, capture_output=True, timeout=120
    )
    result = train(ROUND_TABLE, overrides=QUICK, tracking_uri=uri, device="cpu")
    assert result.info.notices == ()  # migrated: nothing left to say
    client = MlflowClient(uri)
    assert client.get_run(old_run).data.metrics == {"val/accuracy": 0.9}  # the old run, next to the new one
    assert client.get_run(result.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_an_unmigrated_mlruns_beside_an_existing_store_is_noted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # absolute: MLflow caches stores by URI in this long-lived process
    make_file_store(tmp_path)
    MlflowClient(uri).search_experiments()  # a database made before knightctl checked for ./mlruns
    result = train(ROUND_TABLE, overrides=QUICK, tracking_uri=uri, device="cpu")
    (notice,) = result.info.notices
    assert f"holds runs of an MLflow file store that {uri} does not show" in notice
    assert "mlflow migrate-filestore --source ./mlruns --target sqlite:///mlruns-migrated.db" in notice


@pytest.mark.slow
def test_a_run_leaves_no_tracking_uri_behind_for_the_next_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI; the next spec's own tracking.uri must still win."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    stores = [tmp_path / "first.db", tmp_path / "second.db"]
    run_ids = [train(ROUND_TABLE, overrides=[*QUICK, f"tracking.uri=sqlite:///{store}"]).run_id for store in stores]
    assert "MLFLOW_TRACKING_URI" not in os.environ
    for store, run_id in zip(stores, run_ids, strict=True):
        assert MlflowClient(f"sqlite:///{store}").get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_the_default_store_follows_the_working_folder_from_run_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow caches a store per URI string: after a chdir (a notebook's), the relative default
    `sqlite:///mlflow.db` must still mean the new folder's file, for the run and for its metrics."""
    folders = [tmp_path / "first", tmp_path / "second"]
    run_ids = []
    for folder in folders:
        folder.mkdir()
        monkeypatch.chdir(folder)
        run_ids.append(train(ROUND_TABLE, overrides=QUICK, tracking_uri="sqlite:///mlflow.db").run_id)
    for folder, run_id in zip(folders, run_ids, strict=True):
        run = MlflowClient(f"sqlite:///{folder}/mlflow.db").get_run(run_id)
        assert run.info.status == "FINISHED" and "train/loss" in run.data.metrics
