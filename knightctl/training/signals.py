"""SIGINT and SIGTERM during the training loop: finish the step, then stop cleanly; twice, stop at once.

While `StopOnSignal` is active, the first SIGINT (Ctrl-C) or SIGTERM only records that a stop was
asked for; the loop reads `requested` before each step (one attribute read, a few tens of
nanoseconds), writes a checkpoint and raises. A second signal raises KeyboardInterrupt (or
`Terminated` for SIGTERM) wherever the program is, for a user who will not wait for a slow step.
The previous handlers come back when the block ends. Outside the main thread, where Python
cannot install handlers, signals keep their usual effect.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from knightctl.errors import Terminated

_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class StopOnSignal:
    """A context manager; `requested` is None, or the name of the first signal that arrived."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def request(self, name: str) -> None:
        """Ask the loop to stop after the current step, as a signal would (used by --verify-resume)."""
        self.requested = name

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for number in _NAMES:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.requested is None:
            self.requested = _NAMES.get(signal.Signals(number), str(number))
            return
        raise Terminated() if number == signal.SIGTERM else KeyboardInterrupt()
