"""A free TCP port on 127.0.0.1, for tests that start a real server (mlflow server, knightctl ui)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
