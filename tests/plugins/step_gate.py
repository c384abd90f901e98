"""Test plugin: a `test_gate` layer (identity) that controls a training run from outside.

Counting only training forwards (train mode, gradients on), at step $KNIGHTCTL_GATE_STEP it
creates $KNIGHTCTL_GATE_DIR/reached (and reached-RANK, RANK being the distributed rank, 0 in a
single process) and waits (up to 60 s) for $KNIGHTCTL_GATE_DIR/release: a test sends its signals
while the step is held, so they land mid-step, at a known step. While it holds, each SIGINT or
SIGTERM goes to the handler that was there (knightctl's) as before, and once that handler has
returned, the gate appends the signal's name to handled-RANK: the test's handshake, so that it
releases the step (or sends a second signal) only after the first one was handled. At step
$KNIGHTCTL_NAN_STEP it multiplies by NaN instead, so the loss becomes NaN at that step. At step
$KNIGHTCTL_CRASH_STEP of its process, in the distributed rank $KNIGHTCTL_CRASH_RANK, it raises: a
crashing rank. Only in a job's first attempt (torchrun's restart count 0), which a restart gets
past, unless $KNIGHTCTL_CRASH_ALWAYS is set.

A `test_drift` layer adds a value that grows with every training forward, kept outside the
model's state: a run resumed in a new process cannot match the run straight through, which
`--verify-resume` must notice.
"""

import contextlib
import os
import signal
import threading
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
            rank = os.environ.get("RANK", "0")
            with _witnessing_signals(folder / f"handled-{rank}"):
                (folder / f"reached-{rank}").touch()
                (folder / "reached").touch()
                deadline = time.monotonic() + 60
                while not (folder / "release").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
        return x


@contextlib.contextmanager
def _witnessing_signals(record: Path):
    """SIGINT and SIGTERM still reach the Python handlers in place; after one returns, its signal's
    name is appended to `record`. A handler that raises (knightctl's, on a second signal) records
    nothing; a signal without a Python handler (or outside the main thread) is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    previous = {number: handler for number, handler in previous.items() if callable(handler)}

    def witness(number, frame):
        previous[number](number, frame)
        with open(record, "a") as out:
            out.write(signal.Signals(number).name + "\n")

    for number in previous:
        signal.signal(number, witness)
    try:
        yield
    finally:
        for number, handler in previous.items():
            if signal.getsignal(number) is witness:
                signal.signal(number, handler)


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
