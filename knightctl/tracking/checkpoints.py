"""A run's checkpoints through MLflow: the folder its `knightctl.checkpoint_dir` tag names, else the
checkpoint files stored with it as artifacts (downloaded), for `--resume RUN_ID`."""

from __future__ import annotations

from pathlib import Path

from knightctl.checkpoint.files import CheckpointFolder
from knightctl.errors import CheckpointError, ResumeError, TrackingError
from knightctl.tracking.stores import check_store
from knightctl.tracking.tags import CHECKPOINT_DIR_TAG


def run_checkpoint(uri: str, run_id: str, looked_in: Path) -> Path:
    """The newest checkpoint of MLflow run `run_id` on `uri`: in the folder it recorded, else among
    its artifacts (the final one first), downloaded into `looked_in`, the local folder already searched."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    check_store(uri)
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ResumeError(
            f"{run_id!r} is neither a checkpoint file or folder, nor a run with checkpoints in {looked_in}, nor a run "
            f"in {uri}",
            hint="give the run id `knightctl train` printed, a checkpoint path, or the store the run is in "
            "(--tracking-uri)",
        ) from None
    recorded = run.data.tags.get(CHECKPOINT_DIR_TAG)
    newest = CheckpointFolder(Path(recorded)).latest() if recorded else None
    if newest is not None:
        return newest
    stored = [
        item.path
        for item in client.list_artifacts(run_id, "checkpoints")
        if item.path.endswith(".pt") and not item.path.endswith("best.pt")  # weights only: no resuming from it
    ]
    if not stored:
        raise CheckpointError(
            f"MLflow run {run_id} has no checkpoint: none in {recorded or looked_in}, none among its artifacts"
        )
    chosen = max(stored, key=lambda name: (name.endswith("final.pt"), name))
    looked_in.mkdir(parents=True, exist_ok=True)
    try:
        return Path(client.download_artifacts(run_id, chosen, str(looked_in)))
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"cannot download {chosen} of MLflow run {run_id} from {uri}: {exc}") from None
