"""The gradient checker on ops of every shape PyTorch accepts, and on autograd contract bugs.

The ops are in tests/plugins/gradcheck_forms.py; each wrong one must fail exactly its check.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from knightctl import OpDef, Sample
from knightctl.cli.commands import main
from knightctl.gradcheck import check_op
from knightctl.gradcheck.jacobian import op_target
from knightctl.gradcheck.pytree import flatten
from knightctl.plugins.files import import_plugin_file
from knightctl.plugins.opsupport import form_of

FORMS_FILE = Path(__file__).resolve().parents[1] / "plugins" / "gradcheck_forms.py"
FORMS = import_plugin_file(FORMS_FILE)
OPS: dict[str, OpDef] = {}
FORMS.register_ops(lambda op: OPS.__setitem__(op.name, dataclasses.replace(op, plugin="gradcheck_forms")))
JACOBIAN_CHECKS = ("reverse", "undefined grad", "forward")  # the checks that locate a worst element


def _table(report) -> list[tuple[str, str, str]]:
    return [(c.check, c.status, c.detail) for c in report.checks]


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_form_op_fails_exactly_its_check_and_nothing_else(name: str) -> None:
    report = check_op(OPS[name])
    expected = FORMS.EXPECTED[name]
    failed = [check.check for check in report.failures]
    if expected is None:
        assert report.verdict == "passed" and not failed, _table(report)
    elif expected == "n/a":
        assert report.verdict == "n/a" and not failed, _table(report)
        assert not any(check.status == "passed" for check in report.checks)  # never an "ok"
    else:
        assert failed == [expected], _table(report)
        if expected in JACOBIAN_CHECKS:
            assert report.failures[0].worst is not None and report.failures[0].worst.abs_error > 0


def test_an_output_inside_a_list_is_checked() -> None:
    worst = check_op(OPS["gf::split_wrong"]).check("reverse").worst
    assert worst is not None and worst.analytic == pytest.approx(2.5 * worst.numeric)


def test_list_and_keyword_arguments_are_differentiated_leaf_by_leaf() -> None:
    x, y, w = torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    target = op_target(lambda tensors, *, weight, alpha: tensors, ([x, y],), {"weight": w, "alpha": 2.0})
    assert [target.names[i] for i in target.wrt] == ["args[0][0]", "args[0][1]", "kwargs['weight']"]
    assert target.structured() == (([x, y],), {"weight": w, "alpha": 2.0})
    leaves, rebuild, _ = flatten({"a": [1, (2, 3)], "b": 4})
    assert leaves == [1, 2, 3, 4] and rebuild([5, 6, 7, 8]) == {"a": [5, (6, 7)], "b": 8}

    class WrongWeight(torch.autograd.Function):
        @staticmethod
        def forward(x, weight):
            return x * torch.exp(weight)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        @staticmethod
        def backward(ctx, grad):
            x, weight = ctx.saved_tensors
            return grad * torch.exp(weight), grad * torch.exp(weight)  # weight's lacks the factor x

    keyword = dataclasses.replace(
        OPS["gf::keyword_mix"],
        fn=lambda x, *, weight, alpha=1.0: WrongWeight.apply(x, weight * alpha),
        forward_mode=False,
        vmap=False,
        max_order=1,
    )
    reverse = check_op(keyword).check("reverse")
    assert reverse.status == "failed" and reverse.worst.input_name == "kwargs['weight']"


def test_a_sample_can_be_a_sample_object_with_options_merged_in() -> None:
    seen = []

    def fn(x, *, alpha=1.0):
        seen.append(alpha)
        return x * alpha

    op = OpDef(
        name="t::scale", fn=fn, sample_inputs=lambda d, t: [Sample(torch.ones(2, dtype=t), alpha=3.0)], layer=None
    )
    report = check_op(op, options={"alpha": 2.5}, order=1)
    assert report.verdict == "passed" and set(seen) == {2.5} and report.label == "t::scale {alpha: 2.5}"


def test_nothing_differentiable_is_na_in_every_mode() -> None:
    for method in ("exact", "fast", "auto"):
        report = check_op(OPS["gf::argmax_only"], method=method)
        assert report.verdict == "n/a" and report.checks[-1].detail == "n/a: no differentiable output"
    integers = OpDef(name="t::ints", fn=lambda n: n * 2, sample_inputs=lambda d, t: [(torch.arange(4),)], layer=None)
    assert check_op(integers, method="fast").checks[-1].detail == "n/a: no floating-point input"
    empty = OpDef(name="t::empty", fn=torch.sin, sample_inputs=lambda d, t: [], layer=None)
    assert check_op(empty).verdict == "n/a"
    assert check_op(OPS["gf::declared_constant"]).checks[-1].detail == "n/a: declared not differentiable"


def test_a_mutating_forward_is_reported_as_mutation_not_as_kinks() -> None:
    report = check_op(OPS["gf::mutates_input"])
    assert not report.kinks and "changed its input args[0] in place" in report.check("mutation").detail
    assert all(
        c.status == "skipped" for c in report.checks if c.check in ("reverse", "linearity", "forward", "batched")
    )


def test_a_wrong_gradient_shape_is_a_failure_naming_both_shapes() -> None:
    check = check_op(OPS["gf::wrong_shape"]).check("grad metadata")
    assert check.status == "failed" and "shape (3,) for input args[0] of shape (2, 3)" in check.detail


def test_a_nondeterministic_backward_fails_reentrancy_and_higher_orders_are_not_judged_on_noise() -> None:
    report = check_op(OPS["gf::noisy_backward"])
    assert report.check("reentrant").status == "failed" and report.check("order 2").status == "skipped"
    tolerant = check_op(dataclasses.replace(OPS["gf::noisy_backward"], nondet_tol=1e-8), order=1)
    assert tolerant.check("reentrant").status == "passed"


def test_every_torch_library_form_is_recognised_and_opcheck_runs_on_it() -> None:
    assert form_of(torch.ops.gf.library_scale) == "OpOverloadPacket"
    assert form_of(torch.ops.gf.library_scale.default) == "OpOverload"
    for name in ("gf::library_scale", "gf::library_scale.default"):
        assert check_op(OPS[name]).check("opcheck").status == "passed"
    assert check_op(OPS["gf::library_scale"]).check("grad metadata").status == "passed"


def test_the_worst_element_carries_the_inputs_values_and_relative_errors_are_computed() -> None:
    worst = check_op(OPS["gf::split_wrong"]).check("reverse").worst
    assert worst.input_values and worst.input_values[0][0] == "args[0]"
    sample = list(OPS["gf::split_wrong"].sample_inputs("cpu", torch.float64))[worst.sample][0]
    assert worst.input_values[0][1] == pytest.approx(float(sample[worst.input_element]))
    passing = check_op(OPS["gf::cat_scaled"]).check("reverse")
    assert 0 < passing.max_rel_error < 1e-6  # a passing check still says how close it came


def test_the_cli_shows_the_new_checks_and_na_and_the_input_value() -> None:
    names = ["gf::ignores_grad", "gf::argmax_only", "gf::split_wrong"]
    result = CliRunner().invoke(
        main,
        ["--plugins-dir", str(FORMS_FILE.parent), "--disable-plugin", "recorder", "gradcheck", *names, "--no-track"],
    )
    assert result.exit_code == 1, result.output
    assert "gradcheck: 3 checked, 2 failed" in result.output
    assert "linearity FAIL" in result.output and "n/a: no differentiable output" not in result.output.split("\n")[0]
    assert "gf::argmax_only" in result.output and "gradients n/a" in result.output
    assert "where args[0] = " in result.output and "Traceback" not in result.output


class _OneElementWrong(FORMS._Cube):
    """x**3 whose backward is 1% too large at element 417 only."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        scale = torch.ones_like(x)
        scale[..., 417] = 1.01
        return grad * 3 * x**2 * scale


def test_fast_mode_finds_a_one_percent_error_in_one_element_of_a_thousand() -> None:
    x = torch.linspace(0.5, 2.0, 1000, dtype=torch.float64)
    wrong = OpDef(
        name="t::one_wrong",
        fn=_OneElementWrong.apply,
        sample_inputs=lambda d, t: [(x,)],
        forward_mode=False,
        vmap=False,
        max_order=1,
        layer=None,
    )
    right = dataclasses.replace(wrong, fn=lambda v: v**3)
    for method in ("fast", "exact"):
        reverse = check_op(wrong, method=method).check("reverse")
        assert reverse.status == "failed" and reverse.method == method and reverse.worst.input_element == (417,)
        assert reverse.detail == "1 element(s) out of tolerance"
        assert check_op(right, method=method).check("reverse").status == "passed"
