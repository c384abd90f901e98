"""Training checkpoints: what one holds, written atomically, read back with `weights_only=True`.

A checkpoint holds only tensors and plain Python values, so loading it never runs pickled code.
It is written to a temporary file in the destination folder, flushed to disk, then renamed over
the destination: a crash at any moment leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from knightctl._version import __version__
from knightctl.errors import KnightctlError

FORMAT_VERSION = 1


def training_state(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, spec_data: dict[str, Any],
                   spec_digest: str, seed: int, epoch: int, step: int) -> dict[str, Any]:
    """A checkpoint's contents: weights, optimizer and scheduler state, where training stood, the spec."""
    return {
        "format_version": FORMAT_VERSION,
        "knightctl_version": __version__,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "step": step,
        "seed": seed,
        "spec": spec_data,
        "spec_digest": spec_digest,
    }


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write `state` to `path` atomically; the folder is created if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint, refusing anything but tensors and plain values (FAULTS 23)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KnightctlError(f"{path}: no such checkpoint") from None
    except Exception as exc:
        raise KnightctlError(f"{path}: not a readable knightctl checkpoint: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
