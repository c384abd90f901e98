"""Gradient verdicts in MLflow: a tag per op and per check, the errors of each check that compared
something as metrics, the JSON report and heatmaps as artifacts; in a training run, or in a run of
their own (`knightctl gradcheck`).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from knightctl.gradcheck.report import CheckResult, OpReport
from knightctl.tracking.stores import create_run
from knightctl.tracking.tags import NOTE_TAG, OUTCOME_TAG, SOURCE_TYPE_TAG

DEFAULT_EXPERIMENT = "knightctl-gradcheck"
_TAGS_PER_BATCH, _METRICS_PER_BATCH = 100, 900  # MLflow's log_batch takes 100 tags and 1000 entities in all


# How each check status reads in a tag, as the table shows it: never a passing 0 for what was not compared.
_SHOWN = {"passed": "passed", "failed": "failed", "unsupported": "n/a", "skipped": "skip", "error": "error"}


def key(label: str) -> str:
    """An op's label (or a model's name) as an MLflow key part: `knight::smooth_relu` ->
    `knight.smooth_relu`, `my::op {alpha: 2.5}` -> `my.op.alpha_2.5`, `model round_table` ->
    `model.round_table`; whatever MLflow refuses in a key becomes `_`."""
    text = label.replace("::", ".").replace(": ", "_").replace(", ", "_").replace(" {", ".").replace(" ", ".")
    return re.sub(r"_+", "_", re.sub(r"[^\w.\-]", "_", text)).strip("_.")


def check_key(check: str) -> str:
    """A check's name as a key part: `order 2` -> `order_2`."""
    return re.sub(r"[^\w.\-]+", "_", check).strip("_")


_NO_NUMBERS = ("mutation", "grad metadata")  # they compare tensors for identity, dtypes and shapes: no error to log
_ABSOLUTE_ONLY = ("linearity", "reentrant")  # gradients against gradients: no finite difference to be relative to


def compared(report: OpReport) -> list[CheckResult]:
    """The checks that measured an error: passed or failed (n/a, skip, error measured nothing),
    and of a kind that has one."""
    return [c for c in report.checks if c.status in ("passed", "failed") and c.check not in _NO_NUMBERS]


def overall(reports: Sequence[OpReport]) -> str:
    """failed if any failed; passed if any passed; n/a if nothing was compared."""
    verdicts = {report.verdict for report in reports}
    return "failed" if "failed" in verdicts else "passed" if "passed" in verdicts or not verdicts else "n/a"


def report_json(reports: Sequence[OpReport]) -> str:
    return json.dumps({"verdict": overall(reports), "ops": [r.to_dict() for r in reports]}, indent=2, default=str)


def _entries(reports: Sequence[OpReport], now: int) -> tuple[list[Any], list[Any]]:
    """Tags `gradcheck.<op>` (verdict) and `gradcheck.<op>.<check>` (status, shown as the table
    shows it), and metrics `gradcheck/<op>[/<check>]/max_abs_error` and `max_rel_error` over the
    checks that compared something only."""
    from mlflow.entities import Metric, RunTag

    tags = [RunTag("gradcheck.verdict", overall(reports))]
    metrics = []
    for report in reports:
        op = key(report.label)
        tags.append(RunTag(f"gradcheck.{op}", report.verdict))
        tags.extend(RunTag(f"gradcheck.{op}.{check_key(check.check)}", _SHOWN[check.status]) for check in report.checks)
        measured = compared(report)
        relative = [check for check in measured if check.check not in _ABSOLUTE_ONLY]
        for check in measured:
            metrics.append(
                Metric(f"gradcheck/{op}/{check_key(check.check)}/max_abs_error", check.max_abs_error, now, 0)
            )
        for check in relative:
            metrics.append(
                Metric(f"gradcheck/{op}/{check_key(check.check)}/max_rel_error", check.max_rel_error, now, 0)
            )
        if measured:
            metrics.append(
                Metric(f"gradcheck/{op}/max_abs_error", max(check.max_abs_error for check in measured), now, 0)
            )
        if relative:
            metrics.append(
                Metric(f"gradcheck/{op}/max_rel_error", max(check.max_rel_error for check in relative), now, 0)
            )
    # An op named twice, or a check that appears twice, gives one key: the last one stands, once.
    return list({metric.key: metric for metric in metrics}.values()), list({tag.key: tag for tag in tags}.values())


def log_reports(client: Any, run_id: str, reports: Sequence[OpReport], heatmaps: Sequence[Path] = ()) -> None:
    """The tags and metrics of `_entries`, and the report and heatmaps as artifacts."""
    metrics, tags = _entries(reports, int(time.time() * 1000))
    batches = max(-(-len(tags) // _TAGS_PER_BATCH), -(-len(metrics) // _METRICS_PER_BATCH), 1)
    for i in range(batches):
        client.log_batch(
            run_id,
            metrics=metrics[i * _METRICS_PER_BATCH : (i + 1) * _METRICS_PER_BATCH],
            tags=tags[i * _TAGS_PER_BATCH : (i + 1) * _TAGS_PER_BATCH],
        )
    client.log_text(run_id, report_json(reports), "gradcheck/report.json")
    for heatmap in heatmaps:
        client.log_artifact(run_id, str(heatmap), "gradcheck/heatmaps")


def log_gradcheck_run(
    tracking_uri: str,
    reports: Sequence[OpReport],
    heatmaps: Sequence[Path],
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
    started_ms: int | None = None,
) -> tuple[str, str]:
    """A FINISHED run holding the verdicts, its description the verdict table, with `params` (what was
    checked and how) and `tags` (its provenance), started when the checks did; (experiment id, run id)."""
    from mlflow.entities import Param

    client, experiment_id, run_id, _ = create_run(
        tracking_uri,
        experiment,
        run_name=run_name,
        tags={SOURCE_TYPE_TAG: "LOCAL", **(tags or {})},
        start_time_ms=started_ms,
    )
    status = "FAILED"
    try:
        client.log_batch(run_id, params=[Param(k, v) for k, v in (params or {}).items()])
        client.set_tag(run_id, NOTE_TAG, gradcheck_note(reports))
        client.set_tag(run_id, OUTCOME_TAG, outcome_line(reports))
        log_reports(client, run_id, reports, heatmaps)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return experiment_id, run_id


def outcome_line(reports: Sequence[OpReport]) -> str:
    """`passed: 6 checked` / `FAILED: 2 of 6 failed: gf::a (linearity), gf::b (reentrant)`."""
    failed = [r for r in reports if r.verdict == "failed"]
    if not failed:
        na = sum(r.verdict == "n/a" for r in reports)
        return f"passed: {len(reports)} checked" + (f", {na} n/a (nothing to compare)" if na else "")
    named = ", ".join(f"{r.label} ({r.failures[0].check})" for r in failed[:5]) + (" ..." if len(failed) > 5 else "")
    return f"FAILED: {len(failed)} of {len(reports)} failed: {named}"


def gradcheck_note(reports: Sequence[OpReport]) -> str:
    """The run's description: the outcome, the verdict table as markdown, then what failed and where."""
    lines = [outcome_line(reports), "", "| op | verdict | checks | seconds |", "|---|---|---|---|"]
    for report in reports:
        checks = ", ".join(f"{c.check} {_SHOWN[c.status]}" for c in report.checks)
        lines.append(f"| {_cell(report.label)} | {report.verdict} | {_cell(checks)} | {report.seconds:.2f} |")
    details = [line for report in reports for line in report.explain()]
    if details:
        lines += ["", "```", *details, "```"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
