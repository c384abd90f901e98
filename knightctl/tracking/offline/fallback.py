"""When a run's tracking server goes away: tell a lost server from a refusal, and journal the run's last calls.

MLflow retries a server that does not answer for minutes (7 retries with backoff, 120 s timeouts).
knightctl's own retry is the journal (journal.py): the metric writer sets FAIL_FAST_ENV in its
process, and the training process asks the server, with a 5 s probe (stores.check_server), before
a call once the metric writer has closed (the loop is over), whenever the writer has journaled
metrics, at most every _RECHECK_S otherwise, and after any call that fails. Once the server is
found gone, the run's tags, artifact files and terminal status go into the journal; the model is
skipped (a packed model cannot be journaled cheaply, and best.pt and the final checkpoint hold its weights).
`pending_sync` then says in one sentence what waits where.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from knightctl.errors import TrackingError, first_line
from knightctl.tracking.offline.journal import Counts, Journal
from knightctl.tracking.stores import check_server

# Fail in milliseconds on a refused connection and within 10 s on a silent server; a healthy
# server takes a 1000-metric batch in well under a second.
FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_RETRYABLE_STATUS = 429  # rate limited; any 5xx is retryable too
_RECHECK_S = 30.0  # a run's last calls come within seconds of each other: one probe covers them all


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the server is away (no connection, no answer in time, 5xx, 429), not a refusal.

    Told by the exception types that MLflow, requests and the standard library document, never by
    module names or message text. MLflow raises `MlflowException` for every failed request: with
    the server's error code when it answered (`get_http_status_code()`), and around the `requests`
    error when it did not, without `from` but for timeouts, so the chain is walked through
    `__context__` too. A refusal (a deleted run, a bad value) is a 4xx; a bad URL, a certificate
    the client does not trust and a local file error are not about the server being there either.
    """
    from mlflow.exceptions import InvalidUrlException, MlflowException

    chain = _chain(exc)
    if any(isinstance(error, (InvalidUrlException, ssl.SSLCertVerificationError)) for error in chain):
        return False
    for error in chain:
        if _is_network(error):
            return True
        if isinstance(error, MlflowException):
            status = error.get_http_status_code()
            if status >= 500 or status == _RETRYABLE_STATUS:
                return True
    return False


def failure_reason(exc: BaseException) -> str:
    """A few words on why a call failed, for a one-line message."""
    import requests

    chain = _chain(exc)
    if any(isinstance(error, ConnectionRefusedError) for error in chain):
        return "connection refused"
    if any(isinstance(error, (TimeoutError, requests.exceptions.Timeout)) for error in chain):
        return f"no answer within {FAIL_FAST_ENV['MLFLOW_HTTP_REQUEST_TIMEOUT']} s"
    if any(isinstance(error, socket.gaierror) for error in chain):
        return "its host name does not resolve"
    if any(isinstance(error, requests.exceptions.RetryError) for error in chain):
        return "it answered with an error status (429 or 5xx)"  # urllib3's retries ran out on it
    if any(_is_network(error) for error in chain):
        return "the connection was lost"
    first = first_line(exc) or type(exc).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def _is_network(error: BaseException) -> bool:
    """A failure of the connection itself, as `requests` or the standard library raise it: refused,
    reset, timed out, an unknown host, a response cut short, or retries spent on 429 and 5xx answers."""
    import requests

    return isinstance(
        error,
        (
            ConnectionError,  # the standard library's: refused, reset, aborted, a broken pipe
            TimeoutError,
            socket.gaierror,
            http.client.HTTPException,  # a response cut short, a status line that is not one
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.RetryError,
        ),
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and its causes (or, without `from`, the exceptions it was raised while handling)."""
    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


@contextmanager
def fail_fast_http() -> Iterator[None]:
    """Apply FAIL_FAST_ENV for the calls inside the block only (MLflow reads it at each call)."""
    saved = {name: os.environ.get(name) for name in FAIL_FAST_ENV}
    os.environ.update(FAIL_FAST_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def server_answers(uri: str) -> bool:
    try:
        check_server(uri)
    except TrackingError:
        return False
    return True


def shown_path(path: Path) -> str:
    """`path` relative to the working directory when it is inside it (shorter in a message)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class StoreFallback:
    """Makes a run's calls on its store until the server is found gone, then journals them instead."""

    def __init__(self, client: Any, tracking_uri: str, journal: Journal, loop_over: Callable[[], bool]) -> None:
        self.client, self.tracking_uri, self.journal = client, tracking_uri, journal
        self._loop_over = loop_over  # whether the metric writer has closed: the end-of-run calls begin
        self.gone = False
        self.skipped: list[str] = []  # what could not be journaled, e.g. "the model"
        self._checked_at: float | None = None  # time.monotonic() of the last probe
        self._checked_after_loop = False

    def call(self, action: Callable[[], Any], journal_it: Callable[[Journal], None]) -> None:
        """Do `action` on the store, or `journal_it` once the server is gone; other failures raise."""
        if not self.check():
            try:
                action()
                return
            except Exception:
                if not is_http(self.tracking_uri) or server_answers(self.tracking_uri):
                    raise
                self.gone = True
        journal_it(self.journal)

    def check(self) -> bool:
        """Whether the server is gone: asked first after the loop, then at most every _RECHECK_S,
        and whenever the writer has journaled metrics (the error path, before the writer closes).

        Metrics the writer journaled are delivered first, or everything waits behind them. Once
        gone, gone for the rest of the run, so that the journal keeps the run's order.
        """
        now = time.monotonic()
        if self.gone or not is_http(self.tracking_uri):
            return self.gone
        first_after_loop = self._loop_over() and not self._checked_after_loop
        recent = self._checked_at is not None and now - self._checked_at < _RECHECK_S
        if recent and not first_after_loop and not self.journal.exists():  # a journal: the writer lost the server
            return False
        self._checked_at, self._checked_after_loop = now, self._loop_over()
        if not server_answers(self.tracking_uri):
            self.gone = True
        elif self.journal.exists():  # the writer's last metrics: delivered now, or everything waits behind them
            try:
                with fail_fast_http():
                    self.journal.deliver(self.client)
            except Exception:
                self.gone = True
        return self.gone

    def end_run(self, status: str) -> None:
        """End the fluent run with `status`, or journal the status and end it here only."""
        import mlflow

        self.call(lambda: mlflow.end_run(status=status), lambda journal: journal.add_status(status))
        if self.gone:
            with fail_fast_http():
                try:
                    mlflow.end_run(status=status)  # pops the run first, then fails fast to reach the server
                except Exception:
                    pass  # the status waits in the journal

    def note(self) -> str:
        """A line for the description of a run that ends while its tracking server is away, else ""."""
        if not self.check():
            return ""
        model = "; the model was not logged (the final checkpoint holds its weights)" if self.skipped else ""
        return (
            "\n_The tracking server was away when this run ended: its last records were delivered later by "
            f"`knightctl sync`{model}._\n"
        )

    def pending_sync(self) -> str | None:
        """One sentence on what waits in the journal and how it gets delivered, or None if nothing does."""
        counts = self.journal.pending() if self.journal.exists() else Counts()
        if not counts and not self.skipped:
            return None
        sentence = ""
        if counts:
            parts = [
                f"{n:,} {noun}{'s' * (n != 1)}"
                for n, noun in ((counts.metrics, "metric"), (counts.artifacts, "artifact"), (counts.tags, "tag"))
                if n
            ]
            parts += ["the run's status"] if counts.status else []
            listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
            verb = "is" if len(parts) == 1 and (parts[0] == "the run's status" or parts[0].startswith("1 ")) else "are"
            sentence = (
                f"{listed} {verb} waiting in {shown_path(self.journal.path)}; "
                f"run `knightctl sync` once {self.tracking_uri} is back"
            )
        if self.skipped:
            sentence += (
                "; " if sentence else ""
            ) + f"{' and '.join(self.skipped)} could not be logged (the final checkpoint holds the weights)"
        return sentence
