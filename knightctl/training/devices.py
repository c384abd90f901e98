"""Choose the device once, seed every random number generator, and switch on determinism.

Only `auto` chooses (CUDA, then MPS, then CPU); a device asked for by name that is not here is an
error, never a silent fallback.
"""

from __future__ import annotations

import inspect
import os
import random
import secrets
from dataclasses import dataclass

import torch

from knightctl.errors import DeviceError


@dataclass(frozen=True)
class DeviceChoice:
    """The device a run uses, and why in words (for the console and the MLflow tags)."""

    device: torch.device
    reason: str

    @property
    def description(self) -> str:
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return str(self.device)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(requested: str = "auto") -> DeviceChoice:
    """Turn `auto`, `cpu`, `cuda`, `cuda:N` or `mps` into a device that exists here."""
    if requested == "auto":
        if torch.cuda.is_available():
            return DeviceChoice(torch.device("cuda", torch.cuda.current_device()), "auto: CUDA is available")
        if _mps_available():
            return DeviceChoice(torch.device("mps"), "auto: no CUDA; Apple MPS is available")
        return DeviceChoice(torch.device("cpu"), "auto: neither CUDA nor MPS is available")
    if requested == "cpu":
        return DeviceChoice(torch.device("cpu"), "requested")
    if requested == "cuda" or requested.startswith("cuda:"):
        return DeviceChoice(_checked_cuda(requested), "requested")
    if requested == "mps":
        if not _mps_available():
            built = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_built()
            why = (
                "this torch build has MPS but no MPS device is available (MPS needs macOS 12.3+ on Apple silicon)"
                if built
                else "this torch build has no MPS support (MPS is for macOS on Apple silicon)"
            )
            raise DeviceError(
                f"--device mps: {why}", hint="use --device auto to pick the best device present, or --device cpu"
            )
        return DeviceChoice(torch.device("mps"), "requested")
    raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")


def _checked_cuda(requested: str) -> torch.device:
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise DeviceError(
            f"--device {requested}: {why}", hint="use --device auto to pick the best device present, or --device cpu"
        )
    count = torch.cuda.device_count()
    index = int(requested.partition(":")[2] or torch.cuda.current_device())
    if index >= count:
        raise DeviceError(
            f"--device {requested}: there {'is' if count == 1 else 'are'} only {count} CUDA device{'s' * (count != 1)} "
            f"(cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def new_seed() -> int:
    """A fresh seed for a spec that gives none (always logged, so the run can be repeated)."""
    return secrets.randbelow(2**31)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) with `seed`."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loop_seed(seed: int, offset: int, rank: int) -> int:
    """The training loop's seed: the spec's, moved by `offset` (1 from the start, the step on a resume
    with another number of processes) and by the rank, mixed so that nearby inputs are far apart
    (Knuth's multiplicative hash), within the 32 bits every generator takes."""
    return (seed * 2654435761 + offset + 7919 * rank) % 2**32


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels everywhere (slower on CUDA); errors on ops that have none."""
    if enabled:
        # cuBLAS needs a fixed workspace for reproducible matmuls; it is read when CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    if torch.backends.flags_frozen():
        # Importing torch's own test utilities (as a plugin that defines OpInfo entries does)
        # freezes attribute assignment to the cudnn flags. set_flags is the function torch's
        # `cudnn.flags()` context uses; it takes None for the flags to leave alone.
        flags: dict[str, object] = {"_benchmark": False, "_deterministic": enabled}
        if "_fp32_precision" in inspect.signature(torch.backends.cudnn.set_flags).parameters:
            flags["_fp32_precision"] = None  # torch 2.9+: its default would reset the precision
        torch.backends.cudnn.set_flags(**flags)
    else:
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = False
