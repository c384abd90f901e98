"""knight::grad_reverse: identity forward, -alpha * grad backward (a gradient reversal layer).

In domain-adversarial training a feature extractor feeds both a task head and a domain
classifier. Putting this layer between the features and the domain classifier makes one
backward pass train the classifier to tell domains apart while pushing the features, through
the reversed gradient, to make domains indistinguishable.

The lessons: the forward of an autograd.Function should return a new tensor (`x.clone()`): an
input returned as-is comes back as a view of that input, which a later in-place op (say a ReLU
with inplace=True) may not modify. And a backward may be
deliberately wrong: the true derivative of the identity is 1, this one is -alpha, so the op
declares `surrogate_gradient`. Its backward is linear and made of torch ops, so it can itself be
differentiated (max_order=2): the second derivative is that of the surrogate, not of the identity.
"""

from __future__ import annotations

import torch
from pydantic import Field

from knightctl import OpDef, Params, hookimpl


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(x, alpha):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, alpha = inputs
        ctx.alpha = alpha  # nothing else is needed: the backward does not depend on x

    @staticmethod
    def backward(ctx, grad):
        return -ctx.alpha * grad, None  # None: alpha is a float, not a differentiable input


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """x unchanged; gradients flowing back are multiplied by -alpha."""
    return _GradReverse.apply(x, alpha)


def reference(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return x


class GradReverseParams(Params):
    alpha: float = Field(default=1.0, ge=0, description="how strongly the gradient is reversed (0 blocks it)")


def sample_inputs(device, dtype):
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4)]:
        yield (torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype),)
    yield (torch.randn(5, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype), 0.5)


@hookimpl
def register_ops(register):
    register(
        OpDef(
            name="knight::grad_reverse",
            fn=grad_reverse,
            sample_inputs=sample_inputs,
            reference=reference,
            surrogate_gradient=(
                "gradient reversal for domain-adversarial training: backward is -alpha * grad "
                "while the true derivative of the identity is 1"
            ),
            max_order=2,  # backward is linear torch code, so autograd differentiates it again
            forward_mode=False,  # no jvp staticmethod
            vmap=False,  # no vmap rule
            params=GradReverseParams,
            description="identity forward, gradient multiplied by -alpha (domain-adversarial training)",
        )
    )
