"""Everything a run needs to continue exactly where it stopped, as a checkpoint's contents.

Bit-identical resumption needs more than weights and optimizer state: every random number
generator a step may draw from (torch on the CPU and each accelerator, NumPy, Python), the
generator that shuffles the data, where in the epoch the run stood, and the per-step losses
not yet averaged into a logged window. All of it is stored as tensors and plain values, so the
checkpoint loads with `weights_only=True`.

Where the run stands is a `ResumePoint`: the next epoch to run, how many of its batches are done,
and the shuffling generator's state from before that epoch's order was drawn. Restoring it and
drawing again gives the same order, of which the done batches are skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knightctl._version import __version__
from knightctl.checkpoint.files import FORMAT_VERSION


@dataclass(frozen=True)
class ResumePoint:
    """Where a stopped run goes on: `epoch` (1-based) after `batch` of its batches, at global `step`."""

    epoch: int
    batch: int
    step: int
    order_state: torch.Tensor  # the data-order generator's state before `epoch`'s order was drawn


def training_state(
    *,
    parts: Any,
    point: ResumePoint,
    spec: Any,
    run_id: str | None,
    tracking_uri: str | None,
    metrics: dict[str, Any],
    history: list[tuple[int, dict[str, float]]],
    latest: dict[str, float],
    best: dict[str, Any] | None = None,
    early_stopping: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint's contents (`parts` are the run's Components, `spec` its ExperimentSpec)."""
    source = spec.source
    return {
        "format_version": FORMAT_VERSION,
        "knightctl_version": __version__,
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "epoch": point.epoch - 1,  # epochs done
        "batch": point.batch,  # batches done of the next one
        "step": point.step,
        "order_state": point.order_state.clone(),
        "rng": rng_states(),
        "seed": spec.seed,
        "spec": spec.to_data(),
        "spec_digest": spec.digest(),
        "spec_source": None
        if source is None
        else {
            "path": str(source.base_dir / Path(source.path).name),
            "text": source.text,
            "overrides": list(source.overrides),
        },
        "run_id": run_id,
        "tracking_uri": tracking_uri,
        "metrics": metrics,  # StepMetrics.snapshot(): losses of steps not yet in a logged window
        "history": [[step, dict(values)] for step, values in history],
        "latest": dict(latest),
        "best": best,  # ModelOfRecord.state(): the best step so far, its value and weights
        "preprocessing": parts.data.preprocessing.record(),  # the feature columns and data.standardize's statistics
        "early_stopping": early_stopping,  # EarlyStopping.state(): its count, when train.early_stopping is on
    }


def restore(state: dict[str, Any], parts: Any) -> ResumePoint:
    """Load weights, optimizer and scheduler state; where to go on. (Generators: `set_rng_states`.)"""
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if parts.scheduler is not None and state.get("scheduler") is not None:
        parts.scheduler.load_state_dict(state["scheduler"])
    return ResumePoint(int(state["epoch"]) + 1, int(state["batch"]), int(state["step"]), state["order_state"])


def rng_states() -> dict[str, Any]:
    """The state of every global generator: torch (CPU, CUDA, MPS), NumPy and Python's `random`."""
    import numpy as np

    name, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, python_state, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        states["mps"] = mps.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put every generator back as `rng_states()` found it (those of absent devices are skipped)."""
    import numpy as np

    torch.set_rng_state(states["torch"])
    saved = states["numpy"]
    np.random.set_state(
        (
            saved["name"],
            saved["keys"].numpy().astype(np.uint32),
            saved["pos"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    )
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])
    if "mps" in states and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])
