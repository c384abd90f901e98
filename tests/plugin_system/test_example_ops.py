"""The example op plugins in `plugins/`: each op's forward, gradients and declared capabilities.

Every declaration is checked both ways: a capability an op claims must work, and one it denies
must really be missing (so a torch upgrade that changes the answer shows up here). Plugin files
are loaded with `import_plugin_file`, exactly as the plugin loader does: it executes each file
once per process, and a second execution would define its `torch.library.custom_op` again,
which torch refuses. The grail package is imported once, by module name, from its source folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from pydantic import ValidationError

from knightctl.plugins.files import import_plugin_file
from knightctl.plugins.registry import OpDef, Registry

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
GRAIL = PLUGINS / "knightctl-grail"

# op name -> the top-level plugin file defining it (None: the knightctl-grail package).
SOURCES = {
    "knight::smooth_relu": "smooth_relu.py",
    "knight::sign_ste": "straight_through.py",
    "knight::grad_reverse": "gradient_reversal.py",
    "knight::sigmoid_gate": "sigmoid_gate.py",
    "knight::squareplus": "squareplus.py",
    "knight::swish": "swish.py",
    "grail::soft_clamp": None,
}
NAMES = list(SOURCES)
CUSTOM_OPS = ["knight::sigmoid_gate", "grail::soft_clamp"]
F64 = torch.float64

# Forward-mode AD loads torch's jvp decompositions on first use, which calls the deprecated
# torch.jit.script inside torch (2.13); nothing in these plugins does.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _registered(module) -> list[OpDef]:
    ops: list[OpDef] = []
    module.register_ops(ops.append)
    return ops


@pytest.fixture(scope="module")
def grail_module():
    """`knightctl_grail` imported from its source folder, the way an installed copy is imported."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(GRAIL))
        import knightctl_grail
    # sys.path is restored; the module stays in sys.modules, so it is never executed twice.
    return knightctl_grail


@pytest.fixture(scope="module")
def ops(grail_module) -> dict[str, OpDef]:
    found: dict[str, OpDef] = {}
    for name, filename in SOURCES.items():
        module = grail_module if filename is None else import_plugin_file(PLUGINS / filename)
        (op,) = [op for op in _registered(module) if op.name == name]
        found[name] = op
    return found


@pytest.fixture(params=NAMES)
def op(request, ops) -> OpDef:
    return ops[request.param]


def _is_float_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _samples(op: OpDef) -> list[tuple]:
    samples = [tuple(args) for args in op.sample_inputs(torch.device("cpu"), F64)]
    assert samples, f"{op.name} has no sample inputs"
    return samples


def _on_tensors(fn, args):
    """`fn` as a function of the floating-point tensors in `args` alone, and those tensors."""
    slots = [i for i, a in enumerate(args) if _is_float_tensor(a)]

    def on_tensors(*tensors):
        full = list(args)
        for i, t in zip(slots, tensors, strict=False):
            full[i] = t
        return fn(*full)

    return on_tensors, tuple(args[i].detach().clone().requires_grad_() for i in slots)


def _vjp(fn):
    """x -> J(x)^T 1, built with create_graph so it can be differentiated again (one order up)."""

    def vjp(*tensors):
        out = fn(*tensors)
        return torch.autograd.grad(out, tensors, torch.ones_like(out), create_graph=True)

    return vjp


# --- what the plugin files contain ---------------------------------------------------------


def test_each_plugin_file_registers_one_documented_op(ops):
    # Only top-level files are directory plugins; the package folder is not one of them.
    assert sorted(p.name for p in PLUGINS.glob("*.py")) == sorted(f for f in SOURCES.values() if f)
    for filename in filter(None, SOURCES.values()):
        module = import_plugin_file(PLUGINS / filename)
        assert len((module.__doc__ or "").strip().splitlines()) >= 3, f"{filename} lacks a docstring"
        assert len(_registered(module)) == 1
    registry = Registry()
    for name, op in ops.items():
        assert op.reference is not None and op.description, name
        registry.add(op, plugin="examples")  # the registry's own checks of the contract
    assert sorted(registry.names("op")) == sorted(NAMES)


def test_grail_package_declares_its_entry_point():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((GRAIL / "pyproject.toml").read_text())
    assert meta["build-system"]["build-backend"] == "setuptools.build_meta"
    assert (meta["project"]["name"], meta["project"]["version"]) == ("knightctl-grail", "0.1.0")
    assert "knightctl" in meta["project"]["dependencies"]
    assert meta["project"]["entry-points"]["knightctl"] == {"grail": "knightctl_grail"}
    assert "pip install ./plugins/knightctl-grail" in (GRAIL / "README.md").read_text()


# --- forward --------------------------------------------------------------------------------


def test_forward_matches_reference(op):
    for args in _samples(op):
        torch.testing.assert_close(op.fn(*args), op.reference(*args), atol=op.atol, rtol=op.rtol)


def test_layer_params_defaults_and_bounds(op):
    defaults = op.params().model_dump()
    x = torch.linspace(-3, 3, 8, dtype=F64).reshape(2, 4)
    # How a spec applies the op as a layer: the whole input, or its two halves on the last dim.
    inputs = (x,) if op.layer == "elementwise" else tuple(x.chunk(2, dim=-1))
    out = op.fn(*inputs, **defaults)
    torch.testing.assert_close(out, op.reference(*inputs), atol=op.atol, rtol=op.rtol)
    assert out.shape == inputs[0].shape
    for field in op.params.model_fields:  # every option here is a positive (or >= 0) float
        with pytest.raises(ValidationError):
            op.params(**{field: -1.0})


# --- reverse mode ----------------------------------------------------------------------------


def test_backward_matches_finite_differences_unless_surrogate(op):
    for args in _samples(op):
        fn, tensors = _on_tensors(op.fn, args)
        if op.surrogate_gradient is None:
            # check_batched_grad runs the backward under vmap, so only where vmap is claimed.
            assert torch.autograd.gradcheck(fn, tensors, atol=op.atol, rtol=op.rtol, check_batched_grad=bool(op.vmap))
        else:
            # A surrogate is declared because it disagrees with the numbers; make sure it does.
            assert not torch.autograd.gradcheck(fn, tensors, atol=op.atol, rtol=op.rtol, raise_exception=False)


def test_sign_ste_backward_is_the_clipped_identity(ops):
    op = ops["knight::sign_ste"]
    for (x,) in _samples(op):
        x = x.clone().requires_grad_()
        upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
        (grad,) = torch.autograd.grad(op.fn(x), x, upstream)
        assert torch.equal(grad, upstream * (x.detach().abs() <= 1))
        assert (x.abs() <= 1).any() and (x.abs() > 1).any()  # both branches exercised


def test_grad_reverse_backward_is_minus_alpha_grad(ops):
    op = ops["knight::grad_reverse"]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=F64, requires_grad=True)
    upstream = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    for kwargs, alpha in [({}, 1.0), ({"alpha": 0.25}, 0.25), ({"alpha": 0.0}, 0.0)]:
        out = op.fn(x, **kwargs)
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()  # identity, but a new tensor
        (grad,) = torch.autograd.grad(out, x, upstream)
        torch.testing.assert_close(grad, -alpha * upstream, atol=0, rtol=0)


# --- higher orders ---------------------------------------------------------------------------


def test_max_order(op):
    assert op.max_order is not None and op.max_order >= 1
    with torch.random.fork_rng(devices=[]):  # gradgradcheck draws random grad_outputs: fix them
        torch.manual_seed(0)
        _check_max_order(op)


def _check_max_order(op: OpDef) -> None:
    for args in _samples(op):
        fn, tensors = _on_tensors(op.fn, args)
        if op.max_order == 1:
            # Order 1: the backward's result is cut off from the graph (@once_differentiable), so a
            # double backward fails instead of differentiating the surrogate a second time.
            out = fn(*tensors)
            upstream = torch.ones_like(out, requires_grad=True)  # as in a real double backward
            grads = torch.autograd.grad(out, tensors, upstream, create_graph=True)
            with pytest.raises(RuntimeError, match="once_differentiable"):
                sum(g.sum() for g in grads).backward()
            assert not torch.autograd.gradgradcheck(fn, tensors, atol=op.atol, rtol=op.rtol, raise_exception=False)
            continue
        # Orders 1 and 2: the double backward agrees with finite differences of the backward
        # (with forward-over-reverse too where forward mode is claimed).
        assert torch.autograd.gradgradcheck(
            fn, tensors, atol=op.atol, rtol=op.rtol, check_fwd_over_rev=bool(op.forward_mode)
        )
        for _ in range(op.max_order - 2):  # each further order: gradgradcheck one derivative up
            fn = _vjp(fn)
            assert torch.autograd.gradgradcheck(fn, tensors, atol=op.atol, rtol=op.rtol)


# --- forward mode and vmap -------------------------------------------------------------------


def _forward_tangent(fn, tensors):
    """The forward-mode tangent of fn's output for all-ones input tangents, or None if there is none."""
    try:
        with fwAD.dual_level():
            out = fn(*(fwAD.make_dual(t.detach(), torch.ones_like(t)) for t in tensors))
            return fwAD.unpack_dual(out).tangent
    except NotImplementedError:  # an autograd.Function without a jvp staticmethod
        return None


def test_forward_mode(op):
    assert op.forward_mode is not None
    for args in _samples(op):
        fn, tensors = _on_tensors(op.fn, args)
        if op.forward_mode:
            assert torch.autograd.gradcheck(fn, tensors, atol=op.atol, rtol=op.rtol, check_forward_ad=True)
        else:
            # Either refused (autograd.Function without jvp) or, for a custom_op with
            # register_autograd, silently tangent-less: forward_mode=False is the truth for both.
            assert _forward_tangent(fn, tensors) is None


def test_vmap(op):
    assert op.vmap is not None
    for args in _samples(op):
        fn, tensors = _on_tensors(op.fn, args)
        tensors = tuple(t.detach() for t in tensors)
        # A batch of three variants of the sample, batched along a different dim for each input.
        batch = [torch.stack([t, 0.5 * t, t.flip(-1)], dim=i % (t.dim() + 1)) for i, t in enumerate(tensors)]
        in_dims = tuple(i % (t.dim() + 1) for i, t in enumerate(tensors))
        if op.vmap:
            looped = torch.stack([fn(*(b.select(d, k) for b, d in zip(batch, in_dims, strict=True))) for k in range(3)])
            torch.testing.assert_close(torch.vmap(fn, in_dims=in_dims)(*batch), looped, atol=op.atol, rtol=op.rtol)
        else:
            with pytest.raises(RuntimeError, match="vmap"):
                torch.vmap(fn, in_dims=in_dims)(*batch)


# --- custom ops: opcheck, torch.compile, torch.export ----------------------------------------


@pytest.fixture(params=CUSTOM_OPS)
def custom_op(request, ops) -> OpDef:
    op = ops[request.param]
    assert isinstance(op.fn, torch.library.CustomOpDef)
    return op


def test_custom_op_passes_opcheck(custom_op):
    for args in _samples(custom_op):
        results = torch.library.opcheck(custom_op.fn, args)
        assert set(results.values()) == {"SUCCESS"}, results


def test_custom_op_compiles_to_the_eager_result(custom_op):
    torch._dynamo.reset()
    args = _samples(custom_op)[-1]  # the sample with a float option, where there is one
    fn, tensors = _on_tensors(custom_op.fn, args)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    eager_out, compiled_out = fn(*tensors), compiled(*tensors)
    torch.testing.assert_close(compiled_out, eager_out, atol=0, rtol=0)
    upstream = torch.ones_like(eager_out)
    eager_grads = torch.autograd.grad(eager_out, tensors, upstream)
    compiled_grads = torch.autograd.grad(compiled_out, tensors, upstream)
    torch.testing.assert_close(compiled_grads, eager_grads, atol=1e-12, rtol=0)


def test_custom_op_exports(custom_op):
    args = _samples(custom_op)[-1]
    fn, tensors = _on_tensors(custom_op.fn, args)
    tensors = tuple(t.detach() for t in tensors)

    class Tiny(torch.nn.Module):
        def forward(self, *inputs):
            return fn(*inputs)

    exported = torch.export.export(Tiny(), tensors)
    namespace, name = custom_op.name.split("::")
    overload = getattr(getattr(torch.ops, namespace), name).default
    # The op stays one opaque node (what register_fake made traceable), not decomposed.
    assert [n.target for n in exported.graph.nodes if n.op == "call_function"] == [overload]
    torch.testing.assert_close(exported.module()(*tensors), fn(*tensors), atol=0, rtol=0)
