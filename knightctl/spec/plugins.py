"""The plugin files a spec lists under `plugins:`: finding them, and reporting any that did not load.

Paths are relative to the spec's folder. The spec needs every file it lists, so a missing file,
one that failed to load or one switched off is a problem with the spec, reported at its entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knightctl.plugins.system import PluginSystem
from knightctl.spec.problems import Problem


def spec_plugin_files(raw: dict[str, Any], base_dir: Path) -> tuple[list[tuple[int, Path]], list[Problem]]:
    """The spec's `plugins:` entries that name existing files; a problem for each that does not."""
    entries = raw.get("plugins")
    files: list[tuple[int, Path]] = []
    problems: list[Problem] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, str) and entry:
            path = (base_dir / entry).resolve()
            if path.is_file():
                files.append((index, path))
            else:
                problems.append(Problem(("plugins", index), f"no plugin file {entry!r} (looked for {path})"))
    return files, problems


def spec_plugin_problems(files: list[tuple[int, Path]], system: PluginSystem) -> list[Problem]:
    """The spec needs every file it lists, so one that failed or is disabled is a problem here."""
    problems = []
    for index, path in files:
        info = system.info_for_file(path)
        if info is not None and info.status == "failed":
            problems.append(Problem(("plugins", index), f"plugin {info.name!r} failed to load: {info.error}"))
        elif info is not None and info.status == "disabled":
            problems.append(
                Problem(
                    ("plugins", index), f"plugin {info.name!r} is disabled (--disable-plugin, --no-external-plugins)"
                )
            )
    return problems
