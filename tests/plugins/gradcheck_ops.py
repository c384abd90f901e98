"""Test plugin for `knightctl gradcheck`: deliberately wrong ops, and tricky ops that are correct.

Every op here is in the `gc::` namespace. Each wrong op has exactly one bug, placed so that exactly
one check of the gradient checker must catch it; every other check the op declares must pass. The
correct ops sit where a naive checker goes wrong: on kinks, on broadcasting, behind a custom op.

`EXPECTED` (at the bottom) maps each op name to the check that must fail:
- "reverse": the reverse-mode Jacobian (backward) against central finite differences;
- "forward": the forward-mode Jacobian (jvp) against finite differences;
- "order 2": the second derivative (a backward of the backward) against finite differences of the first;
- "error": the op cannot even run, and the checker must say so (naming the exception), not crash;
- None: every check must pass.

Declarations are explicit on every op (max_order, forward_mode, vmap), so the checker runs exactly
the checks each op claims to support. Samples are small and deterministic (a seeded generator,
made in float64 and then moved to the requested device and dtype), and keep away from kinks except
in the two ops that are about kinks. They also keep away from the points where a wrong op happens
to be right (e.g. x = 1 for a missing factor of x), so that the bug shows on most elements.
"""

from __future__ import annotations

import torch

from knightctl import OpDef, hookimpl

_F64 = torch.float64


def _signed(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """Random values with |x| in [low, high] and a random sign, in float64."""
    magnitude = low + (high - low) * torch.rand(shape, generator=gen, dtype=_F64)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).to(_F64)
    return sign * magnitude


def _uniform(gen: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    """Random values in [low, high], in float64."""
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=_F64)


def _on(device, dtype, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(t.to(device=device, dtype=dtype) for t in tensors)


# --------------------------------------------------------------------------------------------
# 1. gc::wrong_factor -- must fail "reverse".
# --------------------------------------------------------------------------------------------


class _WrongFactor(torch.autograd.Function):
    """y = x**2 with backward 1.01 * 2x: a 1% error, far above the tolerances (rtol 1e-3).

    WRONG: the reverse-mode check must catch it (analytic 2.02x vs finite differences 2x). A
    checker with a loose relative tolerance (1e-2 or more) would let it through.
    No jvp, no vmap rule, max_order=1: reverse is the only gradient check it runs.
    """

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x * 1.01  # BUG: the 1.01


def _wrong_factor_samples(device, dtype):
    gen = torch.Generator().manual_seed(1)
    # |x| >= 0.5: the error 0.02|x| stays well above atol everywhere.
    yield _on(device, dtype, _signed(gen, (6,), 0.5, 2.0))
    yield _on(device, dtype, _signed(gen, (2, 3), 0.5, 2.0))


# --------------------------------------------------------------------------------------------
# 2. gc::missing_product_term -- must fail "reverse".
# --------------------------------------------------------------------------------------------


class _MissingProductTerm(torch.autograd.Function):
    """y = x * sin(x) with backward grad * sin(x): the product rule's x * cos(x) term is missing.

    WRONG: the reverse-mode check must catch it. Samples keep |x| in [0.3, 1.2], away from
    x = 0 and x = +-pi/2, where x * cos(x) vanishes and the bug would hide.
    """

    @staticmethod
    def forward(x):
        return x * torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sin(x)  # BUG: should be grad * (sin(x) + x * cos(x))


def _x_sin_x(x):
    return x * torch.sin(x)


def _missing_product_term_samples(device, dtype):
    gen = torch.Generator().manual_seed(2)
    yield _on(device, dtype, _signed(gen, (5,), 0.3, 1.2))
    yield _on(device, dtype, _signed(gen, (3, 2), 0.3, 1.2))


# --------------------------------------------------------------------------------------------
# 3. gc::wrong_sign_branch -- must fail "reverse".
# --------------------------------------------------------------------------------------------


class _WrongSignBranch(torch.autograd.Function):
    """ELU: y = x for x > 0, y = exp(x) - 1 for x <= 0 (continuously differentiable, also at 0).

    WRONG: the backward has the wrong sign on the negative branch only (-exp(x) instead of
    exp(x)); the positive branch is right. The reverse-mode check must catch it, on the negative
    elements only. Samples hold both signs and keep |x| >= 0.25, so no perturbation crosses 0.
    """

    @staticmethod
    def forward(x):
        return torch.where(x > 0, x, torch.expm1(x))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 0, torch.ones_like(x), -torch.exp(x))  # BUG: the minus sign


def _wrong_sign_branch_samples(device, dtype):
    gen = torch.Generator().manual_seed(3)
    # A fixed sample with both signs for sure, then a random one.
    yield _on(device, dtype, torch.tensor([-2.0, -1.3, -0.6, -0.25, 0.25, 0.7, 1.4, 2.1], dtype=_F64))
    yield _on(device, dtype, _signed(gen, (3, 4), 0.25, 2.0))


def _elu_reference(x):
    return torch.nn.functional.elu(x)


# --------------------------------------------------------------------------------------------
# 4. gc::wrong_second_input -- must fail "reverse", for input 1 only.
# --------------------------------------------------------------------------------------------


class _WrongSecondInput(torch.autograd.Function):
    """y = x * exp(w), two inputs of one shape.

    WRONG: the gradient for x (input 0), grad * exp(w), is right; the one for w (input 1) forgets
    the factor x (grad * exp(w) instead of grad * x * exp(w)). The reverse-mode check must catch
    it on input 1 only. Samples keep |x| in [0.4, 0.8] or [1.3, 2.0] (away from x = 1, where the
    missing factor is 1 and the bug hides) and w in [-1, 1].
    """

    @staticmethod
    def forward(x, w):
        return x * torch.exp(w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad * torch.exp(w)
        grad_w = grad * torch.exp(w)  # BUG: should be grad * x * exp(w)
        return grad_x, grad_w


def _wrong_second_input_samples(device, dtype):
    gen = torch.Generator().manual_seed(4)
    for shape in [(5,), (2, 3)]:
        small = _signed(gen, shape, 0.4, 0.8)
        large = _signed(gen, shape, 1.3, 2.0)
        x = torch.where(torch.rand(shape, generator=gen) < 0.5, small, large)
        w = _uniform(gen, shape, -1.0, 1.0)
        yield _on(device, dtype, x, w)


def _x_exp_w(x, w):
    return x * torch.exp(w)


# --------------------------------------------------------------------------------------------
# 5. gc::wrong_broadcast_reduction -- must fail "reverse", for input 1 only.
# --------------------------------------------------------------------------------------------


class _WrongBroadcastReduction(torch.autograd.Function):
    """y = x * b with x of shape (n, m) and b of shape (m,), broadcast over the rows of x.

    WRONG: b's gradient must sum the broadcast dimension, (grad * x).sum(0); the backward takes
    the mean instead (1/n of the right value), which has the right shape, so no shape check
    notices. The gradient for x (input 0) is right. The reverse-mode check must catch it on
    input 1 only. Samples keep |x| >= 0.5 so that the column sums are not near 0.
    """

    @staticmethod
    def forward(x, b):
        return x * b

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, b = inputs
        ctx.save_for_backward(x, b)

    @staticmethod
    def backward(ctx, grad):
        x, b = ctx.saved_tensors
        grad_x = grad * b
        grad_b = (grad * x).mean(dim=0)  # BUG: should be .sum(dim=0)
        return grad_x, grad_b


def _wrong_broadcast_reduction_samples(device, dtype):
    gen = torch.Generator().manual_seed(5)
    for rows, cols in [(3, 4), (2, 5)]:
        # Positive x: the column sums of grad * x cannot cancel for an all-ones grad either.
        x = _uniform(gen, (rows, cols), 0.5, 2.0)
        b = _signed(gen, (cols,), 0.5, 2.0)
        yield _on(device, dtype, x, b)


def _x_times_b(x, b):
    return x * b


# --------------------------------------------------------------------------------------------
# 6. gc::wrong_second_order -- must fail "order 2" only; reverse passes.
# --------------------------------------------------------------------------------------------


class _SquareWrongBackward(torch.autograd.Function):
    """x**2, the first derivative of x**3 / 3: its forward is right, its backward (the second
    derivative of gc::wrong_second_order) is not: it returns grad * x instead of grad * 2x."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # BUG: d/dx x**2 is 2x; the factor 2 is forgotten


class _WrongSecondOrder(torch.autograd.Function):
    """y = x**3 / 3; backward grad * x**2 (right), computed by _SquareWrongBackward.

    WRONG at order 2 only: differentiating the backward (double backward) goes through
    _SquareWrongBackward's backward, which is off by a factor 2 (x instead of 2x). The
    first-order reverse check passes; the order-2 check must catch it. Samples keep |x| >= 0.5.
    """

    @staticmethod
    def forward(x):
        return x * x * x / 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * _SquareWrongBackward.apply(x)


def _wrong_second_order_samples(device, dtype):
    gen = torch.Generator().manual_seed(6)
    yield _on(device, dtype, _signed(gen, (5,), 0.5, 2.0))
    yield _on(device, dtype, _signed(gen, (2, 3), 0.5, 2.0))


def _cube_over_3(x):
    return x**3 / 3


# --------------------------------------------------------------------------------------------
# 7. gc::wrong_jvp -- must fail "forward" only; reverse passes.
# --------------------------------------------------------------------------------------------


class _WrongJvp(torch.autograd.Function):
    """y = sin(2x); backward grad * 2cos(2x) (right); jvp tangent * cos(2x) (WRONG).

    The jvp forgets the chain rule's inner factor 2, the backward does not. The reverse-mode check
    passes; the forward-mode check must catch it. jvp reads the input, so setup_context saves it
    with ctx.save_for_forward as well as ctx.save_for_backward. Samples keep |x| in [0.1, 0.6],
    away from the zeros of cos(2x) at |x| = pi/4, where both would be 0.
    """

    @staticmethod
    def forward(x):
        return torch.sin(2 * x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * torch.cos(2 * x)

    @staticmethod
    def jvp(ctx, x_tangent):
        (x,) = ctx.saved_tensors
        return x_tangent * torch.cos(2 * x)  # BUG: should be x_tangent * 2 * cos(2x)


def _wrong_jvp_samples(device, dtype):
    gen = torch.Generator().manual_seed(7)
    yield _on(device, dtype, _signed(gen, (5,), 0.1, 0.6))
    yield _on(device, dtype, _signed(gen, (3, 2), 0.1, 0.6))


def _sin_2x(x):
    return torch.sin(2 * x)


# --------------------------------------------------------------------------------------------
# 8. gc::relu_on_kink -- correct; must pass every check.
# --------------------------------------------------------------------------------------------


def relu_on_kink(x):
    """torch.relu, checked AT its kink: the samples contain exact zeros.

    TRICKY: at x = 0 torch's gradient is 0 (the left derivative), while the central finite
    difference is (relu(h) - relu(-h)) / 2h = 0.5, so torch.autograd.gradcheck fails this op.
    The one-sided differences there are 0 (left) and 1 (right): a checker that recognises the
    kink must accept torch's 0 (it matches the left one) and report the zero elements as kinks.
    The forward-mode tangent at 0 is 0 too. max_order=1: the second derivative at the kink is
    a Dirac delta, which finite differences of the first derivative (1/2h) do not agree with.
    """
    return torch.relu(x)


def _relu_on_kink_samples(device, dtype):
    gen = torch.Generator().manual_seed(8)
    yield _on(device, dtype, torch.tensor([-1.0, 0.0, 0.5, 0.0, 2.0], dtype=_F64))
    x = _signed(gen, (3, 4), 0.2, 2.0)
    x[0, 1] = 0.0
    x[2, 3] = 0.0
    yield _on(device, dtype, x)


def _relu_reference(x):
    return x.clamp(min=0)


# --------------------------------------------------------------------------------------------
# 9. gc::abs_on_kink -- correct; must pass every check.
# --------------------------------------------------------------------------------------------


def abs_on_kink(x):
    """torch.abs, checked AT its kink: the samples contain an exact zero.

    TRICKY: at x = 0 torch returns the gradient sgn(0) = 0 (backward and jvp alike), a
    subgradient strictly between the one-sided derivatives -1 (left) and +1 (right), matching
    neither of them. It does equal the central difference (|h| - |-h|) / 2h = 0, so
    torch.autograd.gradcheck passes this op. A checker must not fail it: either it tests the
    central difference first (and only looks at one-sided differences when that disagrees), or
    it accepts a value between the one-sided derivatives at a kink. max_order=1: the second
    derivative at 0 is a Dirac delta (finite differences of sgn give 1/h).
    """
    return torch.abs(x)


def _abs_on_kink_samples(device, dtype):
    gen = torch.Generator().manual_seed(9)
    yield _on(device, dtype, torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5], dtype=_F64))
    x = _signed(gen, (2, 3), 0.2, 2.0)
    x[1, 0] = 0.0
    yield _on(device, dtype, x)


def _abs_reference(x):
    return torch.where(x < 0, -x, x)


# --------------------------------------------------------------------------------------------
# 10. gc::broadcast_add_mul -- correct; must pass every check.
# --------------------------------------------------------------------------------------------


def broadcast_add_mul(x, b):
    """y = x * b + b with x of shape (n, m) and b of shape (m,).

    TRICKY (but correct): a plain function, so autograd itself reduces b's broadcast gradient
    (sum over the rows of grad * (x + 1)); the checker must compare a (n*m) x m Jacobian block for
    b, not assume inputs and output share a shape. Everything is differentiable torch code:
    forward mode, vmap and second order (the mixed x-b second derivative is nonzero) all work.
    """
    return x * b + b


def _broadcast_add_mul_samples(device, dtype):
    gen = torch.Generator().manual_seed(10)
    for rows, cols in [(3, 4), (2, 5)]:
        x = _uniform(gen, (rows, cols), -2.0, 2.0)
        b = _uniform(gen, (cols,), -2.0, 2.0)
        yield _on(device, dtype, x, b)


def _broadcast_add_mul_reference(x, b):
    return (x + 1) * b


# --------------------------------------------------------------------------------------------
# 11. gc::custom_scale -- correct; must pass every check, torch.library.opcheck included.
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("gc::custom_scale", mutates_args=())
def custom_scale(x: torch.Tensor) -> torch.Tensor:
    """y = 2.5 * x as a torch.library custom op: correct, so torch.library.opcheck passes.

    TRICKY (but correct): register_autograd gives a backward and nothing else. Forward-mode AD
    through it silently yields a None tangent in torch 2.13 (forward_mode=False), torch.vmap
    works through the per-sample fallback for custom ops without register_vmap (vmap=True),
    and the backward, grad * 2.5, is a differentiable torch op, so second order works (the
    second derivative is 0, max_order=2). Note the trap for an order-2 check: the first
    derivative does not depend on x, so under create_graph=True it has no grad_fn and
    torch.autograd.grad(first, x) raises "does not require grad"; the checker must read that as
    a zero second derivative (torch.autograd.gradgradcheck does, and passes).
    """
    return 2.5 * x


@custom_scale.register_fake
def _(x):
    return torch.empty_like(x)


def _custom_scale_setup_context(ctx, inputs, output):
    pass  # the backward needs nothing saved: the derivative is the constant 2.5


def _custom_scale_backward(ctx, grad):
    return grad * 2.5


custom_scale.register_autograd(_custom_scale_backward, setup_context=_custom_scale_setup_context)


def _custom_scale_samples(device, dtype):
    gen = torch.Generator().manual_seed(11)
    for shape in [(5,), (2, 3)]:
        yield _on(device, dtype, _uniform(gen, shape, -2.0, 2.0))


def _scale_reference(x):
    return x * 2.5


# --------------------------------------------------------------------------------------------
# 12. gc::raises -- its forward raises; the checker must report "error", not crash.
# --------------------------------------------------------------------------------------------


def raises(x):
    """Meant to be the identity; its forward always raises. The checker must report the op as
    failed, naming the RuntimeError and its message, and go on to the next op."""
    raise RuntimeError("the forward of gc::raises always fails")


def _raises_samples(device, dtype):
    yield _on(device, dtype, torch.tensor([-1.0, 0.5, 2.0], dtype=_F64))


def _identity_reference(x):
    return x.clone()


# --------------------------------------------------------------------------------------------

EXPECTED: dict[str, str | None] = {
    "gc::wrong_factor": "reverse",
    "gc::missing_product_term": "reverse",
    "gc::wrong_sign_branch": "reverse",
    "gc::wrong_second_input": "reverse",
    "gc::wrong_broadcast_reduction": "reverse",
    "gc::wrong_second_order": "order 2",
    "gc::wrong_jvp": "forward",
    "gc::relu_on_kink": None,
    "gc::abs_on_kink": None,
    "gc::broadcast_add_mul": None,
    "gc::custom_scale": None,
    "gc::raises": "error",
}

# For the two-input wrong ops: the index of the input whose gradient is wrong.
WRONG_INPUT: dict[str, int] = {
    "gc::wrong_second_input": 1,
    "gc::wrong_broadcast_reduction": 1,
}

_OPS = [
    OpDef(
        name="gc::wrong_factor",
        fn=_WrongFactor.apply,
        sample_inputs=_wrong_factor_samples,
        reference=torch.square,
        max_order=1,
        forward_mode=False,  # no jvp staticmethod
        vmap=False,  # no vmap rule
        layer="elementwise",  # usable in a spec, so that train's pre-flight check can refuse it
        description="WRONG: x**2 with a backward 1% too large; reverse must fail",
    ),
    OpDef(
        name="gc::missing_product_term",
        fn=_MissingProductTerm.apply,
        sample_inputs=_missing_product_term_samples,
        reference=_x_sin_x,
        max_order=1,
        forward_mode=False,
        vmap=False,
        layer=None,
        description="WRONG: x*sin(x) with the x*cos(x) term missing from backward; reverse must fail",
    ),
    OpDef(
        name="gc::wrong_sign_branch",
        fn=_WrongSignBranch.apply,
        sample_inputs=_wrong_sign_branch_samples,
        reference=_elu_reference,
        max_order=1,
        forward_mode=False,
        vmap=False,
        layer=None,
        description="WRONG: ELU whose backward has the wrong sign for x < 0; reverse must fail",
    ),
    OpDef(
        name="gc::wrong_second_input",
        fn=_WrongSecondInput.apply,
        sample_inputs=_wrong_second_input_samples,
        reference=_x_exp_w,
        max_order=1,
        forward_mode=False,
        vmap=False,
        layer=None,
        description="WRONG: x*exp(w) whose gradient for w lacks the factor x; reverse must fail on input 1",
    ),
    OpDef(
        name="gc::wrong_broadcast_reduction",
        fn=_WrongBroadcastReduction.apply,
        sample_inputs=_wrong_broadcast_reduction_samples,
        reference=_x_times_b,
        max_order=1,
        forward_mode=False,
        vmap=False,
        layer=None,
        description=(
            "WRONG: x*b (b broadcast over rows) reducing b's gradient by mean, not sum; reverse must fail on input 1"
        ),
    ),
    OpDef(
        name="gc::wrong_second_order",
        fn=_WrongSecondOrder.apply,
        sample_inputs=_wrong_second_order_samples,
        reference=_cube_over_3,
        max_order=2,  # the double backward exists (and is wrong): order 2 must be checked
        forward_mode=False,
        vmap=False,
        layer=None,
        description="WRONG: x**3/3 with a right backward whose own backward is off by 2; order 2 must fail",
    ),
    OpDef(
        name="gc::wrong_jvp",
        fn=_WrongJvp.apply,
        sample_inputs=_wrong_jvp_samples,
        reference=_sin_2x,
        max_order=1,
        forward_mode=True,  # it has a jvp (a wrong one): forward mode must be checked
        vmap=False,
        layer=None,
        description="WRONG: sin(2x) with a right backward and a jvp missing the factor 2; forward must fail",
    ),
    OpDef(
        name="gc::relu_on_kink",
        fn=relu_on_kink,
        sample_inputs=_relu_on_kink_samples,
        reference=_relu_reference,
        max_order=1,  # the second derivative at the kink is a delta
        forward_mode=True,
        vmap=True,
        layer=None,
        description="correct: relu sampled at exact zeros; the kink elements must be accepted and reported",
    ),
    OpDef(
        name="gc::abs_on_kink",
        fn=abs_on_kink,
        sample_inputs=_abs_on_kink_samples,
        reference=_abs_reference,
        max_order=1,  # the second derivative at the kink is a delta
        forward_mode=True,
        vmap=True,
        layer=None,
        description="correct: abs sampled at an exact zero, where torch's gradient 0 is a subgradient",
    ),
    OpDef(
        name="gc::broadcast_add_mul",
        fn=broadcast_add_mul,
        sample_inputs=_broadcast_add_mul_samples,
        reference=_broadcast_add_mul_reference,
        max_order=2,
        forward_mode=True,
        vmap=True,
        layer=None,
        description="correct: x*b + b with b broadcast, autograd reducing its gradient",
    ),
    OpDef(
        name="gc::custom_scale",
        fn=custom_scale,
        sample_inputs=_custom_scale_samples,
        reference=_scale_reference,
        max_order=2,  # the registered backward is a differentiable torch op
        forward_mode=False,  # register_autograd gives no jvp: the tangent comes back None
        vmap=True,  # the custom-op vmap fallback
        layer=None,
        description="correct: 2.5*x as a torch.library custom op; opcheck must pass",
    ),
    OpDef(
        name="gc::raises",
        fn=raises,
        sample_inputs=_raises_samples,
        reference=_identity_reference,
        max_order=1,
        forward_mode=False,
        vmap=False,
        layer=None,
        description="its forward always raises RuntimeError; must be reported as an error",
    ),
]

assert set(EXPECTED) == {op.name for op in _OPS}


@hookimpl
def register_ops(register):
    for op in _OPS:
        register(op)
