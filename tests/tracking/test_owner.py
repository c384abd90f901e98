"""Who owns a RUNNING run (tracking/owner.py), told from its tags against real processes: a live
child, one that has exited, and a live one whose start time differs from the recorded one (its id
reused). Runs tracked before the tags moved under `knightctl.process.` are read by the old names,
and `knightctl sync` marks such a stale run KILLED naming its process."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from processes import run_knightctl

from knightctl.tracking.owner import owner_alive, owner_tags, run_owner


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def test_this_process_writes_readable_tags_under_one_prefix_and_reads_them_back() -> None:
    tags = owner_tags()
    assert sorted(tags) == ["knightctl.process.host", "knightctl.process.pid", "knightctl.process.started"]
    assert datetime.fromisoformat(tags["knightctl.process.started"]).tzinfo is not None
    owner = run_owner(tags)
    assert owner is not None and owner.host == socket.gethostname()
    assert owner.started == pytest.approx(psutil.Process().create_time(), abs=0.01)
    assert owner_alive(tags) is True


def test_a_live_process_an_exited_one_and_a_reused_id_are_told_apart(child: subprocess.Popen[bytes]) -> None:
    started = psutil.Process(child.pid).create_time()
    host = socket.gethostname()
    live = {"knightctl.process.host": host, "knightctl.process.pid": str(child.pid)}
    assert owner_alive(live | {"knightctl.process.started": iso(started)}) is True
    assert owner_alive(live | {"knightctl.process.started": iso(started - 3600)}) is False  # the id was reused
    assert owner_alive(live | {"knightctl.process.host": "elsewhere"}) is None  # cannot tell from here
    assert owner_alive({}) is None
    child.kill()
    child.wait()
    assert owner_alive(live | {"knightctl.process.started": iso(started)}) is False


def test_the_old_tag_names_are_still_read(child: subprocess.Popen[bytes]) -> None:
    started = psutil.Process(child.pid).create_time()
    old = {"knightctl.host": socket.gethostname(), "knightctl.pid": str(child.pid)}
    assert owner_alive(old | {"knightctl.pid_started": f"{started:.2f}"}) is True
    assert owner_alive(old | {"knightctl.pid_started": f"{started - 3600:.2f}"}) is False
    assert owner_alive(old | {"knightctl.pid_started": "0.00"}) is True  # start time unknown: the id decides


@pytest.mark.slow
def test_sync_marks_a_stale_run_with_the_old_tags_killed(tmp_path: Path) -> None:
    exited = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = exited.stdout.strip()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    tags = {"knightctl.host": socket.gethostname(), "knightctl.pid": pid, "knightctl.pid_started": "1700000000.00"}
    run = client.create_run(client.create_experiment("old"), tags=tags)
    done = run_knightctl("sync", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    stale = client.get_run(run.info.run_id)
    assert stale.info.status == "KILLED"
    assert f"({pid} on {socket.gethostname()})" in stale.data.tags["mlflow.note.content"]
