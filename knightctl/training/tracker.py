"""What `train` needs of the place a run is recorded: the `Tracker` protocol, and `NoTracker`, the
stand-in under --no-track and on every rank but 0 of a distributed job.

`train` calls only these methods, whatever records the run; the MLflow one is
`knightctl.tracking.record.MlflowTracker`. The tracker alone writes the run's story (its
description on the dashboard): `train` tells it what happened, never edits the story itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from knightctl.checkpoint.resume import Resumption
    from knightctl.gradcheck.report import OpReport
    from knightctl.plugins.system import PluginSystem
    from knightctl.spec.model import ExperimentSpec
    from knightctl.training.build import Components
    from knightctl.training.devices import DeviceChoice
    from knightctl.training.position import Position


class Tracker(Protocol):
    """Where a run is recorded, and what it is told along the way."""

    run_id: str | None
    experiment_id: str | None
    tracking_uri: str | None
    notices: Sequence[str]  # worth a line on screen when the run starts
    pending_sync: str | None  # what waits for `knightctl sync`, once the run has ended

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None: ...

    def close_metrics(self) -> None: ...

    def record_start(
        self,
        spec: ExperimentSpec,
        choice: DeviceChoice,
        parts: Components,
        verdicts: Sequence[OpReport],
        skip_gradcheck: bool,
        position: Position,
        resumed: Resumption | None,
        checkpoint_folder: Path,
    ) -> None:
        """Before the first step: the gradient verdicts, the data, and the run's description."""

    def loop_ended(self, steps: int, seconds: float) -> None:
        """The loop stopped (finished, failed or interrupted) after `steps` steps and `seconds` s."""

    def record_unfinished(self, position: Position) -> None:
        """The run failed or was stopped: store its last good checkpoint and its curves so far."""

    def record_results(
        self, spec: ExperimentSpec, parts: Components, position: Position, system: PluginSystem
    ) -> str | None:
        """After the last step: the final and best checkpoints, the plots, the model; its URI, if logged."""


class NoTracker:
    """Records nothing. `run_id` is rank 0's run in a distributed job: it names the checkpoint folder."""

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self.experiment_id: str | None = None
        self.tracking_uri: str | None = None
        self.notices: Sequence[str] = ()
        self.pending_sync: str | None = None

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None:
        pass

    def close_metrics(self) -> None:
        pass

    def record_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def loop_ended(self, steps: int, seconds: float) -> None:
        pass

    def record_unfinished(self, position: Position) -> None:
        pass

    def record_results(
        self, spec: ExperimentSpec, parts: Components, position: Position, system: PluginSystem
    ) -> str | None:
        return None
