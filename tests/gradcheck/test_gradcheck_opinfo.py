"""PyTorch `OpInfo` entries checked by knightctl unchanged: `OpDef.from_opinfo`, and `register(info)`.

The entries are torch's own `OpInfo` dataclass (it needs `expecttest`, in the test extra), with
sample functions written the way torch's op database writes them: `make_tensor` and `SampleInput`.
"""

from __future__ import annotations

import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.testing import make_tensor

from knightctl import OpDef
from knightctl.errors import PluginError
from knightctl.gradcheck.checks import check_op
from knightctl.gradcheck.run import gradcheck
from knightctl.plugins.files import import_plugin_file
from knightctl.plugins.system import PluginSettings

opinfo_core = pytest.importorskip(
    "torch.testing._internal.opinfo.core", reason="torch's OpInfo needs expecttest (pip install -e '.[test]')"
)
OpInfo, SampleInput = opinfo_core.OpInfo, opinfo_core.SampleInput
# torch < 2.5's OpInfo takes only its own tuple subclass as dtypes
from torch.testing._internal.common_dtype import _dispatch_dtypes  # noqa: E402

FORMS = import_plugin_file(Path(__file__).resolve().parents[1] / "plugins" / "gradcheck_forms.py")


class _Cube(FORMS._Cube):
    """x**3 with a right backward (the forms plugin's), batched: OpInfo claims batched gradients."""

    generate_vmap_rule = True


class _CubeIgnoringGrad(_Cube):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2  # the bug: the incoming gradient is dropped


class _Scale(torch.autograd.Function):
    """x * w, differentiable in x only: the backward gives None for w."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, w):
        return x * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, grad):
        (w,) = ctx.saved_tensors
        return grad * w, None


class _SquareWithStats(torch.autograd.Function):
    """(x**2, x.sum() as a float 'count'): the second output's gradient is not implemented (zero)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x, x.sum()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad, _grad_stats):
        (x,) = ctx.saved_tensors
        return grad * 2 * x


def one_input(op_info, device, dtype, requires_grad, **kwargs):
    make = partial(make_tensor, device=device, dtype=dtype, requires_grad=requires_grad, low=0.5, high=2.0)
    yield SampleInput(make(3, 4))
    yield SampleInput(make(5))


def tensor_and_constant(op_info, device, dtype, requires_grad, **kwargs):
    yield SampleInput(
        make_tensor(4, device=device, dtype=dtype, requires_grad=requires_grad),
        args=(make_tensor(4, device=device, dtype=dtype, low=0.5, high=2.0),),
    )  # w: requires no grad


def only_the_square(op_info, device, dtype, requires_grad, **kwargs):
    yield SampleInput(
        make_tensor(4, device=device, dtype=dtype, requires_grad=requires_grad),
        output_process_fn_grad=lambda out: out[0],
    )


def entry(name: str, op, samples=one_input, **flags) -> OpInfo:
    return OpInfo(
        name, op=op, dtypes=_dispatch_dtypes((torch.float32, torch.float64)), sample_inputs_func=samples, **flags
    )


def test_a_correct_entry_passes_every_check_it_claims() -> None:
    op = OpDef.from_opinfo(
        entry("cube", _Cube.apply, supports_forward_ad=False, supports_gradgrad=True), namespace="oi"
    )
    assert op.name == "oi::cube" and op.max_order == 2 and op.forward_mode is False and op.layer is None
    report = check_op(op)
    assert report.verdict == "passed", report.explain()
    assert {c.check: c.status for c in report.checks}["order 2"] == "passed"
    assert {c.check: c.status for c in report.checks}["forward"] == "unsupported"


def test_an_entry_whose_backward_ignores_its_gradient_fails_reverse_and_linearity() -> None:
    report = check_op(OpDef.from_opinfo(entry("cube_bad", _CubeIgnoringGrad.apply, supports_gradgrad=False)))
    failed = [c.check for c in report.checks if c.status == "failed"]
    assert report.name == "opinfo::cube_bad" and failed == ["reverse", "linearity"], report.explain()
    assert {c.check: c.status for c in report.checks}["order 2"] == "unsupported"  # supports_gradgrad=False


def test_only_the_tensors_a_sample_marks_requires_grad_are_differentiated() -> None:
    report = check_op(
        OpDef.from_opinfo(entry("scale", _Scale.apply, samples=tensor_and_constant, supports_gradgrad=False))
    )
    assert report.verdict == "passed", report.explain()
    as_plain_tuples = OpDef(
        name="t::scale",
        fn=_Scale.apply,
        sample_inputs=lambda device, dtype: [(torch.rand(4, dtype=dtype), torch.rand(4, dtype=dtype) + 0.5)],
    )
    undefined = check_op(as_plain_tuples).check("undefined grad")
    assert (
        undefined.status == "failed" and "args[1]" in undefined.detail
    )  # every float tensor counts when none is marked


def test_output_process_fn_grad_picks_the_outputs_that_are_checked() -> None:
    picked = check_op(
        OpDef.from_opinfo(
            entry("square_stats", _SquareWithStats.apply, samples=only_the_square, supports_gradgrad=False)
        )
    )
    assert picked.verdict == "passed", picked.explain()
    everything = check_op(
        OpDef(
            name="t::square_stats",
            fn=_SquareWithStats.apply,
            max_order=1,
            sample_inputs=lambda device, dtype: [(torch.rand(4, dtype=dtype),)],
        )
    )
    assert everything.check("reverse").status == "failed"  # the stats output's gradient is missing


def test_a_gradcheck_wrapper_of_its_own_is_applied_and_the_default_is_not() -> None:
    wrapped = OpDef.from_opinfo(
        entry(
            "log",
            torch.log,
            samples=lambda *a, **k: [SampleInput(torch.linspace(-2, 2, 6, dtype=torch.float64, requires_grad=True))],
            gradcheck_wrapper=lambda op, x: op(x * x + 1.0),
        )
    )  # log needs positive inputs
    assert check_op(wrapped).verdict == "passed"
    plain = entry("cube", _Cube.apply)
    assert OpDef.from_opinfo(plain).fn is plain.op  # unwrapped: a torch.library op stays one, for opcheck


def test_an_entry_without_autograd_is_n_a_and_one_without_float64_is_refused() -> None:
    assert check_op(OpDef.from_opinfo(entry("cube", _Cube.apply, supports_autograd=False))).verdict == "n/a"
    single = OpInfo("cube32", op=_Cube.apply, dtypes=_dispatch_dtypes((torch.float32,)), sample_inputs_func=one_input)
    with pytest.raises(PluginError, match=r"OpInfo 'cube32' does not list torch.float64"):
        OpDef.from_opinfo(single)


PLUGIN = textwrap.dedent(
    '''\
    """OpInfo entries registered as they are, from a plugin's register_ops."""

    from functools import partial

    import torch
    from torch.testing import make_tensor
    from torch.testing._internal.common_dtype import _dispatch_dtypes
    from torch.testing._internal.opinfo.core import OpInfo, SampleInput

    from knightctl import hookimpl

    {lib}

    def samples(op_info, device, dtype, requires_grad, **kwargs):
        yield SampleInput(make_tensor(3, 2, device=device, dtype=dtype, requires_grad=requires_grad, low=0.5, high=2.0))

    op_db = [
        OpInfo("{ns}::twice", op=torch.ops.{ns}.twice, dtypes=_dispatch_dtypes((torch.float64,)), \
sample_inputs_func=samples, supports_forward_ad=True),
        OpInfo("{bad_name}", op=torch.sin, dtypes=_dispatch_dtypes((torch.float32,)), sample_inputs_func=samples),
    ]


    @hookimpl
    def register_ops(register):
        for info in op_db[:{count}]:
            register(info)
    '''
)

LIBRARY = """\
@torch.library.custom_op("{ns}::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


twice.register_autograd(lambda ctx, grad: grad * 3)  # the bug: 3, not 2"""


def test_a_plugin_registers_its_op_db_as_it_is_and_opcheck_runs_on_the_library_op(tmp_path: Path) -> None:
    (tmp_path / "op_db.py").write_text(
        PLUGIN.format(lib=LIBRARY.format(ns="oidb"), ns="oidb", bad_name="sin32", count=1)
    )
    result = gradcheck(["oidb::twice"], plugins=PluginSettings(dirs=(tmp_path,)), track=False)
    (report,) = result.reports
    assert report.name == "oidb::twice" and report.plugin == "op_db"
    statuses = {c.check: c.status for c in report.checks}
    assert statuses["reverse"] == "failed" and statuses["forward"] == "failed" and "opcheck" in statuses


def test_an_entry_that_cannot_be_checked_fails_the_plugin_naming_it(tmp_path: Path) -> None:
    (tmp_path / "op_db.py").write_text(
        PLUGIN.format(lib=LIBRARY.format(ns="oidb_refused"), ns="oidb_refused", bad_name="sin32", count=2)
    )
    with pytest.raises(PluginError, match=r"plugin 'op_db'.*OpInfo 'sin32' does not list torch.float64"):
        gradcheck(plugins=PluginSettings(dirs=(tmp_path,), strict=True), track=False)
