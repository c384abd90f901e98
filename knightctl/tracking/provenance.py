"""Where a run came from, as MLflow tags: the versions that made it, who ran it, the file it ran,
and the git commit, branch and remote of the repository that holds that file; over MLflow's own
context tags for a new run. Training, sweep, evaluation and gradcheck runs alike."""

from __future__ import annotations

import getpass
import platform
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

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

_GIT_TIMEOUT_S = 5  # a local git command takes milliseconds; 5 s covers a cold network file system


@dataclass(frozen=True)
class GitState:
    """The repository around a folder: its commit, whether its work tree differs from it, the
    branch checked out (None when detached) and the URL of its remote (origin first; None if none)."""

    commit: str
    dirty: bool
    branch: str | None
    remote: str | None


def git_state(cwd: Path) -> GitState | None:
    """The state of the repository around `cwd`, or None outside one (or in one without a commit)."""
    try:
        # One command for the commit, the branch and the changes (untracked files count).
        status = _git(cwd, "status", "--porcelain=v2", "--branch")
    except (OSError, subprocess.SubprocessError):
        return None
    headers = dict(line[2:].split(" ", 1) for line in status.splitlines() if line.startswith("# ") and " " in line[2:])
    commit, branch = headers.get("branch.oid", ""), headers.get("branch.head")
    if not commit or commit == "(initial)":
        return None
    dirty = any(line and not line.startswith("#") for line in status.splitlines())
    return GitState(commit, dirty, None if branch == "(detached)" else branch, _remote(cwd))


def git_commit(cwd: Path) -> tuple[str, bool] | None:
    """(commit, dirty) of the repository around `cwd`, or None outside one."""
    state = git_state(cwd)
    return None if state is None else (state.commit, state.dirty)


def provenance_tags(source: str, folder: Path) -> dict[str, str]:
    """knightctl, torch, mlflow and Python versions, the user, `source` (the spec file, or the command),
    and the commit (and whether it is dirty), branch and remote of the git repository around `folder`."""
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_BRANCH, MLFLOW_GIT_REPO_URL

    tags = {
        VERSION_TAG: __version__,
        "torch.version": _version_of("torch"),
        MLFLOW_VERSION_TAG: _version_of("mlflow"),
        "python.version": platform.python_version(),
        SOURCE_TYPE_TAG: "LOCAL",
        SOURCE_NAME_TAG: source,
    }
    user = _user()
    if user:
        tags[USER_TAG] = user
    repository = git_state(folder)
    if repository is not None:
        tags[GIT_COMMIT_TAG] = repository.commit
        tags["git.dirty"] = str(repository.dirty).lower()
        if repository.branch:
            tags[MLFLOW_GIT_BRANCH] = repository.branch
        if repository.remote:
            tags[MLFLOW_GIT_REPO_URL] = repository.remote
    return tags


def run_context_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The tags of a new run: MLflow's own context tags, as `mlflow.start_run` resolves them (the user,
    the source, a Databricks job's or notebook's, those of any installed `mlflow.run_context_provider`
    plugin), with `tags` (knightctl's provenance and the run's own) over them.

    knightctl's source (the spec file, paired with its type) and git tags win: MLflow takes both
    from `sys.argv[0]`, the knightctl script, which says nothing of the spec or its repository, so
    MLflow's git context is left out. MLflow's user wins: it is the tracking server's user name
    where credentials give one.
    """
    from mlflow.tracking.context.default_context import DefaultRunContext
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import resolve_tags

    ours = dict(tags)
    user = ours.pop(USER_TAG, None)
    ignore = [GitRunContext]
    if not _user():  # MLflow asks getpass too, fails the same way, and would log a warning on every run
        ignore.append(DefaultRunContext)
    resolved = resolve_tags(ours, ignore=ignore)
    if user:
        resolved.setdefault(USER_TAG, user)
    return resolved


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


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=True
    ).stdout


def _remote(cwd: Path) -> str | None:
    """The URL of the repository's `origin` remote, else of its first; a user name or token in an
    http(s) URL is left out (a tag is readable by everyone who can read the run)."""
    try:
        listed = _git(cwd, "config", "--get-regexp", r"^remote\..*\.url$")
    except (OSError, subprocess.SubprocessError):  # exit status 1: no remote
        return None
    urls = dict(line.split(" ", 1) for line in listed.splitlines() if " " in line)
    url = urls.get("remote.origin.url") or next(iter(urls.values()), None)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return url  # scp-like `git@host:path` and ssh:// name an account, never a secret
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path, parts.query, parts.fragment))


def _user() -> str:
    """The login name of this process, or "" where the system has none for its uid (a container)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _version_of(package: str) -> str:
    """The package's version, from the module where it is imported (a training run's torch), else from
    its installed metadata: a sweep's own process records torch's version without loading torch."""
    module = sys.modules.get(package)
    if module is not None and hasattr(module, "__version__"):
        return str(module.__version__)
    if built := _built_version(package):
        return built
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _built_version(package: str) -> str | None:
    """The `__version__` a package's `version.py` holds, read without importing the package: torch's
    there carries its build (`2.5.1+cu124`), which the metadata of a wheel from a registry lacks
    (`2.5.1`), so a sweep's parent names the same torch as its trials, which import it."""
    import importlib.util
    import re

    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    try:
        text = (Path(next(iter(found.submodule_search_locations))) / "version.py").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return match.group(1) if match else None
