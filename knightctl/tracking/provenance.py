"""Where a run came from, as MLflow tags: the versions that made it, who ran it, the file it ran,
and the git commit of the repository that holds that file. Training and gradcheck runs alike."""

from __future__ import annotations

import getpass
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from knightctl._version import __version__
from knightctl.tracking.tags import (
    GIT_COMMIT_TAG,
    MLFLOW_VERSION_TAG,
    SOURCE_NAME_TAG,
    SOURCE_TYPE_TAG,
    USER_TAG,
    VERSION_TAG,
)

if TYPE_CHECKING:
    from knightctl.spec.model import ExperimentSpec


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
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): MLflow shows none either
        user = ""
    tags = {
        VERSION_TAG: __version__,
        "torch.version": _version_of("torch"),
        MLFLOW_VERSION_TAG: _version_of("mlflow"),
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


def spec_provenance(spec: ExperimentSpec | None, fallback: str) -> dict[str, str]:
    """`provenance_tags` for a spec: its file and the repository around it; `fallback` as the source
    and the working directory as the repository for a spec without a file, or no spec."""
    if spec is None or spec.source is None:
        return provenance_tags(fallback, Path.cwd())
    return provenance_tags(spec.source.path, Path(spec.source.path).resolve().parent)


def model_source_tags(spec: ExperimentSpec, fallback: str) -> dict[str, str]:
    """The source tags of a logged model: the spec file it was trained from, its commit and the user.
    MLflow would otherwise take them from the process (`__main__.py` for `python -m knightctl`)."""
    keep = (SOURCE_TYPE_TAG, SOURCE_NAME_TAG, GIT_COMMIT_TAG, USER_TAG)
    return {key: value for key, value in spec_provenance(spec, fallback).items() if key in keep}


def _version_of(package: str) -> str:
    """The package's version, from the module where it is imported (a training run's torch), else from
    its installed metadata: a sweep's own process records torch's version without loading torch."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""
