"""Real processes the tests start: `knightctl` commands, an `mlflow server`, and waiting on them.

One implementation of each, so that every test runs `python -m knightctl` (this checkout's
interpreter) and starts MLflow's server the same way; what differs between call sites (working
folder, environment, timeout, where the output goes) is a parameter.

Environments are given as changes to this process's: a name mapped to a string is set, a name
mapped to None is removed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import pytest
from ports import free_port

Env = Mapping[str, "str | None"]


def environment(changes: Env | None = None) -> dict[str, str]:
    """This process's environment with `changes`: a value of None removes the name."""
    env = dict(os.environ)
    for name, value in (changes or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def knightctl_command(*args: str) -> list[str]:
    """argv that runs this checkout's knightctl in this interpreter."""
    return [sys.executable, "-m", "knightctl", *args]


def run_knightctl(
    *args: str, cwd: Path | None = None, env: Env | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`knightctl ARGS` to the end, stdout and stderr captured as text. `cwd` None: this process's
    working folder (each test's own, see conftest.py)."""
    return subprocess.run(
        knightctl_command(*args), cwd=cwd, env=environment(env), capture_output=True, text=True, timeout=timeout
    )


def start_knightctl(
    *args: str,
    cwd: Path | None = None,
    env: Env | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    **popen: Any,
) -> subprocess.Popen[str]:
    """`knightctl ARGS` started and left running; output to pipes unless `stdout`/`stderr` say otherwise."""
    return subprocess.Popen(
        knightctl_command(*args), cwd=cwd, env=environment(env), stdout=stdout, stderr=stderr, text=True, **popen
    )


def wait_until(
    condition: Callable[[], object],
    timeout_s: float,
    *,
    what: str = "the awaited condition",
    process: subprocess.Popen[Any] | None = None,
    explain: Callable[[], str] | None = None,
    interval_s: float = 0.05,
) -> None:
    """Return as soon as `condition()` is true; fail the test if `process` exits first, or after
    `timeout_s` seconds. A handshake: the other side creates a file or starts answering, and this
    polls for it with a deadline. The failure names `what` and adds `explain()` (by default the
    output of `process`, once it has exited and its output went to pipes)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before {what}:\n{(explain or output_of(process))()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s} s:\n{(explain or output_of(process))()}")
        time.sleep(interval_s)


def output_of(process: subprocess.Popen[Any] | None) -> Callable[[], str]:
    """What `process` wrote to its pipes, once it has exited; nothing to say of a running one."""

    def output() -> str:
        if process is None or process.poll() is None or process.stdout is None and process.stderr is None:
            return ""
        return "\n".join(part or "" for part in process.communicate(timeout=30))

    return output


def answers(url: str, timeout_s: float = 2) -> bool:
    """Whether a GET of `url` is answered with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return answer.status == 200
    except OSError:  # not listening yet (or any more)
        return False


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite backend and proxied artifacts in `folder`, on one
    port and one database, so that a test can kill it and start it again where it was.

    `env` changes the server's environment; its output goes to folder/server.log (a file, not a
    pipe: nobody reads its request log as it runs, and a full pipe would stall the server)."""

    def __init__(self, folder: Path, env: Env | None = None) -> None:
        self.folder, self.port, self.env = folder, free_port(), env
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self, wait: bool = True) -> None:
        """Start the server; with `wait`, return once it answers."""
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.folder}/server.db",
            "--artifacts-destination",
            str(self.folder / "artifacts"),
            "--workers",
            "1",
        ]
        with open(self.folder / "server.log", "a") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.folder,
                env=environment(self.env),
                stdout=log,
                stderr=log,
                text=True,
                start_new_session=True,  # its own group: the server and its workers
            )
        if wait:
            self.wait_until_up()

    def wait_until_up(self, timeout_s: float = 120) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mlflow server did not start: {self.log()[-3000:]}")
            time.sleep(0.2)

    def answers(self) -> bool:
        return answers(f"{self.uri}/health")

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text() if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server and its workers: gone at once, as in a crash."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=20)

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM the server and its workers; SIGKILL them if they are still there after `grace_s`."""
        if self.process is not None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)

    def _signal_group(self, number: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, number)  # its own session: the group is the server and its workers
        except ProcessLookupError:
            pass
