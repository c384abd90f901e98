"""`preflight(...)`: what `train` checks before it starts, and the pieces `knightctl gradcheck --spec`
shares with it: which ops a spec's model uses, the option sets it gives each, the model's own check
(or why it is skipped), and the command that reproduces a refusal.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from knightctl.errors import GradcheckFailed, KnightctlError, PluginError
from knightctl.gradcheck.checks import check_op
from knightctl.gradcheck.models import check_model
from knightctl.gradcheck.report import CheckResult, OpReport
from knightctl.plugins.registry import OpDef
from knightctl.plugins.system import PluginSettings, PluginSystem
from knightctl.spec.model import ExperimentSpec
from knightctl.tracking.plugintags import components_used

# The model check differentiates the loss with respect to every parameter by finite differences:
# two forward passes of the whole model per parameter. Under 10,000 parameters that stays around
# a second on a CPU, cheap enough to run before every training run; a bigger model is left to
# `knightctl gradcheck --spec`, which checks it whatever its size.
PREFLIGHT_MAX_PARAMETERS = 10_000

Planned = tuple[OpDef, dict[str, Any]]  # an op, and the keyword options it is checked at ({}: its samples as they are)


def ops_used(spec_ops: Sequence[tuple[str, str]], system: PluginSystem) -> list[str]:
    """The op names among a spec's components, in model order, once each."""
    names: list[str] = []
    for kind, name in spec_ops:
        if kind == "layer" and system.registry.get("op", name) is not None and name not in names:
            names.append(name)
    return names


def ops_named(system: PluginSystem, names: Sequence[str]) -> list[OpDef]:
    """The registered ops `names` names, in that order; every op when `names` is empty. An unknown
    name is a PluginError with a "did you mean" and the plugins that were loaded."""
    unknown = [name for name in names if system.registry.get("op", name) is None]
    if unknown:
        raise PluginError(system.registry.unknown_name_message("op", unknown[0]))
    return [system.registry.get("op", name) for name in names or system.registry.names("op")]


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


def model_report(
    spec: ExperimentSpec, system: PluginSystem, device: str, *, method: str = "auto", parameters: int | None = None
) -> OpReport:
    """`check_model`, or a report that says why it was skipped (too big for a pre-flight check when
    `parameters` is given, or an op whose backward is not meant to be the true derivative)."""
    reason = _model_skip_reason(spec, system, parameters)
    where = "cpu" if device == "mps" else device
    if reason is not None:
        return OpReport(
            f"model {spec.name}",
            "",
            where,
            [CheckResult("reverse", "skipped", reason)],
            note=f"model check skipped: {reason}",
        )
    try:
        return check_model(spec, system, device=device, method=method)
    except KnightctlError:
        raise  # the spec cannot be built: its own error says why
    except Exception as exc:  # an op's forward or backward raised inside the model: a verdict, never a traceback
        message = str(exc).splitlines()[0] if str(exc) else ""
        return OpReport(
            f"model {spec.name}", "", where, [CheckResult("reverse", "error", f"{type(exc).__name__}: {message}")]
        )


def _model_skip_reason(spec: ExperimentSpec, system: PluginSystem, parameters: int | None) -> str | None:
    if parameters is not None and parameters >= PREFLIGHT_MAX_PARAMETERS:
        return (
            f"the model has {parameters:,} parameters, and the pre-flight check covers models under "
            f"{PREFLIGHT_MAX_PARAMETERS:,}"
            " (`knightctl gradcheck --spec` checks it)"
        )
    for name in ops_used(components_used(spec), system):
        op = system.registry.get("op", name)
        if op.surrogate_gradient:
            return f"{name} has a surrogate gradient by design, so the model's gradient is not its true derivative"
        if not op.differentiable:
            return f"{name} has no derivative to check"
    return None


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


def _refusal(
    failed: list[OpReport], reports: list[OpReport], spec: ExperimentSpec, system: PluginSystem, device: str
) -> GradcheckFailed:
    """Each failure's op (with its options) or the model, its first failing check, and the command
    that shows it again."""
    lines = "".join(
        f"\n  - {_who(report)}: {check.check} {check.status}: {check.detail}"
        for report in failed
        for check in report.failures[:1]
    )
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
