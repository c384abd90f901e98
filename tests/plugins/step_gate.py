"""Test plugin: a `test_gate` layer (identity) that controls a training run from outside.

Counting only training forwards (train mode, gradients on), at step $KNIGHTCTL_GATE_STEP it
creates $KNIGHTCTL_GATE_DIR/reached and waits (up to 60 s) for $KNIGHTCTL_GATE_DIR/release: a
test sends its signals while the step is held, so they land mid-step, at a known step. At step
$KNIGHTCTL_NAN_STEP it multiplies by NaN instead, so the loss becomes NaN at that step. At step
$KNIGHTCTL_CRASH_STEP of its process, in the distributed rank $KNIGHTCTL_CRASH_RANK, it raises: a
crashing rank. Only in a job's first attempt (torchrun's restart count 0), which a restart gets
past, unless $KNIGHTCTL_CRASH_ALWAYS is set.

A `test_drift` layer adds a value that grows with every training forward, kept outside the
model's state: a run resumed in a new process cannot match the run straight through, which
`--verify-resume` must notice.
"""

import os
import time
from pathlib import Path

import torch
from torch import nn

from knightctl import LayerDef, hookimpl


class StepGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return x
        self.steps += 1
        if (
            self.steps == int(os.environ.get("KNIGHTCTL_CRASH_STEP", "0"))
            and os.environ.get("RANK") == os.environ.get("KNIGHTCTL_CRASH_RANK")
            and (os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" or os.environ.get("KNIGHTCTL_CRASH_ALWAYS"))
        ):
            raise RuntimeError(f"test crash in rank {os.environ['RANK']} at step {self.steps}")
        if self.steps == int(os.environ.get("KNIGHTCTL_NAN_STEP", "0")):
            return x * float("nan")
        if self.steps == int(os.environ.get("KNIGHTCTL_GATE_STEP", "0")):
            folder = Path(os.environ["KNIGHTCTL_GATE_DIR"])
            (folder / "reached").touch()
            deadline = time.monotonic() + 60
            while not (folder / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return x


class Drift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0  # not a buffer: no checkpoint keeps it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.calls += 1
        return x + 1e-3 * self.calls


@hookimpl
def register_layers(register):
    register(
        LayerDef(
            name="test_gate",
            build=lambda params: StepGate(),
            description="identity that holds or poisons one training step",
        )
    )
    register(
        LayerDef(
            name="test_drift", build=lambda params: Drift(), description="adds a count kept outside the model's state"
        )
    )
