"""`--verify-resume`: prove on a user's own spec that stopping and resuming changes nothing.

The spec is trained three times from the same seed: once through (the run that is tracked), then
split in two: stopped partway, mid-epoch where epochs have several batches, with a checkpoint
written to a temporary folder, and resumed from that checkpoint in a fresh set of components.
The two histories must agree exactly, bit for bit: every step's loss, every weight and every
optimizer state tensor (`torch.equal`, not a tolerance). On the CPU they do; on CUDA only with
deterministic algorithms.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knightctl.checkpoint.files import load_checkpoint
from knightctl.errors import Interrupted
from knightctl.plugins.events import Observer, RunResult
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import ExperimentSpec, load_spec
from knightctl.training.devices import new_seed
from knightctl.training.run import train


@dataclass(frozen=True)
class ResumeVerdict:
    """Whether the split run matched the run straight through, and where they first differ."""

    identical: bool
    steps: int
    stopped_at_step: int
    stopped_in_epoch: int
    batch_in_epoch: int  # batches of that epoch done before the stop; 0 at an epoch's end
    tensors_compared: int
    first_difference: str | None
    result: RunResult  # the run straight through (the tracked one)


def verify_resume(
    spec: ExperimentSpec | str | Path,
    *,
    overrides: Sequence[str] = (),
    plugins: PluginSettings | None = None,
    observers: Sequence[Observer] = (),
    **options: Any,
) -> ResumeVerdict:
    """Train `spec` straight through (tracked, with `observers`), then stopped halfway and resumed
    (untracked, silent), and compare. `options` are passed to every `train` call (device, ...)."""
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides, plugins=plugins)
    spec = spec if spec.seed is not None else spec.with_seed(new_seed())
    through = train(spec, plugins=plugins, observers=observers, record_losses=True, **options)
    per_epoch = through.info.steps_per_epoch
    stop_at = through.steps // 2
    if per_epoch > 1 and stop_at % per_epoch == 0:
        stop_at += 1  # mid-epoch, where resuming has the most to get right
    quiet = {**options, "track": False, "skip_gradcheck": True}
    with tempfile.TemporaryDirectory(prefix="knightctl-verify-resume-") as folder:
        try:
            first = train(
                spec, plugins=plugins, checkpoint_dir=folder, stop_at_step=stop_at, record_losses=True, **quiet
            )
            assert first.checkpoint is not None
            second = train(resume=first.checkpoint, plugins=plugins, record_losses=True, **quiet)
        except Interrupted as stopped:  # its checkpoint is about to vanish with the folder: say what stands
            finished = (
                f"; the run itself finished (MLflow run {through.run_id})"
                if through.run_id
                else "; the run itself finished"
            )
            raise Interrupted(
                f"{stopped.signal_name}: interrupted while checking the resume{finished}",
                signal_name=stopped.signal_name,
                run_id=through.run_id,
            ) from None
        resumed_state = load_checkpoint(second.checkpoint) if second.checkpoint else None
    straight_state = load_checkpoint(through.checkpoint) if through.checkpoint else None
    split_losses = (first.step_losses or []) + (second.step_losses or [])
    difference = _first_loss_difference(through.step_losses or [], split_losses)
    compared, tensor_difference = _compare_states(straight_state, resumed_state)
    return ResumeVerdict(
        identical=difference is None and tensor_difference is None,
        steps=through.steps,
        stopped_at_step=stop_at,
        stopped_in_epoch=stop_at // per_epoch + (1 if stop_at % per_epoch else 0),
        batch_in_epoch=stop_at % per_epoch,
        tensors_compared=compared,
        first_difference=difference or tensor_difference,
        result=through,
    )


def _first_loss_difference(straight: list[float], split: list[float]) -> str | None:
    if len(straight) != len(split):
        return f"the split run took {len(split)} steps, the straight one {len(straight)}"
    for step, (a, b) in enumerate(zip(straight, split, strict=True), start=1):
        if a != b:  # exact: a resumed run must not differ in the last bit
            return f"step {step}: loss {a!r} straight through, {b!r} resumed"
    return None


def _compare_states(straight: dict[str, Any] | None, resumed: dict[str, Any] | None) -> tuple[int, str | None]:
    """Count the weight and optimizer tensors compared; name the first that differs."""
    if straight is None or resumed is None:
        return 0, "a final checkpoint is missing"
    pairs = [(f"model {name}", tensor, resumed["model"].get(name)) for name, tensor in straight["model"].items()]
    for index, values in straight["optimizer"]["state"].items():
        other = resumed["optimizer"]["state"].get(index, {})
        pairs += [
            (f"optimizer state {index}.{key}", value, other.get(key))
            for key, value in values.items()
            if isinstance(value, torch.Tensor)
        ]
    for name, a, b in pairs:
        if b is None or a.shape != b.shape or not torch.equal(a, b):
            gap = (
                f" (largest difference {(a.double() - b.double()).abs().max().item():.3g})"
                if b is not None and a.shape == b.shape
                else ""
            )
            return len(pairs), f"{name} differs{gap}"
    return len(pairs), None
