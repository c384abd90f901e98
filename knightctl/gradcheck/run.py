"""`gradcheck(...)`: what `knightctl gradcheck` does, as one library call returning data.

Which ops: the ones named; else, with a spec, the ops its model uses (and the model itself); else
every registered op. Then the JSON report, a heatmap per failing op, an MLflow run of its own, and
the plugins' `gradcheck_completed` hook.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from knightctl.gradcheck.checks import check_op, sample_targets
from knightctl.gradcheck.heatmap import write_heatmap
from knightctl.gradcheck.models import check_model
from knightctl.tracking import resolve_tracking_uri
from knightctl.gradcheck.report import OpReport
from knightctl.gradcheck.tracking import DEFAULT_EXPERIMENT, log_gradcheck_run, report_json
from knightctl.plugins import PluginSettings, PluginSystem, load
from knightctl.errors import PluginError
from knightctl.plugintags import components_used
from knightctl.registry import OpDef
from knightctl.spec import ExperimentSpec


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
        return all(report.verdict == "passed" for report in self.reports)


def ops_used(spec_ops: Sequence[tuple[str, str]], system: PluginSystem) -> list[str]:
    """The op names among a spec's components, in model order, once each."""
    names: list[str] = []
    for kind, name in spec_ops:
        if kind == "layer" and system.registry.get("op", name) is not None and name not in names:
            names.append(name)
    return names


def gradcheck(
    names: Sequence[str] = (),
    *,
    spec: str | Path | None = None,
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
    """Check ops (and a spec's model) and deliver the verdicts; never raises for a failing op."""
    system, loaded_spec, ops = _select(names, spec, plugins)
    reports = [check_op(op, device=device, order=order, method=method, atol=atol, rtol=rtol) for op in ops]
    if loaded_spec is not None:
        reports.append(check_model(loaded_spec, system, device=device, method=method))
    result = GradcheckResult(reports)
    if json_path is not None:
        result.json_path = Path(json_path)
        result.json_path.write_text(report_json(reports))
    with tempfile.TemporaryDirectory() as scratch:
        if heatmap_dir is not None or track:
            result.heatmaps = _heatmaps(ops, reports, Path(heatmap_dir) if heatmap_dir is not None else Path(scratch))
        if track:
            result.tracking_uri = resolve_tracking_uri(tracking_uri, loaded_spec)[0]
            name = f"gradcheck {loaded_spec.name}" if loaded_spec else "gradcheck"
            experiment = (loaded_spec.tracking.experiment or loaded_spec.name) if loaded_spec else DEFAULT_EXPERIMENT
            result.experiment_id, result.run_id = log_gradcheck_run(result.tracking_uri, reports, result.heatmaps, experiment=experiment, run_name=name)
        if heatmap_dir is None:
            result.heatmaps = []  # they lived in the scratch folder, and now in MLflow
    system.notify("gradcheck_completed", reports=reports)
    return result


def _select(names: Sequence[str], spec: str | Path | None, plugins: PluginSettings | None) -> tuple[PluginSystem, ExperimentSpec | None, list[OpDef]]:
    """The plugins, the spec (if any), and the ops to check: named, the spec's, or all."""
    loaded_spec = None
    if spec is not None:
        from knightctl.spec import load_spec

        loaded_spec = load_spec(spec, plugins=plugins)
    system = load(plugins, files=loaded_spec.plugin_paths() if loaded_spec else ())
    unknown = [name for name in names if system.registry.get("op", name) is None]
    if unknown:
        raise PluginError(system.registry.unknown_name_message("op", unknown[0]))
    if not names:
        names = ops_used(components_used(loaded_spec), system) if loaded_spec else system.registry.names("op")
    return system, loaded_spec, [system.registry.get("op", name) for name in names]


def _heatmaps(ops: Sequence[OpDef], reports: Sequence[OpReport], directory: Path) -> list[Path]:
    paths = []
    for op, report in zip(ops, reports):  # the model's report, last, has no op and no heatmap
        if report.verdict == "failed" and report.checks[0].status != "error":
            path = write_heatmap(report, sample_targets(op, torch.device(report.device)), directory)
            if path is not None:
                paths.append(path)
    return paths



def preflight(spec: ExperimentSpec, system: PluginSystem, device: str) -> list[OpReport]:
    """Check every op the spec's model uses before training; raise GradcheckFailed if one fails."""
    from knightctl.errors import GradcheckFailed

    names = ops_used(components_used(spec), system)
    reports = [check_op(system.registry.get("op", name), device=device, library=False) for name in names]
    failed = [report for report in reports if report.verdict == "failed"]
    if failed:
        lines = []
        for report in failed:
            check = report.failures[0]
            lines.append(f"\n  - {report.name} (plugin {report.plugin!r}): {check.check} {check.status}: {check.detail}")
        raise GradcheckFailed(
            f"the gradient check failed for {len(failed)} op(s) the model uses:{''.join(lines)}",
            reports=reports,
            hint=f"`knightctl gradcheck {failed[0].name}` shows where and by how much; --skip-gradcheck trains anyway",
        )
    return reports
