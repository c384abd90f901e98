"""knight::sign_ste: sign(x) forward, a clipped identity backward (a straight-through estimator).

sign(x) has derivative 0 everywhere it has one, so true gradients would stop learning dead in
binarised networks. A straight-through estimator (STE) keeps the forward and *replaces* the
backward with something useful: here the gradient of hardtanh, grad * (|x| <= 1), which passes
gradients through where the input is small and blocks them where it is saturated.

The lessons: a backward is a choice, not a consequence of the forward. When it deliberately
differs from the true derivative, say so (`surrogate_gradient`): finite differences of the
forward are 0, so a numeric gradient check will and should disagree. And `@once_differentiable`
states that this backward is not meant to be differentiated again (max_order=1): it runs without
recording a graph and hands back a result wired to an error node, so a double backward fails
instead of quietly differentiating the surrogate a second time.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from knightctl import OpDef, hookimpl


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.sign(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # The surrogate: the derivative of hardtanh(x), not of sign(x).
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x); gradients pass straight through where |x| <= 1."""
    return _SignSTE.apply(x)


def reference(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x)


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4), (2, 3, 5)]:
        # |x| in (0.1, 0.9) or (1.1, 1.9): away from the jump of sign at 0 and from the clip edges
        # at |x| = 1, so that a small perturbation never changes which side of a kink it is on.
        magnitude = 0.1 + 0.8 * torch.rand(shape, generator=gen, dtype=torch.float64)
        magnitude = magnitude + (torch.rand(shape, generator=gen) < 0.5).to(torch.float64)
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
        yield ((sign * magnitude).to(device=device, dtype=dtype),)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::sign_ste",
            fn=sign_ste,
            sample_inputs=sample_inputs,
            reference=reference,
            surrogate_gradient=(
                "straight-through estimator: backward is the clipped identity grad * (|x| <= 1), "
                "while the true derivative of sign(x) is 0, so it does not match finite differences"
            ),
            max_order=1,  # @once_differentiable: a double backward raises
            forward_mode=False,  # no jvp staticmethod
            vmap=False,  # no vmap rule
            description="sign(x) with a straight-through (clipped identity) gradient",
        )
    )
