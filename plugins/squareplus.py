"""knight::squareplus: (x + sqrt(x^2 + b)) / 2, a plain differentiable function.

Squareplus is a smooth ReLU like softplus, made of arithmetic and a square root only (no exp or
log). It is >= 0, tends to max(x, 0) as b -> 0, and is smooth everywhere for b > 0.

The lesson: often the best custom gradient is none. Written with ordinary torch ops, the op gets
its derivatives from autograd: backward, forward mode (jvp), torch.vmap, and derivatives of any
order, all correct by construction. Write an autograd.Function only when that is not good enough
(speed, memory, numerical stability, or a deliberately different gradient).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from knightctl import OpDef, Params, hookimpl


def squareplus(x: torch.Tensor, b: float = 4.0) -> torch.Tensor:
    """(x + sqrt(x^2 + b)) / 2; b > 0 sets how rounded the corner at 0 is."""
    return (x + torch.sqrt(x * x + b)) / 2


def reference(x: torch.Tensor, b: float = 4.0) -> torch.Tensor:
    # Written differently on purpose: hypot(x, sqrt(b)) = sqrt(x^2 + b), without squaring x.
    return (x + torch.hypot(x, torch.full_like(x, math.sqrt(b)))) / 2


class SquareplusParams(Params):
    b: float = Field(default=4.0, gt=0, description="curvature at 0; squareplus tends to ReLU as b -> 0")


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4)]:
        yield ((3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype),)
    yield ((3 * torch.randn(5, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype), 0.5)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::squareplus",
            fn=squareplus,
            sample_inputs=sample_inputs,
            reference=reference,
            max_order=3,  # any order works; 3 is what the example tests check
            forward_mode=True,  # autograd's own jvp formulas
            vmap=True,  # made of torch ops, each with a batching rule
            params=SquareplusParams,
            description="(x + sqrt(x^2 + b)) / 2, derivatives all from autograd",
        )
    )
