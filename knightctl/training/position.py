"""`Position`: where a run stands (epoch, batch, step), what it logged, and its last complete checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from knightctl.checkpoint.state import ResumePoint
from knightctl.plugins.events import EvaluationReport
from knightctl.training.best import ModelOfRecord
from knightctl.training.earlystop import EarlyStopping, EndedByRule


@dataclass
class Position:
    """Where the run stands, what it logged, and its last complete checkpoint."""

    epoch: int = 0  # the epoch in progress, or the last one finished when `epoch_done`
    batch: int = 0  # batches of `epoch` done
    step: int = 0
    epoch_done: bool = True
    order_state: torch.Tensor | None = None  # the data-order generator's state before `epoch`'s order was drawn
    latest: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoint: Path | None = None
    best: ModelOfRecord | None = None  # the model of record so far (training/best.py); None on ranks but 0
    best_checkpoint: Path | None = None  # best.pt, once written
    evaluation: EvaluationReport | None = None  # the model of record's task metrics, once the loop finished
    early_stopping: EarlyStopping | None = None  # train.early_stopping's count; None when it is off
    ended_by_rule: EndedByRule | None = None  # where train(stop_rule=...) ended the run, and why

    def ending(self, epochs: int) -> str | None:
        """Why the run ended before its last epoch (early stopping or a stop rule), or None."""
        if self.early_stopping is not None and (told := self.early_stopping.ending(epochs)):
            return told
        return self.ended_by_rule.ending(epochs) if self.ended_by_rule else None

    def resume_point(self, data_order: torch.Generator) -> ResumePoint:
        if self.epoch_done:
            return ResumePoint(self.epoch + 1, 0, self.step, data_order.get_state())
        assert self.order_state is not None
        return ResumePoint(self.epoch, self.batch, self.step, self.order_state)
