"""Training metrics gathered as device tensors and read back in one transfer per evaluation.

Calling `.item()` on a loss every step would wait for the device every step. Instead each step's
loss tensor joins a window, a window closes into one pending point every `log_every_n_steps`
steps, and `collect()` turns every pending tensor into Python floats with a single `tolist()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from knightctl.errors import RunFailed


@dataclass
class StepMetrics:
    """Windows of per-step losses, closed into (step, {metric: tensor}) points."""

    window: list[torch.Tensor] = field(default_factory=list)
    pending: list[tuple[int, dict[str, torch.Tensor | float]]] = field(default_factory=list)
    first_step_of_window: int = 1

    def add_loss(self, loss: torch.Tensor) -> None:
        self.window.append(loss.detach())

    def close_window(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor | None) -> None:
        """Record the window's mean loss, the gradient norm at `step` and the learning rate."""
        if not self.window:
            return
        if grad_norm is None:
            grad_norm = gradient_norm(model)
        values: dict[str, torch.Tensor | float] = {
            "train/loss": torch.stack(self.window).mean(),
            "train/grad_norm": grad_norm,
            "train/lr": float(optimizer.param_groups[0]["lr"]),
        }
        self.pending.append((step, values))
        self.window.clear()
        self.first_step_of_window = step + 1

    def add_point(self, step: int, values: dict[str, torch.Tensor | float]) -> None:
        self.pending.append((step, values))

    def collect(self) -> list[tuple[int, dict[str, float]]]:
        """Every pending point as floats (one device transfer); fails on a non-finite loss."""
        points, self.pending = self.pending, []
        tensors = [v for _, values in points for v in values.values() if isinstance(v, torch.Tensor)]
        floats = iter(torch.stack([t.reshape(()).float() for t in tensors]).tolist() if tensors else [])
        resolved = [(step, {k: (next(floats) if isinstance(v, torch.Tensor) else v) for k, v in values.items()}) for step, values in points]
        for step, values in resolved:
            loss = values.get("train/loss")
            if loss is not None and not math.isfinite(loss):
                raise RunFailed(
                    f"the training loss became {loss} by step {step}",
                    hint="lower optimizer.lr, set train.grad_clip, or look for bad rows in the data",
                )
        return resolved


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """Euclidean norm of all gradients together, as a device tensor (no synchronisation)."""
    norms = [p.grad.detach().norm() for p in model.parameters() if p.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, target: str) -> dict[str, torch.Tensor | float]:
    """Validation loss, and accuracy for classification losses, as device tensors."""
    model.eval()
    try:
        outputs = model(x)
        values: dict[str, torch.Tensor | float] = {"val/loss": loss_fn(outputs, y)}
        if target == "binary":
            values["val/accuracy"] = ((outputs > 0).to(y.dtype) == y).float().mean()
        elif target == "class":
            values["val/accuracy"] = (outputs.argmax(dim=-1) == y).float().mean()
    finally:
        model.train()
    return values
