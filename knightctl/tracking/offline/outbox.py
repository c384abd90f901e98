"""The metric writer's way to its store: straight there, or through the journal while a server is away.

A batch that an http store cannot take for want of a connection (refused, no answer in time, 5xx)
goes into the run's journal (journal.py), and so does every batch after it until the journal is
delivered: first about 2 s later, then after twice as long each time, at most 30 s apart. The
journal is always delivered before any new batch goes straight to the store, so metrics reach it
in the order they were logged. Anything else the store refuses (a deleted run, a bad value)
raises, as it did before journaling existed. The user sees one warning when journaling starts,
and one line when delivery resumes; whatever remains at the end waits for `knightctl sync`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from knightctl.tracking.offline.fallback import failure_reason, is_connection_error, is_http, shown_path
from knightctl.tracking.offline.journal import Journal, MetricTuple

FIRST_RETRY_S = 2.0  # a restarting server is often back within seconds
MAX_RETRY_S = 30.0  # a server away for long is still found within half a minute of its return


class Outbox:
    """Writes metric batches with `write`, journaling them while the http server at `tracking_uri` is away."""

    def __init__(
        self, write: Callable[[list[MetricTuple]], None], client: Any, journal: Journal, tracking_uri: str
    ) -> None:
        self.write, self.client, self.journal, self.tracking_uri = write, client, journal, tracking_uri
        self.offline = journal.exists()  # a journal this run left earlier goes first
        self.retry_at = time.monotonic() if self.offline else 0.0
        self._backoff_s = FIRST_RETRY_S
        self._warned = self._resumed = False

    def put(self, chunk: list[MetricTuple]) -> None:
        """Store `chunk`, or journal it if the server is (or just went) away."""
        lost = None
        if not self.offline:
            try:
                self.write(chunk)
                return
            except Exception as exc:
                if not (is_http(self.tracking_uri) and is_connection_error(exc)):
                    raise
                lost = exc
        self.journal.add_metrics(chunk)
        if lost is not None:
            self._lost(lost)  # after the append: the warning names a journal that exists

    def wait_s(self) -> float | None:
        """Seconds until the next delivery attempt is due, or None while online."""
        return max(0.0, self.retry_at - time.monotonic()) if self.offline else None

    def retry_if_due(self) -> None:
        if self.offline and time.monotonic() >= self.retry_at:
            self.retry()

    def retry(self) -> bool:
        """Deliver the journal now; True if the store took all of it."""
        try:
            delivered = self.journal.deliver(self.client)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._backoff_s = min(self._backoff_s * 2, MAX_RETRY_S)
            self.retry_at = time.monotonic() + self._backoff_s
            return False
        self.offline, self._backoff_s = False, FIRST_RETRY_S
        if self._warned and not self._resumed:
            self._resumed = True
            _say(
                f"note: the MLflow tracking server {self.tracking_uri} is back; {delivered.metrics:,} journaled "
                "metrics delivered"
            )
        return True

    def close(self) -> int:
        """One last delivery attempt; the number of metrics left in the journal."""
        if self.offline and not self.retry():
            return self.journal.pending().metrics
        return 0

    def _lost(self, exc: BaseException) -> None:
        self.offline, self.retry_at = True, time.monotonic() + self._backoff_s
        if not self._warned:  # one warning per run, however long or often the server is away
            self._warned = True
            _say(
                f"warning: the MLflow tracking server {self.tracking_uri} is unreachable ({failure_reason(exc)}); "
                f"training goes on and its metrics wait in {shown_path(self.journal.path)}, delivered when the "
                "server is back (or later by `knightctl sync`)"
            )


def _say(line: str) -> None:
    """One plain line on stderr (the trainer's own terminal): no markup, no escape codes."""
    print(line, file=sys.stderr, flush=True)
