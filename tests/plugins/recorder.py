"""Test plugin: records every event hook it receives as a JSON line in $KNIGHTCTL_TEST_EVENTS."""

import json
import os

from knightctl import hookimpl


def _record(event, **values):
    with open(os.environ["KNIGHTCTL_TEST_EVENTS"], "a") as out:
        out.write(json.dumps({"event": event, **values}) + "\n")


@hookimpl
def train_started(info):
    _record("train_started", seed=info.seed, epochs=info.epochs)


@hookimpl
def epoch_completed(epoch, metrics):  # takes fewer arguments than the hook offers, which is allowed
    _record("epoch_completed", epoch=epoch, evaluated=metrics is not None)


@hookimpl
def train_finished(result):
    _record("train_finished", steps=result.steps)


@hookimpl
def gradcheck_completed(reports):
    _record("gradcheck_completed", ops=[report.name for report in reports])
