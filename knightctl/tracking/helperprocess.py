"""A helper Python process that talks to its parent over its standard streams.

multiprocessing's spawn start method re-imports the parent's `__main__` in the child, so a script
that calls `knightctl.train()` without an `if __name__ == "__main__":` guard runs its body again
there (and the child dies for starting a process while bootstrapping), and a script read from
standard input cannot be re-imported at all (`FileNotFoundError: '<stdin>'`). A plain subprocess
started with `python -c` imports nothing of the parent's: it works the same from a script, a
`-c` command, standard input or a Jupyter kernel.

Messages are pickled objects: parent to child on the child's standard input, child to parent on
its standard output (which the child moves off fd 1 first, so that a library that prints cannot
corrupt the channel). A feeder thread writes the parent's messages, so `put` never blocks on a
busy child; a reader thread on each side turns the other's stream into a `queue.Queue`. The end of
the stream is the end of the conversation: the child reads None when its parent closes the
channel or dies.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import IO, Any

# The child imports this very copy of knightctl (the folder holding the package), whatever the
# parent did to sys.path to find it; the parent's other sys.path entries follow in the first message.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # knightctl/tracking/helperprocess.py
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from knightctl.tracking.helperprocess import child_main; child_main()"
)
_CLOSE = object()  # tells the feeder thread to close the child's standard input
_THREAD_JOIN_S = 5.0  # a thread stuck on a dead pipe is a daemon: it is left behind, never waited on forever


class HelperProcess:
    """The parent's side: starts `target` ("module:function") in a child, which is called as
    `function(inbox, outbox, *args)`; `put` sends to its inbox, `get` reads what it sends back."""

    def __init__(self, target: str, args: tuple[Any, ...], *, name: str) -> None:
        if not sys.executable:
            raise RuntimeError("cannot start a helper process: this Python has no sys.executable")
        self.name = name
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._received: queue.Queue[Any] = queue.Queue()
        self._outgoing: queue.Queue[Any] = queue.Queue()
        self.broken = False  # the child stopped reading (it exited): later messages are dropped
        assert self._process.stdin is not None and self._process.stdout is not None
        self._feeder = threading.Thread(
            target=self._feed, args=(self._process.stdin,), name=f"{name}-feeder", daemon=True
        )
        self._reader = threading.Thread(
            target=_read_into, args=(self._process.stdout, self._received), name=f"{name}-reader", daemon=True
        )
        self._feeder.start()
        self._reader.start()
        self.put({"sys_path": list(sys.path), "target": target, "args": args})

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def exitcode(self) -> int | None:
        return self._process.poll()

    def is_alive(self) -> bool:
        return self._process.poll() is None

    def put(self, message: Any) -> None:
        """Queue `message` for the child; never blocks."""
        self._outgoing.put(message)

    def get(self, timeout: float) -> Any:
        """The child's next message; queue.Empty after `timeout` seconds, or None once it closed its end."""
        return self._received.get(timeout=timeout)

    def join(self, timeout: float) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        """SIGKILL: the metric writer ignores SIGTERM and SIGINT (a Ctrl-C to the process group must
        leave it to finish the run's metrics), so only this stops it; called when nothing is left in it."""
        if self.is_alive():
            self._process.kill()

    def close(self) -> None:
        """Deliver what is queued, close the child's input, and let the threads go; idempotent."""
        self._outgoing.put(_CLOSE)
        self._feeder.join(_THREAD_JOIN_S)
        self._reader.join(_THREAD_JOIN_S if not self.is_alive() else 0.0)
        if not self.is_alive() and self._process.stdout is not None:
            self._process.stdout.close()

    def _feed(self, pipe: IO[bytes]) -> None:
        while True:
            message = self._outgoing.get()
            if message is _CLOSE:
                break
            if self.broken:
                continue
            try:
                pipe.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
                pipe.flush()
            except (BrokenPipeError, OSError, ValueError):  # the child exited; its exit code tells why
                self.broken = True
        try:
            pipe.close()
        except (BrokenPipeError, OSError):
            pass


class _Outbox:
    """The child's side of the channel back: `put` writes one message at once."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._lock = threading.Lock()

    def put(self, message: Any) -> None:
        with self._lock:
            try:
                self._pipe.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
                self._pipe.flush()
            except (BrokenPipeError, OSError):  # the parent is gone: nobody is left to tell
                pass


def _read_into(pipe: IO[bytes], into: queue.Queue[Any]) -> None:
    """Unpickle messages from `pipe` into `into` until the stream ends, then put None."""
    try:
        while True:
            into.put(pickle.load(pipe))
    except (EOFError, OSError, pickle.UnpicklingError, ValueError):
        pass
    into.put(None)


def child_main() -> None:
    """The child's entry point (from the `python -c` bootstrap): read the first message, set
    sys.path as the parent had it, and call the target with its inbox and outbox."""
    channel_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints from libraries go to stderr, not the channel
    inbox: queue.Queue[Any] = queue.Queue()
    first = pickle.load(sys.stdin.buffer)
    sys.path[:] = [*sys.path[:1], *(entry for entry in first["sys_path"] if entry not in sys.path[:1])]
    threading.Thread(target=_read_into, args=(sys.stdin.buffer, inbox), name="inbox", daemon=True).start()
    module, _, function = first["target"].partition(":")
    target: Callable[..., None] = getattr(import_module(module), function)
    target(inbox, _Outbox(channel_out), *first["args"])
