"""A sweep parent's description (`mlflow.note.content`), in markdown: the outcome in words, then the
trials ranked, each with its swept values, its best value of the metric and the step of it, its
status and a link to its run, then the ranking's rule.

The first line is the outcome, as a training run's is (tracking/note.py): the runs table shows it
as the description's preview, and the tag `knightctl.outcome` repeats it. The links are relative,
`#/experiments/<id>/runs/<id>`: MLflow's UI routes on the URL's fragment (the form `knightctl ui`
links to, tracking/ui.py), so a link opens the run on whatever host, port or path the UI is served.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knightctl.sweep.ranking import TIE_RULE, has_value

if TYPE_CHECKING:
    from knightctl.sweep.ranking import SweepResult, TrialResult

_ERROR_CHARS = 120  # of a failed trial's error, in its status cell


def sweep_outcome(outcome: SweepResult, status: str) -> str:
    """The sweep's outcome in one line: `FINISHED: best val/loss 0.0907 (trial lr=0.7, run 3f...) of 4
    trials; 1 FAILED`, `KILLED after 2 of 4 trials: best ... so far`, `FAILED: none of 4 trials finished`."""
    total = outcome.total or len(outcome.trials) or len(outcome.results)
    of = f"of {total:,} trial{'s' * (total != 1)}"
    best = outcome.best
    found = f"best {outcome.metric} {best.value:.4g} (trial {best.trial.label}, run {best.run_id})" if best else ""
    if status == "RUNNING":
        done = f"{len(outcome.results):,} {of} done" + (f", {found} so far" if found else "")
        return f"RUNNING: {done}; ranked by best {outcome.metric} ({outcome.goal})"
    if status == "KILLED":
        return f"KILLED after {len(outcome.results):,} {of}" + (f": {found} so far" if found else "")
    if status == "FINISHED":
        line = f"FINISHED: {found} {of}" if found else f"FINISHED: no trial {of} logged {outcome.metric}"
        lost = [f"{count} {name}" for name in ("FAILED", "KILLED") if (count := _count(outcome, name))]
        return line + (f"; {', '.join(lost)}" if lost else "")
    errors = [r.error for r in outcome.results if r.error]
    return f"FAILED: none {of} finished" + (f"; first error: {errors[0]}" if errors else "")


def sweep_note(outcome: SweepResult, status: str) -> str:
    """The markdown description: the outcome line, the ranked table with links, the ranking's rule."""
    paths = [axis.path for axis in outcome.axes]
    metric = _cell(outcome.metric)
    header = ["rank", "trial", *(_cell(path) for path in paths), f"best {metric}", "at step", "status", "run"]
    lines = [
        sweep_outcome(outcome, status),
        "",
        f"### {_cell(outcome.spec_name)} sweep: ranked by best {metric} ({outcome.goal})",
        "",
        _row(header),
        _row(["---:", "---", *("---" for _ in paths), "---:", "---:", "---", "---"]),
    ]
    place = 0
    for result in outcome.ranked():
        ranked = has_value(result)
        place += ranked
        values = result.trial.values
        lines.append(
            _row(
                [
                    str(place) if ranked else "-",
                    _cell(result.trial.label),
                    *(_cell(values.get(path, "-")) for path in paths),
                    f"{result.value:.6g}" if ranked and result.value is not None else "-",
                    f"{result.step:,}" if ranked and result.step is not None else "-",
                    _status(result),
                    _link(outcome.experiment_id, result.run_id),
                ]
            )
        )
    lines += ["", TIE_RULE.format(metric=metric, goal=outcome.goal)]
    if outcome.best is not None:
        lines += ["", "The plot `plots/sweep.png` (Artifacts) shows each trial's best value against each swept value."]
    return "\n".join(lines) + "\n"


def run_link(experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI, relative to the UI: `#/experiments/<id>/runs/<id>`."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def _link(experiment_id: str, run_id: str | None) -> str:
    if not run_id:
        return "-"
    return f"[{run_id[:8]}]({run_link(experiment_id, run_id)})" if experiment_id else run_id[:8]


def _status(result: TrialResult) -> str:
    if result.status == "SKIPPED":  # an earlier run or another process finished it
        return "FINISHED (earlier run or another process)"
    if result.status in ("FAILED", "KILLED") and result.error:
        error = result.error if len(result.error) <= _ERROR_CHARS else result.error[: _ERROR_CHARS - 1] + "…"
        return _cell(f"{result.status}: {error}")
    return result.status


def _count(outcome: SweepResult, status: str) -> int:
    return sum(result.status == status for result in outcome.results)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    """Table cells cannot hold a pipe or a line break."""
    return text.replace("|", "\\|").replace("\n", " ")
