"""`pytest --knightctl-ops`, the plugin knightctl installs under `pytest11`: run in a real pytest
subprocess (pytester) on a plugin folder, as a plugin author's CI would run it."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

OPS = textwrap.dedent(
    '''\
    """Three ops: right, wrong (the backward drops its gradient), and one with nothing to compare."""

    import torch

    from knightctl import OpDef, hookimpl


    class _Cube(torch.autograd.Function):
        generate_vmap_rule = True

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


    class _CubeDroppingGrad(_Cube):
        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 3 * x**2


    def samples(device, dtype):
        yield (torch.linspace(0.5, 2.0, 6, device=device, dtype=dtype).reshape(2, 3),)


    @hookimpl
    def register_ops(register):
        register(OpDef(name="pp::good", fn=_Cube.apply, sample_inputs=samples, max_order=1))
        register(OpDef(name="pp::bad", fn=_CubeDroppingGrad.apply, sample_inputs=samples, max_order=1))
        register(OpDef(name="pp::count", fn=lambda x: (x > 1).sum(), sample_inputs=samples))
    '''
)


@pytest.fixture
def plugin_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KNIGHTCTL_PLUGINS_DIR", raising=False)
    folder = pytester.mkdir("ops")
    (folder / "pp_ops.py").write_text(OPS)
    (folder / "broken.py").write_text("import torch\nraise RuntimeError('the lab server is down')\n")
    return folder


def test_each_op_is_an_item_that_fails_skips_or_passes_by_its_verdict(pytester: pytest.Pytester, plugin_dir) -> None:
    result = pytester.runpytest_subprocess(
        "--knightctl-ops", f"--knightctl-plugins-dir={plugin_dir}", "-p", "no:cacheprovider", "-v", "-rs"
    )
    result.assert_outcomes(passed=1, failed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [  # fnmatch: "?" stands for the brackets, which it reads as a set
            "knightctl-ops::gradcheck?pp::bad? FAILED*",
            "knightctl-ops::gradcheck?pp::count? SKIPPED*",
            "knightctl-ops::gradcheck?pp::good? PASSED*",
            "plugin broken (*broken.py): import failed: RuntimeError at line 2: the lab server is down",
            "It failed to load, so the ops it registers were not checked.",
            "pp::bad (pp_ops): mutation passed, grad metadata passed, reference skipped, reverse failed, "
            "*linearity failed*",
            "pp::bad: reverse failed (exact): 30 element(s) out of tolerance",
            "    worst: sample 0, output 0 element (*), input 0 (args?0?) element (*), where args?0? = *",
            "    analytic * numeric * abs error * rel error *",
            "SKIPPED * pp::count: n/a: no differentiable output",
        ]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_k_selects_ops_and_an_unknown_op_is_a_usage_error(pytester: pytest.Pytester, plugin_dir) -> None:
    chosen = pytester.runpytest_subprocess(
        "--knightctl-ops", f"--knightctl-plugins-dir={plugin_dir}", "-p", "no:cacheprovider", "-k", "good"
    )
    chosen.assert_outcomes(passed=1, deselected=3)
    unknown = pytester.runpytest_subprocess(
        "--knightctl-op", "pp::goood", f"--knightctl-plugins-dir={plugin_dir}", "-p", "no:cacheprovider"
    )
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*knightctl: unknown op 'pp::goood'; did you mean 'pp::good'?*"])


def test_without_the_flag_nothing_is_added_and_torch_is_not_imported(pytester: pytest.Pytester, plugin_dir) -> None:
    pytester.makepyfile(test_plain="import sys\n\ndef test_no_torch():\n    assert 'torch' not in sys.modules\n")
    result = pytester.runpytest_subprocess(
        f"--knightctl-plugins-dir={plugin_dir}", "-p", "no:cacheprovider", "-p", "no:xdist"
    )
    result.assert_outcomes(passed=1)
