"""`gradcheck(...)`: what `knightctl gradcheck` does, as one library call returning data.

Which ops: the ones named; else, with a spec, the ops its model uses (and the model itself); else
every registered op. Each op is checked on its own samples, and again at every distinct option set
the spec gives it as a layer (`{type: my::op, alpha: 2.5}`): a bug that shows only at the spec's
options must not pass. Then the JSON report, a heatmap per failing op, an MLflow run of its own,
and the plugins' `gradcheck_completed` hook. What `train` checks first is in preflight.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from knightctl.gradcheck.checks import check_op, sample_targets
from knightctl.gradcheck.heatmap import write_heatmap
from knightctl.gradcheck.preflight import Planned, model_report, ops_named, ops_used, plan_checks
from knightctl.gradcheck.report import OpReport
from knightctl.gradcheck.tracking import DEFAULT_EXPERIMENT, log_gradcheck_run, report_json
from knightctl.plugins.loader import load
from knightctl.plugins.registry import OpDef
from knightctl.plugins.system import PluginSettings, PluginSystem
from knightctl.spec.model import ExperimentSpec
from knightctl.tracking.plugintags import components_used
from knightctl.tracking.provenance import spec_provenance
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.training.devices import resolve_device


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
    started_ms = int(time.time() * 1000)  # the run's start: when the checks started, not when they were logged
    where = str(resolve_device(device).device)
    system, loaded_spec, ops = _select(names, spec, overrides, plugins)
    plan = plan_checks(ops, loaded_spec)
    reports = [
        check_op(op, device=where, order=order, method=method, atol=atol, rtol=rtol, options=options)
        for op, options in plan
    ]
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
            how = {"order": order, "method": method, "atol": atol, "rtol": rtol, "device": where}
            _track(result, loaded_spec, tracking_uri, how, started_ms)
        if heatmap_dir is None:
            result.heatmaps = []  # they lived in the scratch folder, and now in MLflow
    system.notify("gradcheck_completed", reports=reports)
    return result


def _track(
    result: GradcheckResult, spec: ExperimentSpec | None, tracking_uri: str | None, how: dict[str, Any], started_ms: int
) -> None:
    result.tracking_uri = resolve_tracking_uri(tracking_uri, spec)[0]
    name = f"gradcheck {spec.name}" if spec else "gradcheck"
    experiment = (spec.tracking.experiment or spec.name) if spec else DEFAULT_EXPERIMENT
    params = {
        "ops": ", ".join(report.label for report in result.reports),
        "order": str(how["order"]) if how["order"] is not None else "2, or each op's max_order",
        "method": how["method"],
        "atol": str(how["atol"]) if how["atol"] is not None else "each op's own",
        "rtol": str(how["rtol"]) if how["rtol"] is not None else "each op's own",
        "dtype": "float64",
        "device": how["device"],
    }
    if spec is not None:
        params["spec.digest"] = spec.digest()
    result.experiment_id, result.run_id = log_gradcheck_run(
        result.tracking_uri,
        result.reports,
        result.heatmaps,
        experiment=experiment,
        run_name=name,
        params={key: value[:6000] for key, value in params.items()},  # MLflow's limit for a param value
        tags=spec_provenance(spec, "knightctl gradcheck"),
        started_ms=started_ms,
    )


def _select(
    names: Sequence[str], spec: str | Path | None, overrides: Sequence[str], plugins: PluginSettings | None
) -> tuple[PluginSystem, ExperimentSpec | None, list[OpDef]]:
    """The plugins, the spec (if any), and the ops to check: named, the spec's, or all."""
    loaded_spec = None
    if spec is not None:
        from knightctl.spec.model import load_spec

        loaded_spec = load_spec(spec, overrides, plugins=plugins)
    system = load(plugins, files=loaded_spec.plugin_paths() if loaded_spec else ())
    if not names and loaded_spec is not None:
        names = ops_used(components_used(loaded_spec), system)
        if not names:
            return system, loaded_spec, []  # a model of torch's own layers: only the model is checked
    return system, loaded_spec, ops_named(system, names)


def _heatmaps(plan: Sequence[Planned], reports: Sequence[OpReport], directory: Path) -> list[Path]:
    paths = []
    for (op, options), report in zip(plan, reports, strict=False):  # the model's report, last, has no op and no heatmap
        if report.verdict == "failed" and report.checks[0].status != "error":
            path = write_heatmap(report, sample_targets(op, torch.device(report.device), options), directory)
            if path is not None:
                paths.append(path)
    return paths
