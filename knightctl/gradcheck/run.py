"""`gradcheck(...)`: what `knightctl gradcheck` does, as one library call returning data; and
`preflight(...)`, the same checks `train` runs before it starts.

Which ops: the ones named; else, with a spec, the ops its model uses (and the model itself); else
every registered op. Each op is checked on its own samples, and again at every distinct option set
the spec gives it as a layer (`{type: my::op, alpha: 2.5}`): a bug that shows only at the spec's
options must not pass. Then the JSON report, a heatmap per failing op, an MLflow run of its own,
and the plugins' `gradcheck_completed` hook.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from knightctl.training.devices import resolve_device
from knightctl.errors import GradcheckFailed, KnightctlError, PluginError
from knightctl.gradcheck.checks import check_op, sample_targets
from knightctl.gradcheck.heatmap import write_heatmap
from knightctl.gradcheck.models import check_model
from knightctl.gradcheck.report import CheckResult, OpReport
from knightctl.gradcheck.tracking import DEFAULT_EXPERIMENT, log_gradcheck_run, report_json
from knightctl.plugins.system import PluginSettings, PluginSystem
from knightctl.plugins.loader import load
from knightctl.tracking.plugintags import components_used
from knightctl.plugins.registry import OpDef
from knightctl.spec.model import ExperimentSpec
from knightctl.tracking.run import resolve_tracking_uri

# The model check differentiates the loss with respect to every parameter by finite differences:
# two forward passes of the whole model per parameter. Under 10,000 parameters that stays around
# a second on a CPU, cheap enough to run before every training run; a bigger model is left to
# `knightctl gradcheck --spec`, which checks it whatever its size.
PREFLIGHT_MAX_PARAMETERS = 10_000

Planned = tuple[OpDef, dict[str, Any]]  # an op, and the keyword options it is checked at ({}: its samples as they are)


@dataclass
class GradcheckResult:
    """The reports, and where their JSON, heatmaps and MLflow run went."""

    reports: list[OpReport]
    json_path: Path | None = None
    heatmaps: list[Path] = field(default_factory=list)
    tracking_uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        """Nothing failed ("n/a", nothing differentiable to compare, is no failure)."""
        return not any(report.verdict == "failed" for report in self.reports)


def ops_used(spec_ops: Sequence[tuple[str, str]], system: PluginSystem) -> list[str]:
    """The op names among a spec's components, in model order, once each."""
    names: list[str] = []
    for kind, name in spec_ops:
        if kind == "layer" and system.registry.get("op", name) is not None and name not in names:
            names.append(name)
    return names


def spec_option_sets(spec: ExperimentSpec, op: OpDef) -> list[dict[str, Any]]:
    """The distinct non-empty options the spec's layers give `op`, validated as `train` builds them."""
    base_dir = spec.source.base_dir if spec.source else Path.cwd()
    sets: list[dict[str, Any]] = []
    for layer in spec.model:
        if layer.type == op.name:
            options = op.params.model_validate(layer.options(), context={"base_dir": base_dir}).model_dump()
            if options and options not in sets:
                sets.append(options)
    return sets


def plan_checks(ops: Sequence[OpDef], spec: ExperimentSpec | None) -> list[Planned]:
    """Each op on its own samples, then at each option set the spec gives it."""
    return [(op, options) for op in ops for options in [{}, *(spec_option_sets(spec, op) if spec is not None else [])]]


def model_report(spec: ExperimentSpec, system: PluginSystem, device: str, *, method: str = "auto", parameters: int | None = None) -> OpReport:
    """`check_model`, or a report that says why it was skipped (too big for a pre-flight check when
    `parameters` is given, or an op whose backward is not meant to be the true derivative)."""
    reason = _model_skip_reason(spec, system, parameters)
    where = "cpu" if device == "mps" else device
    if reason is not None:
        return OpReport(f"model {spec.name}", "", where, [CheckResult("reverse", "skipped", reason)], note=f"model check skipped: {reason}")
    try:
        return check_model(spec, system, device=device, method=method)
    except KnightctlError:
        raise  # the spec cannot be built: its own error says why
    except Exception as exc:  # an op's forward or backward raised inside the model: a verdict, never a traceback
        message = str(exc).splitlines()[0] if str(exc) else ""
        return OpReport(f"model {spec.name}", "", where, [CheckResult("reverse", "error", f"{type(exc).__name__}: {message}")])


def _model_skip_reason(spec: ExperimentSpec, system: PluginSystem, parameters: int | None) -> str | None:
    if parameters is not None and parameters >= PREFLIGHT_MAX_PARAMETERS:
        return (f"the model has {parameters:,} parameters, and the pre-flight check covers models under {PREFLIGHT_MAX_PARAMETERS:,}"
                " (`knightctl gradcheck --spec` checks it)")
    for name in ops_used(components_used(spec), system):
        op = system.registry.get("op", name)
        if op.surrogate_gradient:
            return f"{name} has a surrogate gradient by design, so the model's gradient is not its true derivative"
        if not op.differentiable:
            return f"{name} has no derivative to check"
    return None


def gradcheck(
    names: Sequence[str] = (),
    *,
    spec: str | Path | None = None,
    overrides: Sequence[str] = (),
    plugins: PluginSettings | None = None,
    device: str = "cpu",
    order: int | None = None,
    method: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    json_path: str | Path | None = None,
    heatmap_dir: str | Path | None = None,
    track: bool = True,
    tracking_uri: str | None = None,
) -> GradcheckResult:
    """Check ops (and a spec's model) and deliver the verdicts; never raises for a failing op.

    `device` is resolved as `train` resolves it (DeviceError for one that is not here); `overrides`
    are `--set PATH=VALUE` strings for the spec."""
    where = str(resolve_device(device).device)
    system, loaded_spec, ops = _select(names, spec, overrides, plugins)
    plan = plan_checks(ops, loaded_spec)
    reports = [check_op(op, device=where, order=order, method=method, atol=atol, rtol=rtol, options=options) for op, options in plan]
    if loaded_spec is not None:
        reports.append(model_report(loaded_spec, system, where, method=method))
    result = GradcheckResult(reports)
    if json_path is not None:
        result.json_path = Path(json_path)
        result.json_path.write_text(report_json(reports))
    with tempfile.TemporaryDirectory() as scratch:
        if heatmap_dir is not None or track:
            result.heatmaps = _heatmaps(plan, reports, Path(heatmap_dir) if heatmap_dir is not None else Path(scratch))
        if track:
            _track(result, loaded_spec, tracking_uri)
        if heatmap_dir is None:
            result.heatmaps = []  # they lived in the scratch folder, and now in MLflow
    system.notify("gradcheck_completed", reports=reports)
    return result


def _track(result: GradcheckResult, spec: ExperimentSpec | None, tracking_uri: str | None) -> None:
    result.tracking_uri = resolve_tracking_uri(tracking_uri, spec)[0]
    name = f"gradcheck {spec.name}" if spec else "gradcheck"
    experiment = (spec.tracking.experiment or spec.name) if spec else DEFAULT_EXPERIMENT
    result.experiment_id, result.run_id = log_gradcheck_run(result.tracking_uri, result.reports, result.heatmaps, experiment=experiment, run_name=name)


def _select(names: Sequence[str], spec: str | Path | None, overrides: Sequence[str],
            plugins: PluginSettings | None) -> tuple[PluginSystem, ExperimentSpec | None, list[OpDef]]:
    """The plugins, the spec (if any), and the ops to check: named, the spec's, or all."""
    loaded_spec = None
    if spec is not None:
        from knightctl.spec.model import load_spec

        loaded_spec = load_spec(spec, overrides, plugins=plugins)
    system = load(plugins, files=loaded_spec.plugin_paths() if loaded_spec else ())
    unknown = [name for name in names if system.registry.get("op", name) is None]
    if unknown:
        raise PluginError(system.registry.unknown_name_message("op", unknown[0]))
    if not names:
        names = ops_used(components_used(loaded_spec), system) if loaded_spec else system.registry.names("op")
    return system, loaded_spec, [system.registry.get("op", name) for name in names]


def _heatmaps(plan: Sequence[Planned], reports: Sequence[OpReport], directory: Path) -> list[Path]:
    paths = []
    for (op, options), report in zip(plan, reports):  # the model's report, last, has no op and no heatmap
        if report.verdict == "failed" and report.checks[0].status != "error":
            path = write_heatmap(report, sample_targets(op, torch.device(report.device), options), directory)
            if path is not None:
                paths.append(path)
    return paths


def preflight(spec: ExperimentSpec, system: PluginSystem, device: str, model: torch.nn.Module) -> list[OpReport]:
    """What `train` checks before it starts: every op the model uses, on its samples and at each of
    the spec's option sets (without `opcheck`), and the model itself when it has fewer than
    PREFLIGHT_MAX_PARAMETERS parameters (`model`: the built model, to count them). The reports end
    with the model's (checked, or skipped with the reason). Raises GradcheckFailed if one fails."""
    names = ops_used(components_used(spec), system)
    plan = plan_checks([system.registry.get("op", name) for name in names], spec)
    reports = [check_op(op, device=device, library=False, options=options) for op, options in plan]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    reports.append(model_report(spec, system, device, parameters=parameters))
    failed = [report for report in reports if report.verdict == "failed"]
    if failed:
        raise _refusal(failed, reports, spec, system, device)
    return reports


def _refusal(failed: list[OpReport], reports: list[OpReport], spec: ExperimentSpec, system: PluginSystem, device: str) -> GradcheckFailed:
    """Each failure's op (with its options) or the model, its first failing check, and the command that shows it again."""
    lines = "".join(f"\n  - {_who(report)}: {check.check} {check.status}: {check.detail}" for report in failed for check in report.failures[:1])
    model_failed = failed[-1] is reports[-1]  # the model's report is the last
    ops_failed = len(failed) - model_failed
    parts = [f"{ops_failed} op(s) the model uses"] if ops_failed else []
    what = " and ".join(parts + (["the model itself" if ops_failed else "the model"] if model_failed else []))
    return GradcheckFailed(
        f"the gradient check failed for {what}:{lines}",
        reports=reports,
        hint=f"`{reproduce_command(spec, system, device)}` shows where and by how much; --skip-gradcheck trains anyway",
    )


def _who(report: OpReport) -> str:
    return f"{report.label} (plugin {report.plugin!r})" if report.plugin else report.label


def reproduce_command(spec: ExperimentSpec, system: PluginSystem, device: str) -> str:
    """The `knightctl gradcheck --spec` command that checks what `train` checked: the spec's file,
    its `--set` overrides, the plugin options and the device (ops from the spec's `plugins:` come
    with the spec)."""
    words = ["knightctl", *_plugin_flags(system.settings), "gradcheck"]
    if spec.source is None:  # a spec built in code, with no file to name: its ops, at their samples only
        return shlex.join([*words, *ops_used(components_used(spec), system), *_device_flag(device)])
    words += ["--spec", spec.source.path]
    for override in spec.source.overrides:
        words += ["--set", override]
    return shlex.join([*words, *_device_flag(device)])


def _device_flag(device: str) -> list[str]:
    return [] if device == "cpu" else ["--device", device]


def _plugin_flags(settings: PluginSettings) -> list[str]:
    """The command-line options that load the same plugins (the default `./plugins` needs none)."""
    flags: list[str] = []
    dirs = settings.plugin_dirs()
    if dirs and dirs != ((Path.cwd() / "plugins").resolve(),):
        for directory in dirs:
            flags += ["--plugins-dir", str(directory)]
    for name in sorted(settings.disabled):
        flags += ["--disable-plugin", name]
    return flags + ([] if settings.external else ["--no-external-plugins"])
