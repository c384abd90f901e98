"""Mark a distributed job's MLflow run FAILED with the failure that ended the job, naming the rank.

Rank 0 closes its run itself, but it only sees its own side: when another rank crashes, rank 0
reads "another rank stopped" (or is stopped by torchrun's agent before it can say anything). The
launcher knows which rank failed first and why; this writes that into the run, so that the
dashboard tells the story without the terminal.
"""

from __future__ import annotations

from datetime import datetime, timezone

from knightctl.tracking.note import amend_note
from knightctl.tracking.tags import FAILED_RANK_TAG, NOTE_TAG, OUTCOME_TAG


def mark_failed(tracking_uri: str, run_id: str, message: str, rank: int, traceback: str | None = None) -> None:
    """End the run FAILED; its description's status row and a last line say which rank failed, and why;
    that rank's traceback is stored as error/rank-N-traceback.txt."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # One line of markdown: the message's own line breaks and table bars would break the note.
    sentence = " ".join(message.split()).replace("|", "\\|")
    note = amend_note(
        run.data.tags.get(NOTE_TAG, ""),
        f"FAILED: rank {rank} failed",
        f"**The distributed job failed** ({when}): {sentence}.",
    )
    client.set_tag(run_id, NOTE_TAG, note)
    client.set_tag(run_id, OUTCOME_TAG, f"FAILED: rank {rank} failed")
    client.set_tag(run_id, FAILED_RANK_TAG, str(rank))
    if traceback:
        client.log_text(run_id, traceback, f"error/rank-{rank}-traceback.txt")
    if run.info.status != "FAILED":
        client.set_terminated(run_id, "FAILED")
