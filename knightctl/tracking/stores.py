"""Make sure a tracking store can take a run before training starts, and open it safely.

Three things go wrong at the start of a run, each slowly or obscurely if left to MLflow:
- a tracking server that is not there: MLflow retries with backoff for about five minutes before
  it gives up, so knightctl asks the server once, with a short timeout, first (FAULTS 25);
- two knightctl processes creating one sqlite store at once: MLflow's schema creation races
  ("table ... already exists", a failed migration). A file lock, held while the store is first
  opened and the experiment found or made, puts them one after the other (FAULTS 27);
- an MLflow file store (`./mlruns` with `meta.yaml` files), which MLflow 3.13+ refuses to open and
  whose runs the sqlite store does not show: explained with the migration command (FAULTS 28).
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from knightctl.errors import ResumeError, TrackingError
from knightctl.tracking.owner import owner_alive, run_owner
from knightctl.tracking.provenance import run_context_tags

PROBE_TIMEOUT_S = 5.0  # one request to a server that answers takes milliseconds; 5 s covers a slow VPN
_MIGRATE = "mlflow migrate-filestore --source {source} --target {target}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working directory), else None."""
    if not uri.startswith(("sqlite:", "sqlite+")):  # sqlite+pysqlite:/// names a driver
        return None
    path = unquote(urlparse(uri).path).lstrip("/")
    if uri.startswith("sqlite:////"):  # four slashes: an absolute path
        return Path("/" + path)
    return Path(path or ":memory:")


def absolute_uri(uri: str) -> str:
    """`uri` with a relative sqlite path made absolute, so that it names the same store from anywhere."""
    database = sqlite_path(uri)
    if database is None or database.is_absolute() or str(database) == ":memory:":
        return uri
    return "sqlite:///" + str(database.resolve())


def is_file_store(uri: str) -> bool:
    """Whether `uri` names MLflow's old file store: a `file:` URI or a plain path."""
    scheme = urlparse(uri).scheme
    return scheme == "file" or (scheme == "" and uri not in ("databricks",)) or (len(scheme) == 1 and os.name == "nt")


def check_server(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingError, within `timeout_s`, if nothing answers HTTP at `uri`.

    Any HTTP answer counts, an error status included (a server behind authentication answers 401):
    only a refused connection, an unknown host or silence means the server is not there.
    """
    started = time.monotonic()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ssl.SSLError):
            return  # it answered; whether MLflow trusts its certificate is MLflow's question
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout_s:.0f} s"
        elapsed = time.monotonic() - started
        raise TrackingError(
            f"the MLflow tracking server {uri} is unreachable: {reason} (checked in {elapsed:.1f} s)",
            hint="start it (mlflow server --host 127.0.0.1 --port 5000), fix --tracking-uri or MLFLOW_TRACKING_URI, or "
            "train with --no-track",
        ) from None


def check_store(uri: str, cwd: Path | None = None) -> list[str]:
    """Refuse a store no run can start on; return notices worth a line on screen.

    Servers are asked once (`check_server`). A file store is refused with its migration command.
    A sqlite store whose working directory holds an unmigrated `./mlruns` file store is refused
    while the database does not exist yet (the migration needs a new database file) and noted
    once it does.
    """
    cwd = cwd or Path.cwd()
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return []
    if is_file_store(uri) and not _file_store_allowed():
        source = Path(unquote(urlparse(uri).path) if uri.startswith("file:") else uri)
        raise TrackingError(
            f"{uri} is an MLflow file store, which MLflow 3.13 and later no longer open",
            hint="migrate it once to a sqlite database and use that: "
            + _MIGRATE.format(source=source, target="sqlite:///mlflow.db")
            + ", then --tracking-uri sqlite:///mlflow.db",
        )
    database = sqlite_path(uri)
    if database is None or _file_store_allowed():
        return []
    return _old_file_store_notices(cwd / "mlruns", database if database.is_absolute() else cwd / database, uri)


def _file_store_allowed() -> bool:
    return os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true")


def _old_file_store_notices(mlruns: Path, database: Path, uri: str) -> list[str]:
    run_id = _file_store_run(mlruns)
    if run_id is None:
        return []
    if not database.exists():
        raise TrackingError(
            f"{mlruns} holds runs of an MLflow file store, which MLflow 3.13 and later no longer open, and {uri} does "
            "not exist yet",
            hint="migrate them into it first, so old and new runs share one store: "
            + _MIGRATE.format(source="./mlruns", target=uri)
            + "; or keep them apart with --tracking-uri",
        )
    if _has_run(uri, run_id):
        return []  # migrated already: its runs are in the database
    return [
        f"{mlruns} holds runs of an MLflow file store that {uri} does not show. To see them, migrate them into a "
        f"database of their own ({_MIGRATE.format(source='./mlruns', target='sqlite:///mlruns-migrated.db')}) and "
        "open it with: knightctl ui --tracking-uri sqlite:///mlruns-migrated.db"
    ]


def _file_store_run(mlruns: Path) -> str | None:
    """The id of one run in a file store at `mlruns` (run folders hold a meta.yaml), or None.

    The sqlite store keeps artifacts under ./mlruns too, but never writes meta.yaml files.
    """
    if not (mlruns / "0").is_dir() and not any(mlruns.glob("*/meta.yaml")):
        return None
    for experiment_meta in mlruns.glob("*/meta.yaml"):
        for run_meta in experiment_meta.parent.glob("*/meta.yaml"):
            return run_meta.parent.name
    return None


def _has_run(uri: str, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(run_id)
    except MlflowException:
        return False
    return True


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock, across processes and on every OS, on the sqlite store at `uri`; other
    stores pass (a server or a database server orders its own writes).

    The lock file lives in the temporary folder, named after the database's absolute path, so that
    nothing is added beside the user's database.
    """
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    from filelock import FileLock

    key = hashlib.sha256(str(database.resolve()).encode()).hexdigest()[:16]
    with FileLock(Path(tempfile.gettempdir()) / f"knightctl-store-{key}.lock"):  # waits as long as it takes
        yield


def create_run(
    uri: str, experiment: str, *, run_name: str, tags: Mapping[str, str], start_time_ms: int | None = None
) -> tuple[Any, str, str, list[str]]:
    """Check the store, then make a RUNNING run in `experiment`: (client, experiment id, run id, notices).

    The store is first opened (its schema created if new) and the experiment found or made under
    `store_lock`. Any failure is a TrackingError naming the URI.
    """
    from mlflow.tracking import MlflowClient

    notices = check_store(uri)
    try:
        with store_lock(uri):
            client = MlflowClient(uri)
            experiment_id = experiment_id_for(client, experiment)
        run_id = new_run(client, experiment_id, run_name=run_name, tags=tags, start_time_ms=start_time_ms)
    except TrackingError:
        raise
    except Exception as exc:  # a bad URI, a store MLflow cannot open: say which, not a traceback
        raise TrackingError(f"cannot start an MLflow run on {uri}: {type(exc).__name__}: {exc}") from None
    return client, experiment_id, run_id, notices


def new_run(
    client: Any, experiment_id: str, *, run_name: str, tags: Mapping[str, str], start_time_ms: int | None = None
) -> str:
    """Make a RUNNING run in experiment `experiment_id` with MLflow's own context tags under `tags`
    (provenance.run_context_tags), as `mlflow.start_run` would; its id."""
    tags = run_context_tags(tags)
    return client.create_run(experiment_id, start_time=start_time_ms, run_name=run_name, tags=tags).info.run_id


def experiment_id_for(client: Any, name: str) -> str:
    """The id of experiment `name`, created if need be (safely against a concurrent creator)."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name)
    except MlflowException as exc:
        experiment = client.get_experiment_by_name(name)  # created by a concurrent run meanwhile
        if experiment is not None:
            return experiment.experiment_id
        raise TrackingError(f"cannot open MLflow experiment {name!r}: {exc}") from None


def reopen_run(uri: str, run_id: str, *, tags: Mapping[str, str]) -> tuple[Any, str, str, list[str]]:
    """Check the store, then take over run `run_id` to resume it: (client, experiment id, run id, notices).

    Refused if the run is not in the store, was deleted, or is RUNNING in a process that still
    lives on this machine. A RUNNING run whose process died (SIGKILL, a power cut) is taken over.
    """
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    notices = check_store(uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(
            f"MLflow run {run_id} is not in {uri}", hint="resume against the store it was tracked in (--tracking-uri)"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise ResumeError(
            f"MLflow run {run_id} in {uri} was deleted",
            hint="restore it (mlflow runs restore) or resume from the checkpoint file without tracking",
        )
    if run.info.status == "RUNNING" and owner_alive(run.data.tags):
        owner = run_owner(run.data.tags)
        raise ResumeError(
            f"MLflow run {run_id} is still being trained, by process {owner.pid if owner else '?'} on this machine"
        )
    try:
        client.log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()], synchronous=True)
    except MlflowException as exc:
        raise TrackingError(f"cannot resume MLflow run {run_id} on {uri}: {exc}") from None
    return client, run.info.experiment_id, run_id, notices
