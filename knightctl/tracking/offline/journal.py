"""Keep on disk what a run could not send to its tracking store, until the store takes it.

While a tracking server is away, the metric writer (metricwriter.py) appends metric batches here,
and the run's last calls follow (fallback.py): tags, artifact files and the terminal status. The
writer delivers them when the server is back; `knightctl sync` (sync.py) does it later.

One folder per run, `.knightctl/journal/RUN_ID/` under the working directory by default:
- `run.json`: the run id and the tracking URI the entries belong to;
- `journal.jsonl`: the entries in order, one JSON object a line (append-only);
- `files/N/NAME`: a copy of each artifact file, so the original may change or go meanwhile;
- `delivered`: how many lines the store has taken, rewritten atomically after each delivery,
  so an entry is never sent twice; once every entry is in, the folder is removed.
A line torn by a crash (no newline, or not JSON) is skipped. One lock file in the journal folder
puts appends and deliveries, from any process, one after the other.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MetricTuple = tuple[str, float, int, int]  # key, value, timestamp (ms), step: a metric as journaled and sent

JOURNAL_DIR = Path(".knightctl") / "journal"
LOCK_FILE = ".lock"  # in the journal folder: a dot name, so that no run's journal is ever taken for it
_BATCH_LIMIT = 1000  # metrics per log_batch call: MLflow's own limit


def journal_root(root: Path | None = None) -> Path:
    """The folder holding every run's journal: `root`, else `.knightctl/journal` here (absolute)."""
    return (root if root is not None else Path.cwd() / JOURNAL_DIR).absolute()


@dataclass
class Counts:
    """Entries by kind: waiting in a journal, or delivered from one."""

    metrics: int = 0
    tags: int = 0
    artifacts: int = 0
    status: str | None = None  # the terminal status, if the journal holds it

    def add(self, entry: Mapping[str, Any]) -> None:
        op = entry.get("op")
        if op == "metrics":
            self.metrics += len(entry["metrics"])
        elif op == "tags":
            self.tags += len(entry["tags"])
        elif op == "artifact":
            self.artifacts += 1
        elif op == "status":
            self.status = entry["status"]

    def __bool__(self) -> bool:
        return bool(self.metrics or self.tags or self.artifacts or self.status)


class Journal:
    """The undelivered MLflow operations of one run; appends and deliveries are safe across processes."""

    def __init__(self, root: Path, run_id: str, tracking_uri: str | None = None) -> None:
        self.root, self.run_id = root, run_id
        self.path = root / run_id
        self._uri = tracking_uri

    @property
    def tracking_uri(self) -> str:
        if self._uri is None:
            self._uri = str(json.loads((self.path / "run.json").read_text(encoding="utf-8"))["tracking_uri"])
        return self._uri

    def exists(self) -> bool:
        return (self.path / "journal.jsonl").exists()

    def add_metrics(self, metrics: list[MetricTuple]) -> None:
        self._append({"op": "metrics", "metrics": [list(metric) for metric in metrics]})

    def add_tags(self, tags: Mapping[str, str]) -> None:
        self._append({"op": "tags", "tags": {key: str(value) for key, value in tags.items()}})

    def add_artifact(self, local_path: Path, artifact_dir: str) -> None:
        """Copy `local_path` into the journal (complete before its entry exists), to go to `artifact_dir`."""
        with _locked(self.root):
            files = self.path / "files"
            files.mkdir(parents=True, exist_ok=True)
            folder = files / str(sum(1 for _ in files.iterdir()))
            folder.mkdir()
            staged = folder / f".{local_path.name}.tmp"
            shutil.copyfile(local_path, staged)
            staged.rename(folder / local_path.name)
            self._append_locked(
                {"op": "artifact", "file": str((folder / local_path.name).relative_to(self.path)), "path": artifact_dir}
            )

    def add_status(self, status: str, end_time_ms: int | None = None) -> None:
        self._append({"op": "status", "status": status, "end_time": end_time_ms or int(time.time() * 1000)})

    def pending(self) -> Counts:
        """What is still to deliver."""
        counts = Counts()
        if not self.exists():
            return counts
        with _locked(self.root):
            for _, entry in self._undelivered():
                counts.add(entry)
        return counts

    def deliver(self, client: Any) -> Counts:
        """Send every undelivered entry to `client`'s store, in order, and remove the journal once all are in.

        Consecutive metric entries go in one `log_batch` call (up to 1000 metrics). At the first
        failure the store's exception propagates; what went before is recorded as delivered.
        """
        delivered = Counts()
        with _locked(self.root):
            if not self.path.exists():
                return delivered
            for consumed, group in _groups(self._undelivered()):
                _send(client, self.run_id, self.path, group)
                _write_atomic(self.path / "delivered", str(consumed))
                for entry in group:
                    delivered.add(entry)
            self._discard()
        return delivered

    def _append(self, entry: Mapping[str, Any]) -> None:
        with _locked(self.root):
            self._append_locked(entry)

    def _append_locked(self, entry: Mapping[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "run.json").exists():
            _write_atomic(
                self.path / "run.json", json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri})
            )
        with open(self.path / "journal.jsonl", "ab") as out:
            if out.tell() and _last_byte(self.path / "journal.jsonl") != b"\n":
                out.write(b"\n")  # end a line a crash tore, so that this entry is not glued to it
            # No fsync: a crash of this process keeps what was written; a power cut may tear the
            # last line, which reading skips.
            out.write(json.dumps(entry).encode() + b"\n")

    def _undelivered(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(lines consumed once this entry is delivered, entry) for every complete, readable line not yet delivered."""
        try:
            data = (self.path / "journal.jsonl").read_bytes()
        except FileNotFoundError:
            return
        cursor = self.path / "delivered"
        done = int(cursor.read_text() or 0) if cursor.exists() else 0
        lines = data.split(b"\n")[:-1]  # the last piece has no newline: empty, or torn by a crash
        for number, line in enumerate(lines[done:], start=done + 1):
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # torn by a crash: its entry was never complete
            if isinstance(entry, dict) and "op" in entry:
                yield number, entry

    def _discard(self) -> None:
        """Remove the delivered journal: renamed first, so that a crash never leaves half of one."""
        if self.path.exists():
            gone = self.root / f".delivered-{self.run_id}-{time.time_ns()}"
            os.replace(self.path, gone)
            shutil.rmtree(gone, ignore_errors=True)


def journals(root: Path | None = None) -> list[Journal]:
    """Every run's journal under `root` (default `.knightctl/journal` here), oldest first."""
    folder = journal_root(root)
    if not folder.is_dir():
        return []
    found = [path for path in folder.iterdir() if (path / "run.json").exists() and not path.name.startswith(".")]
    return [Journal(folder, path.name) for path in sorted(found, key=lambda path: path.stat().st_mtime)]


def _groups(entries: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Entries in delivery units: consecutive metric entries up to _BATCH_LIMIT metrics, anything else alone."""
    group: list[dict[str, Any]] = []
    consumed = 0
    for number, entry in entries:
        fits = (
            entry["op"] == "metrics" and sum(len(e["metrics"]) for e in group) + len(entry["metrics"]) <= _BATCH_LIMIT
        )
        if group and not (fits and group[-1]["op"] == "metrics"):
            yield consumed, group
            group = []
        group.append(entry)
        consumed = number
    if group:
        yield consumed, group


def _send(client: Any, run_id: str, folder: Path, group: list[dict[str, Any]]) -> None:
    from mlflow.entities import Metric, RunTag

    entry = group[0]
    if entry["op"] == "metrics":
        metrics = [Metric(*metric) for e in group for metric in e["metrics"]]
        for start in range(0, len(metrics), _BATCH_LIMIT):  # one entry alone may hold more
            client.log_batch(run_id, metrics=metrics[start : start + _BATCH_LIMIT], synchronous=True)
    elif entry["op"] == "tags":
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in entry["tags"].items()], synchronous=True)
    elif entry["op"] == "artifact":
        client.log_artifact(run_id, str(folder / entry["file"]), entry["path"] or None)
    elif entry["op"] == "status":
        client.set_terminated(run_id, entry["status"], end_time=entry["end_time"])


def _write_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the journal folder's lock, waiting for it as long as it takes, on every OS."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / LOCK_FILE):
        yield
