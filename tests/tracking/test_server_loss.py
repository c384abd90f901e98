"""FAULTS 26 (the MLflow server lost mid-run), `knightctl sync`, and FAULTS 20 (stale RUNNING runs).

Real processes only: an `mlflow server` (sqlite backend, proxied artifacts) killed with SIGKILL and
started again on the same port and database; `knightctl train` subprocesses held at chosen epochs
by tests/plugins/hold_at_epochs.py, so that the server goes away at a known point; `knightctl sync`.
The journal itself is checked against a real sqlite store, its lock against a second process, and
the errors of a server away against a refusal's on real sockets and servers.
"""

from __future__ import annotations

import http.server
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient
from ports import free_port
from processes import MlflowServer, run_knightctl, start_knightctl, wait_until

from knightctl.tracking.offline.fallback import failure_reason, is_connection_error
from knightctl.tracking.offline.journal import LOCK_FILE, Journal

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
HOLD_PLUGIN = ROOT / "tests" / "plugins" / "hold_at_epochs.py"
EPOCHS = 12  # one step and one evaluation per epoch: every epoch sends its metrics


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # no job workers: a start costs half the CPU
    running = MlflowServer(tmp_path_factory.mktemp("server"), env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    running.start()
    yield running
    running.kill()


def start_training(folder: Path, tracking_uri: str, experiment: str, hold: str, *extra: str) -> subprocess.Popen[str]:
    """`knightctl train` in `folder`, held at the epochs in `hold`; stdout and stderr go to files there."""
    plugins = folder / "plugins"
    plugins.mkdir()
    shutil.copy(HOLD_PLUGIN, plugins)
    env = {"KNIGHTCTL_TEST_HOLD_EPOCHS": hold, "KNIGHTCTL_TEST_HOLD_DIR": str(folder)}
    args = [
        "--plugins-dir",
        str(plugins),
        "train",
        str(ROUND_TABLE),
        "--tracking-uri",
        tracking_uri,
        "--device",
        "cpu",
        "--set",
        "train.log_every_n_steps=1",
        "--set",
        "train.eval_every_n_epochs=1",
        "--set",
        f"train.epochs={EPOCHS}",
        "--set",
        f"tracking.experiment={experiment}",
        *extra,
    ]
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        return start_knightctl(*args, cwd=folder, env=env, stdout=out, stderr=err)


def wait_for(condition, process: subprocess.Popen[str], folder: Path, timeout_s: float = 120) -> None:
    wait_until(condition, timeout_s, process=process, explain=(folder / "stderr.txt").read_text, interval_s=0.1)


def finish(process: subprocess.Popen[str], folder: Path) -> tuple[str, str]:
    assert process.wait(timeout=180) == 0, (folder / "stderr.txt").read_text()
    return (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text()


def the_run(client: MlflowClient, experiment: str):
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return run


def warnings_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.mark.slow
def test_a_server_back_before_the_end_gets_every_metric_while_the_run_goes_on(
    server: MlflowServer, tmp_path: Path
) -> None:
    training = start_training(tmp_path, server.uri, "lost-and-back", "4,8", "--set", "tracking.log_model=false")
    wait_for((tmp_path / "at-4").exists, training, tmp_path)
    server.kill()
    server.start(wait=False)  # it takes seconds to answer: epochs 5-8 log to no server at all
    (tmp_path / "go-4").touch()
    wait_for(
        lambda: (tmp_path / "at-8").exists() and warnings_in((tmp_path / "stderr.txt").read_text()), training, tmp_path
    )
    journal_root = tmp_path / ".knightctl" / "journal"
    assert [path.name for path in journal_root.iterdir() if not path.name.startswith(".")]  # something is journaled
    server.wait_until_up()
    wait_for(
        lambda: not [p for p in journal_root.iterdir() if not p.name.startswith(".")], training, tmp_path, timeout_s=60
    )
    (tmp_path / "go-8").touch()  # delivered by the writer's own retry, while the run was held at epoch 8
    stdout, stderr = finish(training, tmp_path)

    client = MlflowClient(server.uri)
    run = the_run(client, "lost-and-back")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(1, EPOCHS + 1))
    (warning,) = warnings_in(stderr)
    assert server.uri in warning and f".knightctl/journal/{run.info.run_id}" in warning and "knightctl sync" in warning
    assert "\x1b" not in stderr
    assert "is back" in stderr
    assert not (journal_root / run.info.run_id).exists()


@pytest.mark.slow
def test_a_server_still_away_at_the_end_leaves_a_journal_that_sync_delivers(
    server: MlflowServer, tmp_path: Path
) -> None:
    training = start_training(tmp_path, server.uri, "lost-for-good", "4")
    wait_for((tmp_path / "at-4").exists, training, tmp_path)
    server.kill()
    (tmp_path / "go-4").touch()
    began = time.monotonic()
    stdout, stderr = finish(training, tmp_path)
    assert time.monotonic() - began < 60  # no MLflow retries for minutes against the dead server
    run_id = re.search(r"MLflow run ([0-9a-f]{32})", stdout).group(1)
    journal = Journal(tmp_path / ".knightctl" / "journal", run_id)
    assert journal.exists()
    waiting = journal.pending()
    assert waiting.metrics and waiting.artifacts >= 3 and waiting.status == "FINISHED"
    (warning,) = warnings_in(stderr)
    assert "knightctl sync" in warning
    assert (
        f"waiting in .knightctl/journal/{run_id}; run `knightctl sync` once {server.uri} is back" in stdout
    )  # the summary says so

    server.start()
    synced = run_knightctl("sync", cwd=tmp_path, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "delivered 1 journal" in synced.stdout
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(1, EPOCHS + 1))
    artifacts = {a.path for folder in ("checkpoints", "plots") for a in client.list_artifacts(run_id, folder)}
    assert {"checkpoints/final.pt", "plots/training_curves.png", "plots/decision_boundary.png"} <= artifacts
    assert "plots/confusion_matrix.png" in artifacts  # the table too, as a file (only log_table makes it a table)
    assert "confusion_matrix.json" in {a.path for a in client.list_artifacts(run_id)}
    note = run.data.tags["mlflow.note.content"]
    assert "| status | FINISHED |" in note and "knightctl sync" in note and "model was not logged" in note
    assert not journal.path.exists()


@pytest.mark.slow
def test_sync_marks_a_run_whose_process_was_killed_as_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    before = time.time()
    training = start_training(tmp_path, uri, "stale", "2", "--set", "tracking.log_model=false")
    wait_for((tmp_path / "at-2").exists, training, tmp_path)
    training.send_signal(signal.SIGKILL)  # no clean-up at all: the run stays RUNNING
    training.wait(timeout=20)
    client = MlflowClient(uri)
    stale = the_run(client, "stale")
    assert stale.info.status == "RUNNING"
    tags = stale.data.tags
    assert tags["knightctl.process.pid"] == str(training.pid) and tags["knightctl.process.host"] == socket.gethostname()
    started = datetime.fromisoformat(tags["knightctl.process.started"])  # readable: 2026-12-03T18:20:31.523+00:00
    assert started.utcoffset() == timedelta(0) and before - 1 < started.timestamp() < time.time()

    synced = run_knightctl("sync", "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    run = the_run(client, "stale")
    assert run.info.status == "KILLED" and run.info.end_time
    assert f"marked KILLED: run {run.info.run_id}" in synced.stdout
    note = run.data.tags["mlflow.note.content"]
    assert "Marked KILLED by `knightctl sync`" in note and f"({training.pid} on " in note


@pytest.fixture
def sqlite_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str, str]:
    monkeypatch.chdir(tmp_path)  # the store's ./mlruns in tmp
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    return client, uri, client.create_run(client.create_experiment("journal")).info.run_id


def test_a_line_torn_by_a_crash_is_skipped_and_the_rest_delivered(
    sqlite_run: tuple[MlflowClient, str, str], tmp_path: Path
) -> None:
    client, uri, run_id = sqlite_run
    journal = Journal(tmp_path / "journal", run_id, uri)
    journal.add_metrics([("loss", 0.5, 1000, 1)])
    with open(journal.path / "journal.jsonl", "ab") as out:
        out.write(b'{"op": "metrics", "metrics": [["loss", 0.4, 10')  # the writer died mid-line
    assert journal.pending().metrics == 1
    journal.add_metrics([("loss", 0.3, 1002, 3)])  # a later append starts a line of its own
    delivered = journal.deliver(client)
    assert delivered.metrics == 2
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 3]
    assert not journal.path.exists()


def test_an_entry_is_never_delivered_twice(sqlite_run: tuple[MlflowClient, str, str], tmp_path: Path) -> None:
    """A delivery that stops halfway resumes after the last entry the store took: the artifact it
    delivered, overwritten in the store since, is not sent again."""
    client, uri, run_id = sqlite_run
    journal = Journal(tmp_path / "journal", run_id, uri)
    note = tmp_path / "note.txt"
    note.write_text("journaled")
    journal.add_artifact(note, "notes")
    journal.add_tags({"stage": "done"})
    journal.add_status("FINISHED")
    client.delete_run(run_id)  # the artifact still goes in; the tags are refused
    with pytest.raises(Exception, match="active"):
        journal.deliver(client)
    waiting = journal.pending()
    assert (waiting.artifacts, waiting.tags, waiting.status) == (0, 1, "FINISHED")

    client.restore_run(run_id)
    note.write_text("newer")
    client.log_artifact(run_id, str(note), "notes")
    delivered = journal.deliver(client)
    assert (delivered.artifacts, delivered.tags, delivered.status) == (0, 1, "FINISHED")
    assert (
        client.download_artifacts(run_id, "notes/note.txt", str(tmp_path / "back"))
        and (tmp_path / "back" / "note.txt").read_text() == "newer"
    )
    run = client.get_run(run_id)
    assert run.data.tags["stage"] == "done" and run.info.status == "FINISHED"
    assert journal.deliver(client).metrics == 0 and not journal.path.exists()


HOLD_JOURNAL = """
import sys, time
from pathlib import Path
from knightctl.tracking.offline.journal import Journal
print("appending", flush=True)
Journal(Path(sys.argv[1]), sys.argv[2], "sqlite:///x.db").add_tags({"by": "the other process"})
print(time.time(), flush=True)
"""


def test_an_append_waits_for_the_journal_lock_another_process_holds(tmp_path: Path) -> None:
    """The lock is a filelock on the journal folder's lock file: any process, on any OS, takes the same."""
    root = tmp_path / "journal"
    root.mkdir()
    with FileLock(root / LOCK_FILE):
        other = subprocess.Popen(
            [sys.executable, "-c", HOLD_JOURNAL, str(root), "f" * 32], stdout=subprocess.PIPE, text=True
        )
        assert other.stdout is not None and other.stdout.readline() == "appending\n"
        time.sleep(0.5)  # s: time for it to append, were the lock free
        released = time.time()
    appended = float(other.communicate(timeout=60)[0])
    assert other.returncode == 0 and appended >= released
    assert Journal(root, "f" * 32).pending().tags == 1


class Answering(http.server.BaseHTTPRequestHandler):
    """Answers every request with `status` and a text body, as a proxy before a busy server does."""

    status = 503

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"busy")

    def log_message(self, *args: object) -> None:
        pass


def failure_of(uri: str) -> Exception:
    """What MlflowClient raises asking `uri` for a run that is not there."""
    try:
        MlflowClient(uri).get_run("0" * 32)
    except Exception as exc:
        return exc
    pytest.fail(f"{uri} gave a run that does not exist")


@pytest.mark.slow
def test_a_lost_server_is_told_from_a_refusal_by_the_types_of_its_errors(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused, silent and 503 are a server away; the MLflow server's own 404 is a refusal."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # s: the silent server's wait
    refused = failure_of(f"http://127.0.0.1:{free_port()}")
    assert is_connection_error(refused) and failure_reason(refused) == "connection refused"
    with socket.socket() as silent:  # takes connections (the kernel does), answers nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        timed_out = failure_of(f"http://127.0.0.1:{silent.getsockname()[1]}")
    assert is_connection_error(timed_out) and failure_reason(timed_out).startswith("no answer within")
    busy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    try:
        unavailable = failure_of(f"http://127.0.0.1:{busy.server_address[1]}")
    finally:
        busy.shutdown()
    assert is_connection_error(unavailable) and "error status" in failure_reason(unavailable)
    refusal = failure_of(server.uri)  # RESOURCE_DOES_NOT_EXIST, a 404
    assert not is_connection_error(refusal) and "not found" in failure_reason(refusal).lower()
