"""Checkpoint files: written atomically, carrying their own checksum, read back with `weights_only=True`.

A checkpoint is an ordinary `torch.save` file (a zip archive), so `torch.load(path,
weights_only=True)` opens it anywhere. knightctl adds two things:
- a SHA-256 of the archive, kept in the zip's own comment field (which torch ignores), checked
  before anything is unpickled: a truncated or corrupted file is refused with a clear error, never
  half-read and never mistaken for "no checkpoint" (FAULTS 22);
- an atomic write: a temporary file in the destination folder, fsync, `os.replace`, fsync of the
  folder. A crash, a kill or a full disk at any moment leaves the previous checkpoint whole and no
  temporary file behind (FAULTS 20, 21).
Loading accepts only tensors and plain Python values (FAULTS 23).

`CheckpointFolder` keeps one run's checkpoints, named by step, and prunes all but the last K.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightctl.errors import CheckpointError

FORMAT_VERSION = 2
_CHECKSUM_PREFIX = b"knightctl-sha256:"
_CHECKSUM_LENGTH = len(_CHECKSUM_PREFIX) + 64  # bytes of the zip comment: prefix and hex digest
_END_RECORD = b"PK\x05\x06"  # the zip's end-of-central-directory record; its last 2 bytes hold the comment length
_NAME = re.compile(r"^step-(\d{9})\.pt$")
_WRITE_CHUNK = 1 << 20  # bytes per os.write call
_UMASK = os.umask(0o022)  # read once (it can only be read by setting it), and put back at once
os.umask(_UMASK)


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write `state` to `path` atomically, with its checksum; the folder is created if need be.

    Raises CheckpointError (naming the path and the reason, ENOSPC included) with nothing left
    behind: any previous file at `path` is untouched.
    """
    payload = _with_checksum(_serialise(state))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        try:
            os.fchmod(handle, 0o666 & ~_UMASK)  # mkstemp makes it private; a checkpoint is an ordinary file
            _write_fully(handle, payload)
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    _sync_folder(path.parent)
    return path


def verify_checkpoint(path: Path) -> bytes:
    """The archive bytes of the checkpoint at `path`, once its checksum matches; else CheckpointError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {exc.strerror or exc}") from None
    comment = data[-_CHECKSUM_LENGTH:]
    end_record = len(data) - _CHECKSUM_LENGTH - 22
    if not comment.startswith(_CHECKSUM_PREFIX) or end_record < 0 or data[end_record : end_record + 4] != _END_RECORD:
        raise CheckpointError(
            f"{path}: truncated or not a knightctl checkpoint ({len(data):,} bytes, no checksum at its end)",
            hint="resume from an earlier checkpoint of the run (knightctl train --resume PATH); nothing was loaded",
        )
    archive = data[: end_record + 20] + b"\x00\x00"  # as torch.save wrote it, with an empty comment
    if hashlib.sha256(archive).hexdigest().encode() != comment[len(_CHECKSUM_PREFIX) :]:
        raise CheckpointError(
            f"{path}: corrupted: its contents do not match the checksum written with it",
            hint="resume from an earlier checkpoint of the run (knightctl train --resume PATH); nothing was loaded",
        )
    return archive


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Verify, then read a checkpoint, refusing anything but tensors and plain values (FAULTS 23)."""
    import torch

    archive = verify_checkpoint(path)
    try:
        state = torch.load(io.BytesIO(archive), map_location="cpu", weights_only=True)
    except Exception as exc:
        found = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", str(exc), re.IGNORECASE)
        what = f"it pickles {found.group(1)}" if found else f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        raise CheckpointError(
            f"{path}: refused: a checkpoint may hold only tensors and plain values, and {what}",
            hint="knightctl loads checkpoints with weights_only=True only, so that a file can never run code",
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: a torch file, but not a knightctl checkpoint (no format_version)")
    if state["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer knightctl (checkpoint format {state['format_version']}, this one reads "
            f"{FORMAT_VERSION})"
        )
    return state


@dataclass(frozen=True)
class CheckpointFolder:
    """One run's checkpoints, `step-000000340.pt` and so on; all but the newest `keep_last` pruned."""

    path: Path
    keep_last: int = 3

    def file_for(self, step: int) -> Path:
        return self.path / f"step-{step:09d}.pt"

    def save(self, state: dict[str, Any]) -> Path:
        """Write a checkpoint for `state["step"]`, then prune the oldest beyond `keep_last`.

        Temporary files a killed writer left behind (SIGKILL gives no chance to clean up) go too:
        one run writes one folder, so none of them is in use.
        """
        for stale in self.path.glob(".step-*.tmp") if self.path.is_dir() else ():
            stale.unlink(missing_ok=True)
        written = save_checkpoint(state, self.file_for(int(state["step"])))
        for old in self.checkpoints()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return written

    def best_file(self) -> Path:
        """best.pt: the model of record's weights (training/best.py); not a point to resume from."""
        return self.path / "best.pt"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary files never match the name)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if _NAME.match(p.name))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None


def _serialise(state: dict[str, Any]) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _with_checksum(archive: bytes) -> bytes:
    """The archive with its SHA-256 in the zip comment field."""
    if archive[-22:-18] != _END_RECORD or archive[-2:] != b"\x00\x00":
        raise CheckpointError("torch.save wrote an archive without a plain end record; cannot add a checksum")
    comment = _CHECKSUM_PREFIX + hashlib.sha256(archive).hexdigest().encode()
    return archive[:-2] + struct.pack("<H", len(comment)) + comment


def _write_fully(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(handle, view[:_WRITE_CHUNK])
        view = view[written:]


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible, nor needed, on Windows."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _write_error(path: Path, exc: OSError) -> CheckpointError:
    reason = exc.strerror or str(exc)
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    hint = "free some space (or set checkpoint.dir to a larger disk) and resume" if exc.errno == errno.ENOSPC else None
    return CheckpointError(f"cannot write checkpoint {path}: {reason}{code}; no partial file was left", hint=hint)
