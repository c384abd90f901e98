"""The registered ops' names and plugins, for shell completion: cached per plugin fingerprint, so that
a TAB imports the plugins (and with them torch) only when they changed.

The fingerprint is what decides which ops there are, read without importing any plugin: knightctl's
version, the plugin settings, each plugin file's size and modification time in the plugin
directories, and the modification time of every `sys.path` folder but the launcher's (installing or
removing a distribution, and so an entry point, changes its folder's). A plugin edited inside an installed
package in place is not seen until one of those changes. The cache is a small JSON file under
`$XDG_CACHE_HOME/knightctl` (default `~/.cache/knightctl`); any trouble with it means loading
the plugins as if there were none.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import warnings
from pathlib import Path

from knightctl._version import __version__
from knightctl.plugins.system import PluginSettings

CACHE_FILE = "op-names.json"
_KEPT = 16  # fingerprints kept: a few projects and plugin sets at once


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/knightctl`, or `~/.cache/knightctl`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "knightctl"


def _stat(path: Path) -> list[int]:
    try:
        info = path.stat()
    except OSError:
        return []
    return [info.st_mtime_ns, info.st_size]


def fingerprint(settings: PluginSettings) -> str:
    """What the set of ops depends on, hashed (see the module's docstring)."""
    parts: dict[str, object] = {
        "version": __version__,
        "disabled": sorted(settings.disabled),
        "external": settings.external,
    }
    if settings.external:
        parts["dirs"] = {
            str(directory): {path.name: _stat(path) for path in sorted(directory.glob("*.py"))}
            for directory in settings.plugin_dirs()
        }
        # not sys.path[0]: the launcher's own folder (the script's, or "" under -c), no distribution's
        parts["sys.path"] = {entry: _stat(Path(entry)) for entry in sys.path[1:] if entry}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _loaded(settings: PluginSettings) -> list[tuple[str, str]]:
    """Load the plugins, keeping what they print and warn off the completion's output."""
    from knightctl.plugins.loader import load

    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        system = load(settings)
    return [(op.name, op.plugin) for op in system.registry.ops()]


def op_names(settings: PluginSettings, *, directory: Path | None = None) -> list[tuple[str, str]]:
    """(name, plugin) of every op these settings load, by name: from the cache when the plugins are
    as they were, else loaded (strict mode off: a failing plugin only lacks its ops) and cached."""
    settings = PluginSettings(settings.dirs, settings.disabled, settings.external, strict=False)
    path = (directory or cache_dir()) / CACHE_FILE
    key = fingerprint(settings)
    try:
        cached = json.loads(path.read_text())
        entries = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        entries = {}
    found = entries.get(key)
    if isinstance(found, list):
        with contextlib.suppress(TypeError, ValueError):  # a damaged entry is loaded afresh
            return [(str(name), str(plugin)) for name, plugin in found]
    names = _loaded(settings)
    entries.pop(key, None)
    entries[key] = names  # the newest last: the oldest go first
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(dict(list(entries.items())[-_KEPT:])))
        partial.replace(path)  # atomic: a TAB reading it meanwhile sees the old file or the new one
    return names
