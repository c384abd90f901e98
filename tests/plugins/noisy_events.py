"""Test plugin: raises in an event hook after the second epoch (docs/faults.md row 15)."""

from knightctl import hookimpl


@hookimpl
def epoch_completed(epoch):
    if epoch == 2:
        raise RuntimeError("the chronicler dropped his quill")
