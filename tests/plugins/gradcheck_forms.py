"""Test plugin for `knightctl gradcheck`: ops of every shape PyTorch accepts, and contract bugs.

Every op here is in the `gf::` namespace. Like gradcheck_ops.py, each wrong op has one bug that
exactly one check must catch, and each correct op sits where a checker that only knows "tensors
in, one tensor out" goes wrong: list arguments, nested outputs, integer outputs, keyword samples,
torch.library forms. `EXPECTED` (at the bottom) maps each op to the check that must fail, None
(every check passes) or "n/a" (nothing differentiable: the verdict is n/a, never ok).
"""

from __future__ import annotations

import torch

from knightctl import OpDef, Sample, hookimpl

_F64 = torch.float64


def _values(seed: int, *shape: int, low: float = 0.5, high: float = 2.0) -> torch.Tensor:
    """Random values with |x| in [low, high] and a random sign, in float64."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = low + (high - low) * torch.rand(shape, generator=gen, dtype=_F64)
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -magnitude, magnitude)


def _on(device, dtype, tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype)


class _Cube(torch.autograd.Function):
    """x**3 with a right backward: the base the contract bugs below change one thing of."""

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2


def _cube_reference(x):
    return x**3


def _one_input(seed: int):
    def samples(device, dtype):
        yield (_on(device, dtype, _values(seed, 5)),)
        yield (_on(device, dtype, _values(seed + 1, 2, 3)),)

    return samples


# 1. gf::cat_scaled -- correct: a list of tensors in (like torch.cat), one tensor out.
def cat_scaled(tensors, scale=2.0):
    return torch.cat([t * scale for t in tensors])


def _cat_samples(device, dtype):
    yield ([_on(device, dtype, _values(10, 3)), _on(device, dtype, _values(11, 4))],)
    yield Sample([_on(device, dtype, _values(12, 2))], scale=0.5)


def _cat_reference(tensors, scale=2.0):
    return torch.cat(tensors) * scale


# 2. gf::split_wrong -- WRONG in "reverse": the output sits inside a list, `return [y], n`, as
# split-like ops return it; the backward is 2.5x too large.
class _SplitWrong(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x * 2, torch.tensor(x.numel())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _count):
        return grad * 5.0  # BUG: d(2x)/dx is 2


def split_wrong(x):
    y, n = _SplitWrong.apply(x)
    return [y], n


# 3. gf::nested_outputs -- correct: a dict holding a list of two outputs and an integer count.
def nested_outputs(x):
    return {"parts": [torch.sin(x), x * x], "count": torch.tensor(x.numel())}


def _nested_reference(x):
    return {"parts": [torch.sin(x), x**2], "count": torch.tensor(x.numel())}


# 4. gf::argmax_only -- nothing differentiable: integer outputs only. Verdict n/a, never ok.
def argmax_only(x):
    return torch.argmax(x, dim=-1), torch.argsort(x)


# 5. gf::keyword_mix -- correct: a tensor reaches the op as a keyword argument, with an option.
def keyword_mix(x, *, weight, alpha=1.0):
    return x * torch.exp(alpha * weight)


def _keyword_samples(device, dtype):
    yield Sample(_on(device, dtype, _values(20, 4)), weight=_on(device, dtype, _values(21, 4)))
    yield Sample(_on(device, dtype, _values(22, 2, 2)), weight=_on(device, dtype, _values(23, 2, 2)), alpha=0.5)


def _keyword_reference(x, *, weight, alpha=1.0):
    return x * torch.exp(weight * alpha)


# 6. gf::ignores_grad -- WRONG in "linearity": the backward forgets the incoming gradient
# (3x^2 instead of grad * 3x^2), on a one-element sample, where one-hot cotangents cannot see it.
class _IgnoresGrad(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2  # BUG: grad * 3 * x**2


def _single_element(device, dtype):
    yield (_on(device, dtype, torch.tensor([1.3], dtype=_F64)),)


# 7. gf::none_for_w -- WRONG in "undefined grad": the backward returns None for w, on which the
# output depends (y = x * exp(w)).
class _NoneForW(torch.autograd.Function):
    @staticmethod
    def forward(x, w):
        return x * torch.exp(w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad * torch.exp(w), None  # BUG: w's gradient is grad * x * exp(w)


def _two_inputs(device, dtype):
    yield (_on(device, dtype, _values(30, 4)), _on(device, dtype, _values(31, 4)))


def _x_exp_w(x, w):
    return x * torch.exp(w)


# 8. gf::wrong_shape -- WRONG in "grad metadata": the backward returns a gradient of shape (3,)
# for an input of shape (2, 3); autograd raises on it, and that is a FAIL naming the shapes.
class _WrongShape(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad * 3 * x**2).sum(0)  # BUG: summed over the rows


def _matrix(device, dtype):
    yield (_on(device, dtype, _values(40, 2, 3)),)


# 9. gf::half_grad -- WRONG in "grad metadata": a float16 gradient for a float64 input, which
# autograd casts back silently (its values stay within rtol, so no value check sees it).
class _HalfGrad(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad * 3 * x**2).half()  # BUG: the dtype


# 10. gf::noisy_backward -- WRONG in "reentrant": the backward adds a little noise, far below the
# tolerances, so that every value check passes; two runs on one graph still differ.
class _NoisyBackward(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 3 * x**2 + 1e-9 * torch.rand_like(x)  # BUG: nondeterministic


# 11. gf::mutates_input -- WRONG in "mutation": the forward adds to its caller's tensor in place.
def mutates_input(x):
    y = x * 2
    x.add_(1.0)  # BUG: the caller's x changes
    return y


# 12. gf::library_scale -- correct: defined with torch.library.Library and define/impl, checked
# through torch.ops.gf.library_scale (an OpOverloadPacket), so opcheck runs on it.
_LIB = torch.library.Library("gf", "DEF")  # noqa: TOR901 -- the old-style API, on purpose
_LIB.define("library_scale(Tensor x) -> Tensor")
_LIB.impl("library_scale", lambda x: x * 1.5, "CompositeExplicitAutograd")
_LIB.impl("library_scale", lambda x: torch.empty_like(x), "Meta")
torch.library.register_autograd("gf::library_scale", lambda ctx, grad: grad * 1.5, lib=_LIB)


# 13. gf::declared_constant -- declared not differentiable: n/a, whatever it returns.
def declared_constant(x):
    return torch.floor(x)


EXPECTED: dict[str, str | None] = {
    "gf::cat_scaled": None,
    "gf::split_wrong": "reverse",
    "gf::nested_outputs": None,
    "gf::argmax_only": "n/a",
    "gf::keyword_mix": None,
    "gf::ignores_grad": "linearity",
    "gf::none_for_w": "undefined grad",
    "gf::wrong_shape": "grad metadata",
    "gf::half_grad": "grad metadata",
    "gf::noisy_backward": "reentrant",
    "gf::mutates_input": "mutation",
    "gf::library_scale": None,
    "gf::library_scale.default": None,
    "gf::declared_constant": "n/a",
}

_NO_EXTRAS = {"forward_mode": False, "vmap": False, "max_order": 1, "layer": None}

_OPS = [
    OpDef(
        name="gf::cat_scaled",
        fn=cat_scaled,
        sample_inputs=_cat_samples,
        reference=_cat_reference,
        max_order=2,
        forward_mode=True,
        vmap=True,
        layer=None,
    ),
    OpDef(
        name="gf::split_wrong", fn=split_wrong, sample_inputs=_one_input(1), reference=lambda x: [x * 2], **_NO_EXTRAS
    ),
    OpDef(
        name="gf::nested_outputs",
        fn=nested_outputs,
        sample_inputs=_one_input(3),
        reference=_nested_reference,
        max_order=2,
        forward_mode=True,
        vmap=True,
        layer=None,
    ),
    OpDef(name="gf::argmax_only", fn=argmax_only, sample_inputs=_one_input(5), layer=None),
    OpDef(
        name="gf::keyword_mix",
        fn=keyword_mix,
        sample_inputs=_keyword_samples,
        reference=_keyword_reference,
        max_order=2,
        forward_mode=True,
        vmap=True,
        layer=None,
    ),
    OpDef(
        name="gf::ignores_grad",
        fn=_IgnoresGrad.apply,
        sample_inputs=_single_element,
        reference=_cube_reference,
        **_NO_EXTRAS,
    ),
    OpDef(name="gf::none_for_w", fn=_NoneForW.apply, sample_inputs=_two_inputs, reference=_x_exp_w, **_NO_EXTRAS),
    OpDef(name="gf::wrong_shape", fn=_WrongShape.apply, sample_inputs=_matrix, reference=_cube_reference, **_NO_EXTRAS),
    OpDef(
        name="gf::half_grad",
        fn=_HalfGrad.apply,
        sample_inputs=_one_input(7),
        reference=_cube_reference,
        **{**_NO_EXTRAS, "max_order": 2},
    ),
    OpDef(
        name="gf::noisy_backward",
        fn=_NoisyBackward.apply,
        sample_inputs=_one_input(9),
        reference=_cube_reference,
        **{**_NO_EXTRAS, "max_order": 2},
    ),
    OpDef(
        name="gf::mutates_input",
        fn=mutates_input,
        sample_inputs=_one_input(11),
        max_order=2,
        forward_mode=True,
        vmap=True,
        layer=None,
    ),
    OpDef(
        name="gf::library_scale",
        fn=torch.ops.gf.library_scale,
        sample_inputs=_one_input(13),
        reference=lambda x: x * 1.5,
        max_order=2,
        forward_mode=False,
        vmap=True,
        layer=None,
    ),
    OpDef(
        name="gf::library_scale.default",
        fn=torch.ops.gf.library_scale.default,
        sample_inputs=_one_input(15),
        max_order=2,
        forward_mode=False,
        vmap=True,
        layer=None,
    ),
    OpDef(
        name="gf::declared_constant",
        fn=declared_constant,
        sample_inputs=_one_input(17),
        differentiable=False,
        layer=None,
    ),
]

assert set(EXPECTED) == {op.name for op in _OPS}


@hookimpl
def register_ops(register):
    for op in _OPS:
        register(op)
