"""What `train` checks before it starts, and what `knightctl gradcheck` checks for a spec: each op at
the spec's own options as well as on its samples, the model when small, on the device `train`
would use; the command that reproduces a refusal; and the verdicts' keys in MLflow.

The op under test (written into each test's folder, loaded through the spec's `plugins:`) is wrong
only when its option `alpha` is not 1, and its own samples use alpha = 1: only a check at the
spec's options catches it.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from plugin_specs import spec_text
from processes import knightctl_command, run_knightctl

from knightctl.cli.commands import main
from knightctl.errors import GradcheckFailed
from knightctl.gradcheck import heatmap
from knightctl.gradcheck.preflight import PREFLIGHT_MAX_PARAMETERS, preflight
from knightctl.gradcheck.run import gradcheck
from knightctl.plugins.loader import load
from knightctl.plugins.system import PluginSettings
from knightctl.spec.model import load_spec
from knightctl.training.build import build_components
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
NO_DIRS = PluginSettings(dirs=())  # only what each spec lists
TEST_PLUGINS = ROOT / "tests" / "plugins"

SCALED_OP = textwrap.dedent(
    '''\
    """pf::scaled, y = alpha * x**2, whose backward forgets alpha: right only at alpha = 1."""

    import torch

    from knightctl import OpDef, Params, hookimpl


    class ScaledParams(Params):
        alpha: float = 1.0


    class _Scaled(torch.autograd.Function):
        @staticmethod
        def forward(x, alpha):
            return alpha * x * x

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * 2 * x, None  # BUG: times alpha is missing


    def scaled(x, alpha=1.0):
        return _Scaled.apply(x, alpha)


    def _samples(device, dtype):
        gen = torch.Generator().manual_seed(0)
        yield ((torch.rand(3, 4, generator=gen, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype),)


    @hookimpl
    def register_ops(register):
        register(OpDef(name="pf::scaled", fn=scaled, sample_inputs=_samples, params=ScaledParams, max_order=1, \
forward_mode=False, vmap=False))
    '''
)


def write_spec(folder: Path, alpha: float = 2.5) -> Path:
    """A spec whose model uses pf::scaled at `alpha`, with the op's file beside it in ops/."""
    (folder / "ops").mkdir(exist_ok=True)
    (folder / "ops" / "scaled_ops.py").write_text(SCALED_OP)
    spec = folder / "spec.yaml"
    spec.write_text(spec_text(["ops/scaled_ops.py"], f"{{type: 'pf::scaled', alpha: {alpha}}}"))
    return spec


def hint_command(error: GradcheckFailed) -> list[str]:
    """The command in the hint, as argv that runs this checkout's knightctl."""
    command = str(error.hint).split("`")[1]
    words = shlex.split(command)
    assert words[0] == "knightctl", command
    return knightctl_command(*words[1:])


def test_train_refuses_an_op_wrong_only_at_the_option_the_spec_gives(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    with pytest.raises(
        GradcheckFailed, match=r"pf::scaled \{alpha: 2\.5\} \(plugin 'scaled_ops'\): reverse failed"
    ) as caught:
        train(spec, track=False, plugins=NO_DIRS)
    labels = [(report.label, report.verdict) for report in caught.value.reports]
    assert labels == [("pf::scaled", "passed"), ("pf::scaled {alpha: 2.5}", "failed"), ("model plugin_spec", "failed")]
    assert "1 op(s) the model uses and the model itself" in caught.value.message
    alone = CliRunner().invoke(main, ["--plugins-dir", str(tmp_path / "ops"), "gradcheck", "pf::scaled", "--no-track"])
    assert alone.exit_code == 0, alone.output  # its own samples (alpha = 1) pass
    assert "0 failed" in alone.output


@pytest.mark.slow  # a fresh interpreter, and an MLflow store made for the gradcheck run: about 15 s
def test_the_hint_reproduces_the_refusal_with_the_spec_and_its_overrides(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, alpha=1.0)  # right as written; wrong as overridden
    with pytest.raises(GradcheckFailed, match=r"pf::scaled \{alpha: 3\.0\}") as caught:
        train(spec, overrides=["model.1.alpha=3.0"], track=False, plugins=NO_DIRS)
    command = hint_command(caught.value)
    assert command[3:] == ["gradcheck", "--spec", str(spec), "--set", "model.1.alpha=3.0"]
    done = run_knightctl(*command[3:], cwd=tmp_path, timeout=120)  # as pasted, tracking included
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pf::scaled {alpha: 3.0}: reverse failed" in done.stdout and "Traceback" not in done.stderr
    assert (tmp_path / "mlflow.db").exists()  # the verdicts went where the spec tracks


def test_gradcheck_spec_checks_each_op_at_the_spec_options_and_on_its_samples(tmp_path: Path) -> None:
    result = gradcheck(spec=write_spec(tmp_path), plugins=NO_DIRS, track=False, heatmap_dir=tmp_path / "maps")
    assert [(r.label, r.verdict) for r in result.reports] == [
        ("pf::scaled", "passed"),
        ("pf::scaled {alpha: 2.5}", "failed"),
        ("model plugin_spec", "failed"),
    ]
    assert result.reports[1].options == {"alpha": 2.5} and not result.passed
    assert [path.name for path in result.heatmaps] == ["pf__scaled_alpha_2.5.png"]


def test_the_model_check_runs_for_a_small_model_and_lands_with_the_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = train(
        ROOT / "experiments" / "round_table.yaml", overrides=["train.epochs=1"], tracking_uri=uri, plugins=NO_DIRS
    )
    run = MlflowClient(uri).get_run(result.run_id)
    assert (
        run.data.tags["gradcheck.model.round_table"] == "passed"
        and run.data.tags["gradcheck.model.round_table.reverse"] == "passed"
    )
    assert run.data.tags["gradcheck.verdict"] == "passed"
    assert 0 <= run.data.metrics["gradcheck/model.round_table/reverse/max_abs_error"] < 1e-5


def test_a_model_too_big_for_the_pre_flight_check_is_skipped_with_the_reason(tmp_path: Path) -> None:
    spec_file = tmp_path / "big.yaml"
    wide = spec_text([], "{type: linear, in_features: 4, out_features: 2000}")
    spec_file.write_text(
        wide.replace(
            "{type: linear, in_features: 4, out_features: 1}", "{type: linear, in_features: 2000, out_features: 1}"
        )
    )
    spec = load_spec(spec_file, plugins=NO_DIRS)
    system = load(NO_DIRS)
    model = build_components(spec, system.registry, torch.device("cpu"), 0).model
    count = sum(p.numel() for p in model.parameters())
    assert count >= PREFLIGHT_MAX_PARAMETERS
    (report,) = preflight(spec, system, "cpu", model)
    assert report.label == "model plugin_spec" and report.verdict == "n/a"
    assert report.checks[0].status == "skipped" and f"the model has {count:,} parameters" in report.checks[0].detail
    assert "knightctl gradcheck --spec" in report.note


def test_a_model_with_a_surrogate_gradient_op_is_not_held_to_the_true_derivative(tmp_path: Path) -> None:
    spec_file = tmp_path / "ste.yaml"
    spec_file.write_text(spec_text([str(ROOT / "plugins" / "straight_through.py")], "knight::sign_ste"))
    spec = load_spec(spec_file, plugins=NO_DIRS)
    system = load(NO_DIRS, files=spec.plugin_paths())
    reports = preflight(spec, system, "cpu", build_components(spec, system.registry, torch.device("cpu"), 0).model)
    assert reports[-1].verdict == "n/a" and "surrogate gradient by design" in reports[-1].checks[0].detail


no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: --device cuda is no error")


@no_cuda
@pytest.mark.parametrize("form", ["ops", "spec"])
def test_gradcheck_on_a_device_that_is_not_here_is_an_error_as_in_train(tmp_path: Path, form: str) -> None:
    target = ["pf::scaled"] if form == "ops" else ["--spec", str(write_spec(tmp_path))]
    result = CliRunner().invoke(
        main, ["--plugins-dir", str(tmp_path / "ops"), "gradcheck", *target, "--device", "cuda", "--no-track"]
    )
    assert result.exit_code == 2, result.output
    assert "--device cuda: " in result.output and "hint: use --device auto" in result.output
    assert "Traceback" not in result.output and "pf::scaled" not in result.output  # no op is blamed


@pytest.mark.skipif(sys.platform == "darwin", reason="MPS may be here")
def test_gradcheck_on_mps_off_macos_is_an_error(tmp_path: Path) -> None:
    write_spec(tmp_path)
    result = CliRunner().invoke(
        main, ["--plugins-dir", str(tmp_path / "ops"), "gradcheck", "pf::scaled", "--device", "mps", "--no-track"]
    )
    assert result.exit_code == 2 and "--device mps: " in result.output and "Traceback" not in result.output


def test_set_without_a_spec_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["gradcheck", "--set", "train.epochs=1", "--no-track"])
    assert result.exit_code == 2 and "--set" in result.output


def test_mlflow_holds_each_check_compared_and_only_its_status_otherwise(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    settings = PluginSettings(dirs=(TEST_PLUGINS,), disabled=frozenset({"recorder", "noisy_events", "faulty_ops"}))
    result = gradcheck(
        ["gc::wrong_second_order", "pf::scaled"], spec=write_spec(tmp_path), plugins=settings, tracking_uri=uri
    )
    data = MlflowClient(uri).get_run(result.run_id).data
    assert data.tags["gradcheck.pf.scaled"] == "passed" and data.tags["gradcheck.pf.scaled.alpha_2.5"] == "failed"
    assert (
        data.tags["gradcheck.gc.wrong_second_order.order_2"] == "failed" and data.tags["gradcheck.verdict"] == "failed"
    )
    assert data.metrics["gradcheck/pf.scaled.alpha_2.5/reverse/max_rel_error"] == pytest.approx(1 - 1 / 2.5, rel=1e-3)
    assert data.metrics["gradcheck/gc.wrong_second_order/order_2/max_abs_error"] > 0
    shown = {"passed": "passed", "failed": "failed", "unsupported": "n/a", "skipped": "skip", "error": "error"}
    seen = set()
    for report in result.reports:
        op = report.label.replace("::", ".").replace(" {", ".").replace(": ", "_").rstrip("}").replace(" ", ".")
        for check in report.checks:
            name = check.check.replace(" ", "_")
            seen.add(check.status)
            assert data.tags[f"gradcheck.{op}.{name}"] == shown[check.status]
            measures = check.status in ("passed", "failed") and check.check not in ("mutation", "grad metadata")
            logged = f"gradcheck/{op}/{name}/max_abs_error" in data.metrics
            assert logged == measures, (op, name, check.status)  # never a passing 0 for a skip
            relative = f"gradcheck/{op}/{name}/max_rel_error" in data.metrics
            assert relative == (measures and check.check not in ("linearity", "reentrant")), (op, name)
        compared = [
            c.max_rel_error
            for c in report.checks
            if c.status in ("passed", "failed")
            and c.check not in ("mutation", "grad metadata", "linearity", "reentrant")
        ]
        assert data.metrics[f"gradcheck/{op}/max_rel_error"] == pytest.approx(max(compared))
    assert {"skipped", "unsupported"} <= seen  # the no-metric rule was tested on both


def test_heatmaps_centre_every_panel_on_zero_and_label_the_colour_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda self, *a, **k: (figures.append(self), save(self, *a, **k))[1]
    )
    gradcheck(["pf::scaled"], spec=write_spec(tmp_path), plugins=NO_DIRS, track=False, heatmap_dir=tmp_path / "maps")
    (figure,) = figures
    panels = [axis for axis in figure.axes if axis.get_images()]
    assert [axis.get_title() for axis in panels] == ["analytic", "numeric", "analytic - numeric"]
    for axis in panels:
        (image,) = axis.get_images()
        low, high = image.get_clim()
        assert low == -high and high > 0 and image.get_cmap().name == "RdBu_r"
    assert panels[0].get_images()[0].get_clim() == panels[1].get_images()[0].get_clim()  # one scale to compare by eye
    bars = [axis.get_ylabel() for axis in figure.axes if not axis.get_images()]
    assert bars == ["d output / d input", "d output / d input", "analytic - numeric"]
    assert heatmap._limit(torch.zeros(3)) == 1.0
