"""knight::smooth_relu: softplus(beta * x) / beta, with both derivatives written by hand.

The op is a smooth ReLU: it tends to max(x, 0) as beta grows, and every derivative exists.

The lesson: a `torch.autograd.Function`'s backward is itself just code that autograd may have to
differentiate (double backward: Hessian-vector products, gradient penalties, meta-learning). Here
the backward, grad * sigmoid(beta * x), calls a second Function, `_ScaledSigmoid`, whose own
backward is the hand-written second derivative beta * s * (1 - s). So each order has an explicit
formula, and `gradgradcheck` compares the second one with finite differences of the first.

Written in the "new style": `forward` takes no ctx and `setup_context` saves what backward needs.
"""

from __future__ import annotations

import torch
from pydantic import Field

from knightctl import OpDef, Params, hookimpl


class _ScaledSigmoid(torch.autograd.Function):
    """s = sigmoid(beta * x), the first derivative of smooth_relu; its backward is the second."""

    @staticmethod
    def forward(x, beta):
        return torch.sigmoid(beta * x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, beta = inputs
        ctx.beta = beta  # a Python float: kept on ctx, not saved as a tensor
        # Saving the output (not x) lets backward reuse s instead of recomputing the sigmoid.
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (s,) = ctx.saved_tensors
        # d/dx sigmoid(beta * x) = beta * s * (1 - s). Built from torch ops on the saved output,
        # so a further order would differentiate this line through _ScaledSigmoid again.
        return grad * ctx.beta * s * (1 - s), None  # None: beta is a float, it gets no gradient


class _SmoothReLU(torch.autograd.Function):
    @staticmethod
    def forward(x, beta):
        z = beta * x
        # log(1 + exp(z)) rewritten as max(z, 0) + log1p(exp(-|z|)): exp never overflows.
        return (torch.relu(z) + torch.log1p(torch.exp(-z.abs()))) / beta

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, beta = inputs
        ctx.beta = beta
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # Calling a Function (rather than torch.sigmoid) is what makes the second derivative ours:
        # under create_graph=True autograd records _ScaledSigmoid and uses its backward.
        return grad * _ScaledSigmoid.apply(x, ctx.beta), None


def smooth_relu(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """softplus(beta * x) / beta; larger beta is closer to ReLU."""
    return _SmoothReLU.apply(x, beta)


def reference(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    return torch.nn.functional.softplus(x, beta=beta)


class SmoothReLUParams(Params):
    beta: float = Field(default=1.0, gt=0, description="sharpness; the op tends to ReLU as beta grows")


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4)]:
        x = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype)
        yield (x,)
    # beta given positionally too, as a spec's layer option would pass it by keyword.
    yield ((2 * torch.randn(5, generator=gen, dtype=torch.float64)).to(device=device, dtype=dtype), 2.5)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::smooth_relu",
            fn=smooth_relu,
            sample_inputs=sample_inputs,
            reference=reference,
            max_order=2,  # the second derivative is hand-written; see _ScaledSigmoid
            forward_mode=False,  # no jvp staticmethod: forward-mode AD raises NotImplementedError
            vmap=False,  # no vmap rule and no generate_vmap_rule: torch.vmap raises
            params=SmoothReLUParams,
            description="softplus(beta*x)/beta with hand-written first and second derivatives",
        )
    )
