"""Serve MLflow's own UI on a knightctl store, in the foreground, and stop all of it on Ctrl-C.

`mlflow ui` starts a process tree: itself, uvicorn, and (unless switched off, as here) a job
runner with its consumers. The tree runs in a session of its own, so that Ctrl-C reaches
knightctl alone and knightctl stops the whole tree in one move: SIGTERM to the group, a grace
period, then SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from knightctl.errors import Terminated, TrackingError
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.tracking.runlist import local_store_path, require_store

GRACE_S = 5.0  # seconds the server gets to shut down after SIGTERM before it is killed
# The job runner serves MLflow's GenAI features (scorers, trace roll-ups), which knightctl runs
# never use; off, the UI starts as one process instead of about ten, and stops in about a second.
_JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def ui_command(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command line that serves `tracking_uri` on host:port.

    One worker: the UI has one reader, and each extra worker imports MLflow again (4 s of CPU).
    Runs already stored carry their own absolute artifact location, which the server reads
    directly; for a sqlite file, experiments created from the UI put theirs in ./mlruns beside
    it, as MLflow's client does for `knightctl train` with the default sqlite:///mlflow.db.
    """
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    store = local_store_path(tracking_uri)
    if store is not None and tracking_uri.startswith("sqlite"):
        command += ["--default-artifact-root", str(store.resolve().parent / "mlruns")]
    return command


def check_servable(tracking_uri: str) -> None:
    """Raise TrackingError unless MLflow's UI can serve `tracking_uri`: a local store that exists, or a database."""
    if tracking_uri.startswith(("http://", "https://")):
        raise TrackingError(f"{tracking_uri} is a tracking server, which serves its own UI: open it in a browser")
    require_store(tracking_uri)


GENAI_HINT = 'MLflow 3 may open on its GenAI view: choose "Model training" at the top left to see the training runs.'
_LINKED_EXPERIMENTS = 5  # the most recently active ones; the UI lists them all


def experiment_links(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """(experiment name, link to its runs page) for the store's experiments that hold runs, the most
    recently active first: where a reviewer goes, instead of MLflow's landing page."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiments = client.search_experiments(order_by=["last_update_time DESC"], max_results=50)
    links = []
    for experiment in experiments:
        if client.search_runs([experiment.experiment_id], max_results=1):
            links.append((experiment.name, f"{base_url.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs"))
        if len(links) == _LINKED_EXPERIMENTS:
            break
    return links


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) while the server runs, so both stop it alike."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _signal_tree(process: subprocess.Popen[bytes], sig: int) -> None:
    """Send `sig` to the server's whole process group (POSIX), or to the server alone."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, sig)
        elif sig == signal.SIGTERM:
            process.terminate()
        else:
            process.kill()
    except (ProcessLookupError, PermissionError):  # already gone
        pass


def _tree_alive(process: subprocess.Popen[bytes]) -> bool:
    if not hasattr(os, "killpg"):
        return process.poll() is None
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the tree, then SIGKILL whatever is left after GRACE_S (or at a second Ctrl-C)."""
    _signal_tree(process, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    try:
        process.wait(timeout=GRACE_S)
        while _tree_alive(process) and time.monotonic() < deadline:  # a worker still closing
            time.sleep(0.1)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    if process.poll() is None or _tree_alive(process):
        _signal_tree(process, signal.SIGKILL)
        process.wait()


def serve_ui(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run MLflow's UI on `tracking_uri` until it exits (its exit code) or is stopped (130 Ctrl-C, 143 SIGTERM).

    Raises TrackingError, before starting anything, for a local store that does not exist or a
    tracking server (which has its own UI).
    """
    uri, _ = resolve_tracking_uri(tracking_uri)
    check_servable(uri)
    environment = {**os.environ}
    environment.setdefault(_JOB_EXECUTION, "false")
    process = None
    with _sigterm_as_interrupt():
        try:
            process = subprocess.Popen(
                ui_command(uri, host, port), env=environment, start_new_session=hasattr(os, "killpg")
            )
            return process.wait()
        except KeyboardInterrupt as stop:
            if process is not None:
                _stop(process)
            return 143 if isinstance(stop, Terminated) else 130
