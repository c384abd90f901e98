"""The model of record: the step whose weights a run stands by, picked by a monitored metric.

A run's last epoch is rarely its best: validation loss bottoms out and rises again, accuracy peaks
and falls. At every evaluation the monitored metric (`train.monitor`: val/loss by default, or
train/loss without a validation split) is compared with the best so far; an improvement copies the
weights to the CPU (microseconds for the chapter's 21 parameters; for a large model one
device-to-host copy per improvement, after the evaluation has synchronised the device anyway).
The copy travels in every checkpoint, so a resumed run goes on knowing its best; it is written
beside them as best.pt, and logged as the run's model unless `tracking.log_model: final`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from knightctl.plugins.events import BestStep
from knightctl.spec.monitor import Goal


@dataclass
class ModelOfRecord:
    """The best value of `metric` so far, the step it was reached at, and the weights of that step."""

    metric: str
    goal: Goal
    value: float | None = None
    step: int | None = None
    weights: dict[str, torch.Tensor] | None = None  # on the CPU
    saved_step: int | None = None  # the step best.pt holds, if it has been written

    def offer(self, step: int, value: float | None, model: nn.Module) -> bool:
        """Keep `model`'s weights if `value` (the metric at `step`) beats the best; ties keep the earlier step."""
        if value is None or not math.isfinite(value) or not self.improves(value):
            return False
        self.value, self.step = float(value), step
        self.weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        return True

    def improves(self, value: float) -> bool:
        if self.value is None:
            return True
        return value < self.value if self.goal == "min" else value > self.value

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of it: plain values and tensors (loadable with weights_only)."""
        return {"metric": self.metric, "goal": self.goal, "value": self.value, "step": self.step, "model": self.weights}

    @classmethod
    def from_state(cls, saved: dict[str, Any] | None, metric: str, goal: Goal) -> ModelOfRecord:
        """The best a checkpoint kept, if it monitored the same metric the same way; else a fresh start."""
        if not saved or saved.get("metric") != metric or saved.get("goal") != goal:
            return cls(metric, goal)
        return cls(metric, goal, saved["value"], saved["step"], saved["model"])

    def file_state(self, spec: Any) -> dict[str, Any]:
        """best.pt's contents: the weights and why they were chosen, not a point to resume from."""
        from knightctl.checkpoint.files import FORMAT_VERSION

        return {
            "format_version": FORMAT_VERSION,
            "kind": "best",
            **self.state(),
            "spec": spec.to_data(),
            "spec_digest": spec.digest(),
        }

    def model_at_best(self, model: nn.Module) -> nn.Module:
        """A CPU copy of `model` holding the best step's weights (the model itself is left alone)."""
        import copy

        copied = copy.deepcopy(model).cpu()
        if self.weights is not None:
            copied.load_state_dict(self.weights)
        return copied.eval()


@dataclass(frozen=True)
class Choice:
    """Which weights are the model of record: the step, and why (`metric` and its value, or the end)."""

    kind: str  # "best" or "final"
    step: int
    metric: str
    goal: str
    value: float | None
    last_step: int

    def why(self) -> str:
        """`the best val/loss (0.1123, lower is better) at step 100 of 300`, or `the last step, 300`."""
        if self.kind == "final" or self.value is None:
            return f"the weights of the last step, {self.last_step:,}"
        better = "lower" if self.goal == "min" else "higher"
        return (
            f"the best {self.metric} ({self.value:.4g}, {better} is better) at step {self.step:,} of {self.last_step:,}"
        )


def choose(log_model: bool | str, best: ModelOfRecord | None, last_step: int) -> Choice:
    """The weights to log: the best step's (`log_model` true or best) when the run found one, else the last."""
    if log_model != "final" and best is not None and best.step is not None and best.weights is not None:
        return Choice("best", best.step, best.metric, best.goal, best.value, last_step)
    metric, goal = (best.metric, best.goal) if best is not None else ("", "min")
    return Choice("final", last_step, metric, goal, None, last_step)


def best_step(position: Any) -> BestStep | None:
    """The best step as `RunResult` reports it, with every metric logged at that step."""
    best = position.best
    if best is None or best.step is None or best.value is None:
        return None
    logged: dict[str, float] = {}
    for step, values in position.history:
        if step == best.step:
            logged.update(values)
    return BestStep(best.metric, best.goal, best.step, best.value, logged)
