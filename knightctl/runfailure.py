"""Mark a distributed job's MLflow run FAILED with the failure that ended the job, naming the rank.

Rank 0 closes its run itself, but it only sees its own side: when another rank crashes, rank 0
reads "another rank stopped" (or is stopped by torchrun's agent before it can say anything). The
launcher knows which rank failed first and why; this writes that into the run, so that the
dashboard tells the story without the terminal.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from knightctl.tracking import NOTE_TAG

FAILED_RANK_TAG = "knightctl.failed_rank"
_STATUS_ROW = re.compile(r"^\| status \| .* \|$", re.MULTILINE)


def mark_failed(tracking_uri: str, run_id: str, message: str, rank: int, traceback: str | None = None) -> None:
    """End the run FAILED; its description's status row and a last line say which rank failed, and why;
    that rank's traceback is stored as error/rank-N-traceback.txt."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    row = f"| status | FAILED: rank {rank} failed |".replace("\n", " ")
    note = _STATUS_ROW.sub(lambda _: row, run.data.tags.get(NOTE_TAG, ""), count=1)
    note = (note.rstrip("\n") + "\n\n" if note.strip() else "") + f"**The distributed job failed** ({when}): {_escaped(message)}.\n"
    client.set_tag(run_id, NOTE_TAG, note)
    client.set_tag(run_id, FAILED_RANK_TAG, str(rank))
    if traceback:
        client.log_text(run_id, traceback, f"error/rank-{rank}-traceback.txt")
    if run.info.status != "FAILED":
        client.set_terminated(run_id, "FAILED")


def _escaped(text: str) -> str:
    """One line of markdown: the message's own line breaks and table bars would break the note."""
    return " ".join(text.split()).replace("|", "\\|")
