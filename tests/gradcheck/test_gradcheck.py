"""The gradient verdict engine against deliberately wrong ops, tricky correct ones, and torch's own checker."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from plugin_specs import spec_text

from knightctl import OpDef
from knightctl.cli.commands import main
from knightctl.errors import GradcheckFailed
from knightctl.gradcheck import check_op
from knightctl.gradcheck.derivatives import EXACT_MAX_ENTRIES
from knightctl.gradcheck.models import check_model
from knightctl.gradcheck.run import gradcheck
from knightctl.plugins.files import import_plugin_file
from knightctl.plugins.loader import load
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import load_spec
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
GRADCHECK_OPS = ROOT / "tests" / "plugins" / "gradcheck_ops.py"
MODULE = import_plugin_file(GRADCHECK_OPS)
OPS: dict[str, OpDef] = {}
MODULE.register_ops(lambda op: OPS.__setitem__(op.name, dataclasses.replace(op, plugin="gradcheck_ops")))
ONLY_TEST_OPS = PluginSettings(
    dirs=(GRADCHECK_OPS.parent,), disabled=frozenset({"recorder", "noisy_events", "faulty_ops"})
)


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_fails_exactly_the_check_it_breaks_and_nothing_else(name: str) -> None:
    report = check_op(OPS[name])
    expected = MODULE.EXPECTED[name]
    failed = [check.check for check in report.failures]
    if expected is None:
        assert report.verdict == "passed" and not failed, [(c.check, c.status, c.detail) for c in report.checks]
    elif expected == "error":
        assert [(c.check, c.status) for c in report.checks] == [("forward pass", "error")]
        assert report.checks[0].detail == "sample 0: RuntimeError: the forward of gc::raises always fails"
    else:
        assert failed == [expected], [(c.check, c.status, c.detail) for c in report.checks]
        assert report.failures[0].worst is not None and report.failures[0].worst.abs_error > 0


def test_a_failure_names_input_output_and_the_worst_element() -> None:
    worst = check_op(OPS["gc::wrong_second_input"]).check("reverse").worst
    assert worst is not None and worst.input == 1 and worst.output == 0
    broadcast = check_op(OPS["gc::wrong_broadcast_reduction"]).check("reverse").worst
    assert broadcast is not None and broadcast.input == 1 and len(broadcast.input_element) == 1  # b has shape (4,)
    assert broadcast.elements_failed > 1 and broadcast.atol == 1e-5 and broadcast.rtol == 1e-3
    branch = check_op(OPS["gc::wrong_sign_branch"]).check("reverse").worst
    sample = list(OPS["gc::wrong_sign_branch"].sample_inputs("cpu", torch.float64))[branch.sample][0]
    assert float(sample[branch.input_element]) < 0  # only the negative branch is wrong
    assert branch.analytic == pytest.approx(-branch.numeric)


def test_a_one_percent_error_is_caught_exactly_and_fast_at_a_thousand_elements() -> None:
    wrong = OPS["gc::wrong_factor"]
    big = dataclasses.replace(
        wrong, sample_inputs=lambda device, dtype: [(torch.linspace(0.5, 3.0, 1000, dtype=dtype, device=device),)]
    )
    for method in ("exact", "fast"):
        result = check_op(big, method=method).check("reverse")
        assert result.status == "failed" and result.method == method
        assert result.worst.rel_error == pytest.approx(0.01, rel=1e-3)
    right = dataclasses.replace(
        OPS["gc::broadcast_add_mul"],
        sample_inputs=lambda device, dtype: [
            (
                torch.randn(100, 40, generator=torch.Generator().manual_seed(0), dtype=dtype),
                torch.randn(40, dtype=dtype),
            )
        ],
    )
    assert check_op(right, method="fast", order=1).check("reverse").status == "passed"


def test_auto_compares_whole_jacobians_when_small_and_projections_when_large() -> None:
    op = OPS["gc::relu_on_kink"]
    assert check_op(op).check("reverse").method == "exact"
    elements = int(EXACT_MAX_ENTRIES**0.5) + 1  # an elementwise op's Jacobian has elements^2 entries
    large = dataclasses.replace(
        op, sample_inputs=lambda device, dtype: [(torch.linspace(-2, 3, elements, dtype=dtype).add(1e-3),)]
    )
    assert check_op(large).check("reverse").method == "fast"


def test_kinks_are_reported_and_judged_by_one_sided_derivatives_where_torch_fails_the_op() -> None:
    op = OPS["gc::relu_on_kink"]
    (x,) = next(iter(op.sample_inputs("cpu", torch.float64)))
    with pytest.raises(RuntimeError, match="Jacobian mismatch"):
        torch.autograd.gradcheck(op.fn, (x.clone().requires_grad_(),))
    report = check_op(op)
    assert report.verdict == "passed"
    zeros = {tuple(index) for index in (x == 0).nonzero().tolist()}
    assert {k.element for k in report.kinks if k.sample == 0} == zeros
    assert all((k.left, k.right) == (pytest.approx(0.0), pytest.approx(1.0)) for k in report.kinks)


def test_forward_mode_says_unsupported_instead_of_a_silent_zero() -> None:
    custom = OPS["gc::custom_scale"]  # a custom op with register_autograd only: no jvp
    assert check_op(custom).check("forward").status == "unsupported"  # declared
    undeclared = check_op(dataclasses.replace(custom, forward_mode=None)).check("forward")
    assert undeclared.status == "unsupported" and "silently return zeros" in undeclared.detail
    assert (
        check_op(dataclasses.replace(custom, forward_mode=True)).check("forward").status == "failed"
    )  # claimed, not there
    no_jvp = check_op(dataclasses.replace(OPS["gc::wrong_second_order"], forward_mode=None)).check(
        "forward"
    )  # a Function without jvp
    assert no_jvp.status == "unsupported" and "NotImplementedError" in no_jvp.detail and "jvp" in no_jvp.detail


def test_orders_go_as_high_as_asked_and_the_op_declares(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    registry = load(PluginSettings()).registry
    squareplus = check_op(registry.get("op", "knight::squareplus"), order=3)
    assert [(c.check, c.status) for c in squareplus.checks if c.check.startswith("order")] == [
        ("order 2", "passed"),
        ("order 3", "passed"),
    ]
    smooth = check_op(registry.get("op", "knight::smooth_relu"), order=3)
    assert smooth.check("order 3").status == "unsupported" and "declared" in smooth.check("order 3").detail


def test_tolerances_come_from_the_op_and_can_be_overridden_per_call() -> None:
    wrong = OPS["gc::wrong_factor"]
    assert check_op(wrong, rtol=0.02).verdict == "passed"  # a 1% error inside a 2% tolerance
    assert check_op(dataclasses.replace(wrong, rtol=0.02)).verdict == "passed"


def test_mps_has_no_float64_so_the_check_runs_on_the_cpu_and_says_so() -> None:
    report = check_op(OPS["gc::relu_on_kink"], device="mps")
    assert report.device == "cpu" and report.note == "MPS has no float64: checked on the CPU"


@pytest.mark.cuda
def test_ops_are_checked_in_float64_on_cuda() -> None:
    report = check_op(OPS["gc::broadcast_add_mul"], device="cuda")
    assert report.device == "cuda" and report.verdict == "passed"
    assert check_op(OPS["gc::wrong_factor"], device="cuda").failures[0].check == "reverse"


def test_a_spec_model_is_checked_with_respect_to_inputs_and_parameters(tmp_path: Path) -> None:
    system = load(PluginSettings(dirs=()))
    spec = load_spec(ROOT / "experiments" / "round_table.yaml", plugins=PluginSettings(dirs=()))
    report = check_model(spec, system)
    assert report.verdict == "passed" and report.check("reverse").method == "exact"
    assert "0.weight, 0.bias, 2.weight, 2.bias" in report.note
    (tmp_path / "wrong.yaml").write_text(spec_text([str(GRADCHECK_OPS)], "gc::wrong_factor"))
    wrong = load_spec(tmp_path / "wrong.yaml", plugins=PluginSettings(dirs=()))
    assert check_model(wrong, load(PluginSettings(dirs=()), files=wrong.plugin_paths())).verdict == "failed"


def test_train_refuses_a_model_whose_op_fails_unless_told_to_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wrong.yaml").write_text(spec_text([str(GRADCHECK_OPS)], "gc::wrong_factor"))
    with pytest.raises(GradcheckFailed, match=r"gc::wrong_factor \(plugin 'gradcheck_ops'\): reverse failed") as caught:
        train(tmp_path / "wrong.yaml", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", plugins=PluginSettings(dirs=()))
    assert "--skip-gradcheck" in str(caught.value.hint) and caught.value.exit_code == 1
    assert not (tmp_path / "mlflow.db").exists()  # refused before any run
    result = train(tmp_path / "wrong.yaml", track=False, plugins=PluginSettings(dirs=()), skip_gradcheck=True)
    assert result.steps == 2


def test_the_cli_prints_a_table_and_the_worst_element_and_exits_1(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "--plugins-dir",
        str(GRADCHECK_OPS.parent),
        "--disable-plugin",
        "recorder",
        "gradcheck",
        "gc::wrong_factor",
        "gc::relu_on_kink",
    ]
    result = runner.invoke(
        main, [*args, "--no-track", "--json", str(tmp_path / "r.json"), "--heatmaps", str(tmp_path / "maps")]
    )
    assert result.exit_code == 1, result.output
    assert "gradcheck: 2 checked, 1 failed (float64, cpu)" in result.output
    assert "gc::wrong_factor: reverse failed (exact): 12 element(s) out of tolerance" in result.output
    assert (
        "worst: sample 1, output 0 element (1, 0), input 0 (args[0]) element (1, 0), where args[0] = " in result.output
    )
    assert "gc::relu_on_kink: 4 non-differentiable point(s)" in result.output and "Traceback" not in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["verdict"] == "failed" and [op["verdict"] for op in data["ops"]] == ["failed", "passed"]
    assert (tmp_path / "maps" / "gc__wrong_factor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_example_plugin_op_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["gradcheck", "--no-track"])
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output and "knight::sigmoid_gate" in result.output


def test_a_gradcheck_run_lands_in_mlflow_and_plugins_hear_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("KNIGHTCTL_TEST_EVENTS", str(events))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = PluginSettings(dirs=(GRADCHECK_OPS.parent,), disabled=frozenset({"noisy_events", "faulty_ops"}))
    result = gradcheck(["gc::wrong_factor", "gc::custom_scale"], plugins=settings, tracking_uri=uri)
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["gradcheck.gc.wrong_factor"] == "failed"
        and run.data.tags["gradcheck.gc.custom_scale"] == "passed"
    )
    assert run.data.tags["gradcheck.verdict"] == "failed"
    assert run.data.metrics["gradcheck/gc.wrong_factor/max_rel_error"] == pytest.approx(0.01, rel=1e-3)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(result.run_id, "gradcheck")}
    assert artifacts == {"gradcheck/report.json", "gradcheck/heatmaps"}
    assert json.loads(events.read_text().splitlines()[-1]) == {
        "event": "gradcheck_completed",
        "ops": ["gc::wrong_factor", "gc::custom_scale"],
    }


def test_a_gradcheck_run_tells_what_was_checked_how_and_by_whom(tmp_path: Path) -> None:
    """A reviewer reads the verdicts on the run page: description, params, provenance, a true duration."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    quiet = frozenset({"noisy_events", "faulty_ops", "recorder"})
    settings = PluginSettings(dirs=(GRADCHECK_OPS.parent,), disabled=quiet)
    before_ms = int(time.time() * 1000)
    result = gradcheck(["gc::wrong_factor", "gc::custom_scale"], plugins=settings, tracking_uri=uri, atol=1e-6)
    run = MlflowClient(uri).get_run(result.run_id)
    wrong = result.reports[0]
    outcome = f"FAILED: 1 of 2 failed: gc::wrong_factor ({wrong.failures[0].check})"
    note = run.data.tags["mlflow.note.content"]
    assert run.data.tags["knightctl.outcome"] == outcome and note.startswith(outcome + "\n")
    assert "| op | verdict | checks | seconds |" in note and "| gc::custom_scale | passed | mutation passed" in note
    assert wrong.explain()[0] in note  # the failure told as the terminal tells it
    assert run.data.params == {
        "ops": "gc::wrong_factor, gc::custom_scale",
        "order": "2, or each op's max_order",
        "method": "auto",
        "atol": "1e-06",
        "rtol": "each op's own",
        "dtype": "float64",
        "device": "cpu",
    }
    tags = run.data.tags
    assert tags["knightctl.version"] and tags["torch.version"] and tags["mlflow.source.name"] == "knightctl gradcheck"
    assert run.info.start_time <= before_ms + 1000  # started with the checks, not when they were logged
    assert run.info.end_time - run.info.start_time >= 1000 * sum(r.seconds for r in result.reports) * 0.9
