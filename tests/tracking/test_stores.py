"""Tracking stores that cannot take a run, or that several runs share (FAULTS 25, 27 and 28)."""

from __future__ import annotations

import json
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
from knightctl.tracking.provenance import git_state, provenance_tags
from knightctl.tracking.stores import create_run, sqlite_path, store_lock
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


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_a_new_run_has_mlflow_s_context_tags_under_knightctl_s_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's context providers tag the run (here: the tags MLFLOW_RUN_CONTEXT names, and the user its
    credentials give); the spec file is its source, and its git tags are the spec's repository's, not
    those of the repository around sys.argv[0] (this checkout, for pytest)."""
    quest = tmp_path / "quest"
    quest.mkdir()
    git(quest, "init", "-q", "-b", "grail")
    (quest / "round_table.yaml").write_text(ROUND_TABLE.read_text())
    git(quest, "add", ".")
    git(quest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    git(quest, "remote", "add", "origin", "https://merlin:s3cret@example.com/knights/quest.git")
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", json.dumps({"knightctl.test.hall": "camelot"}))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "arthur")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = quest / "round_table.yaml"
    client, _, run_id, _ = create_run(uri, "quest", run_name="r", tags=provenance_tags(str(spec), quest))
    tags = client.get_run(run_id).data.tags
    assert tags["knightctl.test.hall"] == "camelot" and tags["mlflow.user"] == "arthur"  # MLflow's
    assert tags["mlflow.source.name"] == str(spec) and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.git.commit"] == git(quest, "rev-parse", "HEAD") and tags["git.dirty"] == "false"
    assert tags["mlflow.source.git.branch"] == "grail"
    assert tags["mlflow.source.git.repoURL"] == "https://example.com/knights/quest.git"  # the token left out
    assert tags["mlflow.runName"] == "r"


def test_a_spec_outside_any_repository_has_no_git_tags_at_all(tmp_path: Path) -> None:
    """Not even MLflow's, which would name the repository of sys.argv[0] (this checkout, for pytest)."""
    if git_state(tmp_path) is not None:
        pytest.skip("the temporary folder is inside a git repository here")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, _, run_id, _ = create_run(uri, "loose", run_name="r", tags=provenance_tags("loose.yaml", tmp_path))
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.source.name"] == "loose.yaml"
    assert not [key for key in tags if key.startswith(("mlflow.source.git", "git."))]


HOLD_LOCK = """
import sys, time
from knightctl.tracking.stores import store_lock
print("waiting", flush=True)
with store_lock(sys.argv[1]):
    print(time.time(), flush=True)
"""


def test_the_store_lock_holds_a_second_process_until_the_first_lets_go(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with store_lock(uri):
        other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, uri], stdout=subprocess.PIPE, text=True)
        assert other.stdout is not None and other.stdout.readline() == "waiting\n"
        time.sleep(0.5)  # s: time for it to take the lock, were it free
        released = time.time()
    acquired = float(other.communicate(timeout=60)[0])
    assert other.returncode == 0 and acquired >= released
    with store_lock(f"sqlite:///{tmp_path}/other.db"), store_lock("http://127.0.0.1:1"):
        pass  # another database has a lock of its own; a server none


def test_a_process_that_never_imports_torch_names_the_same_torch_build_as_one_that_does() -> None:
    """A sweep's parent reads torch's version from its version.py: a wheel's metadata can lack the
    build (`2.5.1` for `2.5.1+cu124`), and the trials, which import torch, give torch.__version__."""
    import subprocess
    import sys

    import torch

    code = "import sys; from knightctl.tracking.provenance import provenance_tags as p; "
    code += "from pathlib import Path; print(p('x', Path('.'))['torch.version'], 'torch' in sys.modules)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert printed == [torch.__version__, "False"]
