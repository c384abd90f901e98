"""Gradient verdicts in MLflow: a tag per op, its largest errors as metrics, the JSON report and
heatmaps as artifacts; in a training run, or in a run of their own (`knightctl gradcheck`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

from knightctl.gradcheck.report import OpReport

DEFAULT_EXPERIMENT = "knightctl-gradcheck"


def key(name: str) -> str:
    """An op or model name as an MLflow key: `knight::smooth_relu` -> `knight.smooth_relu`."""
    return name.replace("::", ".").replace(" ", ".")


def report_json(reports: Sequence[OpReport]) -> str:
    verdict = "failed" if any(r.verdict == "failed" for r in reports) else "passed"
    return json.dumps({"verdict": verdict, "ops": [r.to_dict() for r in reports]}, indent=2, default=str)


def log_reports(client: Any, run_id: str, reports: Sequence[OpReport], heatmaps: Sequence[Path] = ()) -> None:
    """Tags `gradcheck.<op>` = verdict, metrics of the worst errors, and the report and heatmaps as artifacts."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    tags = [RunTag(f"gradcheck.{key(r.name)}", r.verdict) for r in reports]
    tags.append(RunTag("gradcheck.verdict", "failed" if any(r.verdict == "failed" for r in reports) else "passed"))
    metrics = []
    for r in reports:
        metrics.append(Metric(f"gradcheck/{key(r.name)}/max_abs_error", max((c.max_abs_error for c in r.checks), default=0.0), now, 0))
        metrics.append(Metric(f"gradcheck/{key(r.name)}/max_rel_error", max((c.max_rel_error for c in r.checks), default=0.0), now, 0))
    client.log_batch(run_id, metrics=metrics, tags=tags)
    client.log_text(run_id, report_json(reports), "gradcheck/report.json")
    for heatmap in heatmaps:
        client.log_artifact(run_id, str(heatmap), "gradcheck/heatmaps")


def log_gradcheck_run(tracking_uri: str, reports: Sequence[OpReport], heatmaps: Sequence[Path], *, experiment: str, run_name: str) -> tuple[str, str]:
    """A FINISHED run holding the verdicts; returns (experiment id, run id)."""
    from knightctl.stores import create_run

    client, experiment_id, run_id, _ = create_run(tracking_uri, experiment, run_name=run_name, tags={"mlflow.source.type": "LOCAL"})
    status = "FAILED"
    try:
        log_reports(client, run_id, reports, heatmaps)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return experiment_id, run_id
