"""Where a run came from, as MLflow tags: the versions that made it, who ran it, the file it ran,
and the git commit of the repository that holds that file. Training and gradcheck runs alike."""

from __future__ import annotations

import getpass
import platform
import subprocess
from pathlib import Path

from knightctl._version import __version__
from knightctl.tracking.tags import (
    GIT_COMMIT_TAG,
    MLFLOW_VERSION_TAG,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    USER_TAG,
    VERSION_TAG,
)


def git_commit(cwd: Path) -> tuple[str, bool] | None:
    """(commit, dirty) of the repository around `cwd`, or None outside one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit, bool(status.strip())


def provenance_tags(source: str, folder: Path) -> dict[str, str]:
    """knightctl, torch, mlflow and Python versions, the user, `source` (the spec file, or the command),
    and the commit (and whether it is dirty) of the git repository around `folder`, if any."""
    import mlflow
    import torch

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): MLflow shows none either
        user = ""
    tags = {
        VERSION_TAG: __version__,
        "torch.version": torch.__version__,
        MLFLOW_VERSION_TAG: mlflow.__version__,
        "python.version": platform.python_version(),
        SOURCE_TYPE_TAG: "LOCAL",
        SOURCE_NAME_TAG: source,
    }
    if user:
        tags[USER_TAG] = user
    repository = git_commit(folder)
    if repository is not None:
        tags[GIT_COMMIT_TAG], dirty = repository[0], repository[1]
        tags["git.dirty"] = str(dirty).lower()
    return tags
