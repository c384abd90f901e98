"""knightctl-grail: an example third-party knightctl plugin, installed with pip.

It offers `grail::soft_clamp`: limit * tanh(x / limit), a smooth clamp to (-limit, limit) that
is the identity to first order near 0. knightctl finds this module through the `knightctl`
entry-point group in pyproject.toml and calls its `register_ops` hook.

The op is a `torch.library.custom_op` taking a tensor and a Python float: custom-op schemas
accept `float` arguments (with defaults), so the layer option `limit` reaches the op directly.
"""

from __future__ import annotations

import torch
from pydantic import Field

from knightctl import OpDef, Params, hookimpl

__version__ = "0.1.0"


@torch.library.custom_op("grail::soft_clamp", mutates_args=())
def soft_clamp(x: torch.Tensor, limit: float = 3.0) -> torch.Tensor:
    """limit * tanh(x / limit)."""
    return limit * torch.tanh(x / limit)


@soft_clamp.register_fake
def _(x, limit=3.0):
    return torch.empty_like(x)  # shape, dtype and device only: what torch.compile/export trace with


def _setup_context(ctx, inputs, output):
    x, limit = inputs
    ctx.limit = limit
    ctx.save_for_backward(x)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    t = torch.tanh(x / ctx.limit)
    # d/dx limit * tanh(x / limit) = 1 - tanh^2(x / limit); torch ops on the saved input, so
    # autograd can differentiate this again (second order).
    return grad * (1 - t * t), None  # None: no gradient for the float `limit`


soft_clamp.register_autograd(_backward, setup_context=_setup_context)


@soft_clamp.register_vmap
def _(info, in_dims, x, limit=3.0):
    # Elementwise with one tensor input: the batch dimension can stay where it is.
    return soft_clamp(x, limit), in_dims[0]


def reference(x: torch.Tensor, limit: float = 3.0) -> torch.Tensor:
    return limit * torch.tanh(x / limit)


class SoftClampParams(Params):
    limit: float = Field(default=3.0, gt=0, description="outputs stay strictly inside (-limit, limit)")


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4)]:
        # Spread wide enough to reach the saturated part of tanh, where the clamp shows.
        yield ((4 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype),)
    yield ((2 * torch.randn(5, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype), 1.5)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="grail::soft_clamp",
            fn=soft_clamp,
            sample_inputs=sample_inputs,
            reference=reference,
            max_order=2,
            forward_mode=False,  # custom_op + register_autograd has no jvp: tangents come back None
            vmap=True,  # register_vmap above
            params=SoftClampParams,
            description="limit * tanh(x / limit), a smooth clamp (example third-party plugin)",
        )
    )
