"""Test plugin: holds training at chosen epochs, so that a test can act at a known point of a run.

At each epoch listed in KNIGHTCTL_TEST_HOLD_EPOCHS (e.g. "3,6") it creates the file
at-EPOCH in the folder KNIGHTCTL_TEST_HOLD_DIR, then waits until the test creates go-EPOCH there
(at most 120 s, so that a broken test cannot hang a run forever).
"""

import os
import time
from pathlib import Path

from knightctl import hookimpl

_LONGEST_HOLD_S = 120.0


@hookimpl
def epoch_completed(epoch):
    epochs = {int(e) for e in os.environ.get("KNIGHTCTL_TEST_HOLD_EPOCHS", "").split(",") if e.strip()}
    if epoch not in epochs:
        return
    folder = Path(os.environ["KNIGHTCTL_TEST_HOLD_DIR"])
    (folder / f"at-{epoch}").touch()
    deadline = time.monotonic() + _LONGEST_HOLD_S
    while not (folder / f"go-{epoch}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
