"""knight::swish: x * sigmoid(x) (SiLU) as an autograd.Function supporting every AD mode.

The lesson: an autograd.Function only does what its staticmethods say. `backward` alone gives
reverse mode. Forward mode (`torch.autograd.forward_ad`, torch.func.jvp, jacfwd, gradcheck's
check_forward_ad) needs a `jvp` staticmethod, and the tensors jvp reads must be saved with
`ctx.save_for_forward` in `setup_context` (ctx.saved_tensors only holds what
`save_for_backward` saved). torch.vmap needs a batching rule; `generate_vmap_rule = True` asks
torch to derive one, which works when `forward` takes no ctx and does only torch operations.

Both derivatives use the same formula, f'(x) = s + x * s * (1 - s) with s = sigmoid(x), written
with differentiable torch ops on the saved input, so autograd can differentiate the backward
again: second (and higher) order derivatives work.
"""

from __future__ import annotations

import torch

from knightctl import OpDef, hookimpl


def _derivative(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s + x * s * (1 - s)


class _Swish(torch.autograd.Function):
    generate_vmap_rule = True  # torch.vmap batches forward, backward and jvp for us

    @staticmethod
    def forward(x):
        return x * torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)  # for backward
        ctx.save_for_forward(x)  # for jvp: forward mode reads ctx.saved_tensors from here

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _derivative(x)  # vector-Jacobian product (the Jacobian is diagonal)

    @staticmethod
    def jvp(ctx, x_tangent):
        (x,) = ctx.saved_tensors
        return x_tangent * _derivative(x)  # Jacobian-vector product: the same diagonal


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x)."""
    return _Swish.apply(x)


def reference(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4), (2, 2, 3)]:
        yield ((3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype),)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::swish",
            fn=swish,
            sample_inputs=sample_inputs,
            reference=reference,
            max_order=2,  # backward is differentiable torch code; the tests check up to 2
            forward_mode=True,  # the jvp staticmethod
            vmap=True,  # generate_vmap_rule
            description="x * sigmoid(x) with hand-written backward and jvp, vmap-able",
        )
    )
