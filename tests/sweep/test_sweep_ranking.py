"""A sweep's ranking, description, plot and params, from synthetic trials: no training, no store.

Each trial's value is its best over a history of (step, value) points, as `sweep()` reads it from
MLflow; the histories here are made so that ranking by the last value would give another order.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from knightctl.spec.model import load_spec
from knightctl.sweep.ranking import SweepResult, TrialResult, best_point, rank
from knightctl.sweep.run import ranking_of
from knightctl.sweep.space import Trial, grid_trials, space_axes
from knightctl.tracking.sweepnote import sweep_note, sweep_outcome
from knightctl.tracking.sweepplots import sweep_figure
from knightctl.tracking.sweeps import best_metric_name, parent_params

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
LINK = re.compile(r"\[([0-9a-z]{8})\]\(#/experiments/(\w+)/runs/(\w+)\)")


def scored(trial: Trial, history: list[tuple[int, float]], run_id: str, goal: str = "min") -> TrialResult:
    """A finished trial with its best value and step taken from `history`, as `sweep()` does."""
    point = best_point(history, goal)  # type: ignore[arg-type]
    assert point is not None
    return TrialResult(trial, "FINISHED", run_id, point[0], step=point[1])


def outcome_of(results: list[TrialResult], trials: list[Trial], grid: list[str], goal: str = "min") -> SweepResult:
    return SweepResult(
        "parent0",
        "sqlite:///unused.db",
        "val/loss",
        goal,  # type: ignore[arg-type]
        results,
        trials=trials,
        axes=space_axes(grid, []),
        spec_name="round_table",
        experiment_id="7",
    )


def test_the_best_point_is_the_lowest_or_highest_finite_value_at_its_first_step() -> None:
    history = [(3, 0.5), (1, 0.9), (2, 0.4), (4, math.nan), (5, 0.4), (6, 0.7)]
    assert best_point(history, "min") == (0.4, 2)  # reached again at step 5: the first counts
    assert best_point(history, "max") == (0.9, 1)
    assert best_point([(1, math.nan), (2, math.inf)], "min") is None
    assert best_point([], "max") is None


def test_trials_rank_by_their_best_value_not_their_last() -> None:
    trials = grid_trials(["optimizer.lr=0.3,0.7"])
    histories = {"steady": [(1, 0.5), (2, 0.2), (3, 0.15)], "overshoots": [(1, 0.5), (2, 0.1), (3, 0.3)]}
    assert histories["steady"][-1][1] < histories["overshoots"][-1][1]  # by the last value, steady would win
    steady, overshoots = (scored(t, histories[name], name) for t, name in zip(trials, histories, strict=True))
    assert [r.run_id for r in rank([steady, overshoots], "min", {})] == ["overshoots", "steady"]
    assert (overshoots.value, overshoots.step) == (0.1, 2)
    assert outcome_of([steady, overshoots], trials, ["optimizer.lr=0.3,0.7"]).best is overshoots
    maximised = [scored(trials[0], [(1, 0.7), (2, 0.9)], "a", "max"), scored(trials[1], [(1, 0.95)], "b", "max")]
    assert [r.run_id for r in rank(maximised, "max", {})] == ["b", "a"]


def test_ties_go_to_the_earlier_step_then_the_earlier_trial_and_trials_without_a_value_come_last() -> None:
    trials = grid_trials(["optimizer.lr=0.1,0.2,0.3,0.4,0.5,0.6"])
    order = {trial.key: place for place, trial in enumerate(trials)}
    results = [
        TrialResult(trials[0], "FAILED", "f" * 32, None, "the training loss became nan at step 3"),
        scored(trials[5], [(1, 0.3), (4, 0.2)], "late"),  # 0.2 at step 4
        TrialResult(trials[1], "KILLED", None, None, "interrupted"),
        scored(trials[4], [(1, 0.2)], "early-later-trial"),  # 0.2 at step 1, trial 5
        scored(trials[3], [(1, 0.2), (2, 0.25)], "early-earlier-trial"),  # 0.2 at step 1, trial 4
        TrialResult(trials[2], "FINISHED", "c" * 32, None),  # finished without logging the metric
    ]
    ranked = rank(results, "min", order)
    assert [r.run_id for r in ranked[:3]] == ["early-earlier-trial", "early-later-trial", "late"]
    assert [r.status for r in ranked[3:]] == ["FAILED", "KILLED", "FINISHED"]  # the sweep's order


def test_the_description_opens_with_the_outcome_and_ranks_every_trial_with_a_link_to_its_run() -> None:
    grid = ["optimizer.lr=0.3,0.7,1e30", "train.batch_size=full"]
    trials = grid_trials(grid)
    results = [
        scored(trials[0], [(1, 0.5), (28, 0.0945)], "3" * 32),
        TrialResult(trials[2], "FAILED", "9" * 32, None, "the training loss became nan | at step 2"),
        scored(trials[1], [(1, 0.5), (25, 0.0907), (28, 0.109)], "7" * 32),
    ]
    outcome = outcome_of(results, trials, grid)
    note = sweep_note(outcome, "FINISHED")
    first = note.splitlines()[0]
    assert (
        first == f"FINISHED: best val/loss 0.0907 (trial lr=0.7 batch_size=full, run {'7' * 32}) of 3 trials; 1 FAILED"
    )
    assert sweep_outcome(outcome, "FINISHED") == first
    rows = [line for line in note.splitlines() if line.startswith("| ")]
    assert rows[0] == "| rank | trial | optimizer.lr | train.batch_size | best val/loss | at step | status | run |"
    assert rows[1].startswith("| ---: |") and rows[1].count("|") == rows[0].count("|")
    body = rows[2:]
    assert body[0].startswith("| 1 | lr=0.7 batch_size=full | 0.7 | full | 0.0907 | 25 | FINISHED | [77777777](")
    assert body[1].startswith("| 2 | lr=0.3 batch_size=full | 0.3 | full | 0.0945 | 28 | FINISHED | ")
    assert body[2].startswith("| - | lr=1e30 batch_size=full | 1e30 | full | - | - | FAILED: the training loss")
    assert "nan \\| at step 2" in body[2]  # a pipe in a cell is escaped, not a new column
    links = [LINK.search(row) for row in body]
    assert [(m.group(2), m.group(3)) for m in links if m] == [("7", "7" * 32), ("7", "3" * 32), ("7", "9" * 32)]
    assert "ties go to the earlier step at which the best was reached, then to the earlier trial" in note
    assert "best val/loss over its history (min), not its last value" in note


def test_the_outcome_line_of_a_stopped_a_failed_and_a_running_sweep() -> None:
    trials = grid_trials(["optimizer.lr=0.3,0.7"])
    one = [scored(trials[0], [(5, 0.25)], "a" * 32)]
    assert sweep_outcome(outcome_of(one, trials, ["optimizer.lr=0.3,0.7"]), "KILLED") == (
        f"KILLED after 1 of 2 trials: best val/loss 0.25 (trial lr=0.3, run {'a' * 32}) so far"
    )
    assert sweep_outcome(outcome_of(one, trials, ["optimizer.lr=0.3,0.7"]), "RUNNING").startswith(
        "RUNNING: 1 of 2 trials done, best val/loss 0.25"
    )
    failed = [TrialResult(t, "FAILED", None, None, "nan at step 2") for t in trials]
    assert sweep_outcome(outcome_of(failed, trials, ["optimizer.lr=0.3,0.7"]), "FAILED") == (
        "FAILED: none of 2 trials finished; first error: nan at step 2"
    )


def test_the_space_is_described_as_values_or_distributions() -> None:
    axes = space_axes(
        ["optimizer.lr=0.01,0.1", "optimizer.betas=[0.9, 0.99],[0.8, 0.9]"],
        ["optimizer.lr=loguniform:1e-4:1e-1", "train.batch_size=choice:32,64", "train.epochs=int:2:5"],
    )
    assert [(a.path, a.describe()) for a in axes] == [
        ("optimizer.lr", "[0.01, 0.1]"),
        ("optimizer.betas", "[[0.9, 0.99], [0.8, 0.9]]"),
        ("optimizer.lr", "loguniform(1e-4, 1e-1)"),
        ("train.batch_size", "choice(32, 64)"),
        ("train.epochs", "int(2, 5)"),
    ]
    assert [a.logarithmic for a in axes] == [False, False, True, False, False]


def test_the_parent_params_name_the_space_the_ranking_and_the_base_spec_and_none_is_none() -> None:
    spec = load_spec(ROUND_TABLE, ["train.epochs=5"])
    grid = parent_params(
        spec,
        space_axes(["optimizer.lr=0.01,0.1"], []),
        sampler="grid",
        metric="val/loss",
        goal="min",
        trials=2,
        seed=None,
        overrides=["train.epochs=5"],
    )
    assert grid == {
        "sweep.space.optimizer.lr": "[0.01, 0.1]",
        "sweep.sampler": "grid",
        "sweep.trials": "2",
        "sweep.metric": "val/loss",
        "sweep.goal": "min",
        "sweep.base_spec.name": "round_table",
        "sweep.base_spec.digest": spec.digest(),
        "sweep.base_spec.overrides": "train.epochs=5",
    }
    drawn = parent_params(
        spec,
        space_axes([], ["optimizer.lr=loguniform:1e-4:1e-1"]),
        sampler="random",
        metric="val/accuracy",
        goal="max",
        trials=8,
        seed=7,
    )
    assert drawn["sweep.space.optimizer.lr"] == "loguniform(1e-4, 1e-1)" and drawn["sweep.seed"] == "7"
    assert "sweep.base_spec.overrides" not in drawn
    assert all(value and value != "None" for value in [*grid.values(), *drawn.values()])
    assert best_metric_name("val/loss") == "sweep/best_val_loss"


def test_the_plot_has_a_panel_per_swept_path_log_where_values_span_decades_and_the_best_starred() -> None:
    grid = ["optimizer.lr=0.0001,0.01,0.1", "train.batch_size=full,64", "data.noise=0.1,0.2"]
    trials = grid_trials(grid)
    results = [scored(t, [(1, 0.1 + i / 100)], f"{i:032d}") for i, t in enumerate(trials)]
    figure = sweep_figure(outcome_of(results, trials, grid))
    assert figure is not None
    lr, batch, noise = figure.axes
    assert (lr.get_xscale(), batch.get_xscale(), noise.get_xscale()) == ("log", "linear", "linear")
    assert [tick.get_text() for tick in batch.get_xticklabels()] == ["full", "64"]  # categories, in order
    assert [a.get_title() for a in figure.axes] == ["optimizer.lr", "train.batch_size", "data.noise"]
    best = [t.get_text() for t in lr.get_legend().get_texts()]
    assert best == ["trial", "best: lr=0.0001 batch_size=full noise=0.1 (0.1)"]
    drawn = [Trial((f"optimizer.lr={lr!r}",)) for lr in (0.0123, 0.0301, 0.0457)]  # loguniform: log, however narrow
    random_results = [scored(t, [(1, 0.2 + i / 10)], f"r{i}") for i, t in enumerate(drawn)]
    narrow = SweepResult(
        "p", "u", "val/loss", "min", random_results, drawn, space_axes([], ["optimizer.lr=loguniform:0.01:0.05"])
    )
    figure = sweep_figure(narrow)
    assert figure is not None and figure.axes[0].get_xscale() == "log"
    failed = [TrialResult(t, "FAILED", None, None, "nan") for t in trials]
    assert sweep_figure(outcome_of(failed, trials, grid)) is None  # nothing to plot


@pytest.mark.parametrize("goal", ["min", "max"])
def test_a_trial_of_another_sweep_order_ranks_after_the_sweeps_own_on_a_tie(goal: str) -> None:
    """A SKIPPED trial read back from MLflow is matched to its place by key, whatever its overrides' order."""
    trials = grid_trials(["optimizer.lr=0.1,0.2", "train.epochs=3"])
    order = {trial.key: place for place, trial in enumerate(trials)}
    reread = Trial(tuple(reversed(trials[0].overrides)))  # same key, overrides stored in another order
    results = [
        TrialResult(trials[1], "FINISHED", "second", 0.5, step=2),
        TrialResult(reread, "SKIPPED", "first", 0.5, step=2),
    ]
    assert [r.run_id for r in rank(results, goal, order)] == ["first", "second"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sets", "metric", "goal", "expected"),
    [
        ([], None, "auto", ("val/loss", "min")),  # the spec's train.monitor, auto
        (["data.val_fraction=0"], None, "auto", ("train/loss", "min")),  # no validation split
        ([], "val/accuracy", "auto", ("val/accuracy", "max")),  # an accuracy-like name is maximised
        ([], "val/accuracy", "min", ("val/accuracy", "min")),  # as --goal says
        (["train.monitor=val/accuracy", "train.monitor_mode=min"], None, "auto", ("val/accuracy", "min")),
        (["train.monitor_mode=max"], "val/accuracy", "auto", ("val/accuracy", "max")),
        (["train.monitor_mode=max"], "train/loss", "auto", ("train/loss", "min")),  # the spec's mode is for its own
    ],
)
def test_a_sweep_ranks_by_the_specs_monitor_unless_told_otherwise(
    sets: list[str], metric: str | None, goal: str, expected: tuple[str, str]
) -> None:
    assert ranking_of(load_spec(ROUND_TABLE, sets), metric, goal) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.0069365442590166495", "0.006937"),  # a loguniform draw, to 4 significant digits
        ("-0.333333", "-0.3333"),
        ("1.23456e-7", "1.235e-07"),
        ("1e30", "1e30"),  # nothing to cut: as written
        ("1e-3", "1e-3"),
        ("0.1", "0.1"),
        ("123456789", "123456789"),  # an integer stays whole
        ("full", "full"),
        ("[0.9, 0.99]", "[0.9, 0.99]"),
        ("nan", "nan"),
    ],
)
def test_a_trial_is_named_with_its_numbers_to_4_significant_digits(value: str, shown: str) -> None:
    trial = Trial((f"optimizer.lr={value}", "train.batch_size=64"))
    assert trial.label == f"lr={shown} batch_size=64"
    assert trial.values["optimizer.lr"] == value  # what it trains with, and its key, keep every digit
    draws = [Trial((f"optimizer.lr={lr!r}",)) for lr in (0.00012345678, 0.0493827, 0.1)]
    assert [t.label for t in draws] == ["lr=0.0001235", "lr=0.04938", "lr=0.1"]


def test_each_trial_is_told_by_its_number_in_the_sweep_and_the_end_counts_ran_skipped_and_failed() -> None:
    from rich.console import Console

    from knightctl.console.sweeps import render_sweep, render_trial

    grid = ["optimizer.lr=0.1,0.2,0.3,0.4"]
    trials = grid_trials(grid)
    outcome = outcome_of([], trials, grid)
    console = Console(record=True, width=200, color_system=None)
    for result in (
        TrialResult(trials[0], "SKIPPED", "a" * 32, 0.5, step=3),  # a rerun: the finished ones first, in order
        TrialResult(trials[2], "SKIPPED", "c" * 32, 0.4, step=3),
        TrialResult(trials[3], "FINISHED", "d" * 32, 0.3, step=3),  # then the others, as they end
        TrialResult(trials[1], "FAILED", "b" * 32, None, "the training loss became nan at step 2"),
    ):
        outcome.results.append(result)
        render_trial(console, result, outcome)
    render_sweep(console, outcome)
    lines = console.export_text().splitlines()
    assert lines[:4] == [
        "trial 1/4 skipped (already done)  lr=0.1  best val/loss 0.5",
        "trial 3/4 skipped (already done)  lr=0.3  best val/loss 0.4",
        "trial 4/4 FINISHED  lr=0.4  best val/loss 0.3",
        "trial 2/4 FAILED  lr=0.2  the training loss became nan at step 2",
    ]
    assert "4 trials: 2 ran (1 FINISHED, 1 FAILED), 2 skipped (already done)" in lines
