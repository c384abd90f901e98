"""`train(stop_rule=...)`: a rule asked after each evaluation (a sweep's pruner) ends training there, as
early stopping does: the run finishes, with a final checkpoint, and says where and why."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"


def test_a_stop_rule_ends_the_run_at_the_evaluation_it_names_with_its_reason(tmp_path: Path) -> None:
    asked: list[tuple[int, float]] = []

    def rule(step: int, metrics: Mapping[str, float]) -> str | None:
        asked.append((step, metrics["val/loss"]))
        return "enough: pruned for the test" if step == 3 else None

    result = train(
        ROUND_TABLE,
        overrides=["train.epochs=10", "train.eval_every_n_epochs=1"],
        track=False,
        skip_gradcheck=True,
        checkpoint_dir=tmp_path,
        stop_rule=rule,
    )
    assert [step for step, _ in asked] == [1, 2, 3]  # each evaluation, with its metrics, until it said stop
    assert result.steps == 3 and result.checkpoint is not None and result.checkpoint.exists()
    assert result.stopped_early == "stopped early at epoch 3 of 10 (step 3): enough: pruned for the test"
    assert result.final_metrics["val/loss"] == asked[-1][1]
