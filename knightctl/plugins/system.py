"""Plugin settings and the loaded plugin system: what was loaded, from where, and who provides what.

Plugins load in this order: knightctl's default plugins; installed distributions with an entry
point in the group "knightctl"; every `*.py` (not starting with "_") in the plugin directories
(`./plugins` of the working directory unless `--plugins-dir` or KNIGHTCTL_PLUGINS_DIR says
otherwise); then the files a spec lists under `plugins:`. `loader.load()` does the loading.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pluggy

from knightctl.errors import KnightctlError, PluginError

if TYPE_CHECKING:  # the registry (pydantic) only as a type: shell completion reads PluginSettings on every TAB
    from knightctl.plugins.events import RunInfo, RunResult
    from knightctl.plugins.registry import Registry

ENTRY_POINT_GROUP = "knightctl"
ENV_DIRS = "KNIGHTCTL_PLUGINS_DIR"  # directories, separated like PATH
ENV_DISABLE = "KNIGHTCTL_DISABLE_PLUGINS"  # plugin names, comma separated
ENV_NO_EXTERNAL = "KNIGHTCTL_NO_EXTERNAL_PLUGINS"  # 1: only the default plugins
ENV_STRICT = "KNIGHTCTL_STRICT_PLUGINS"  # 1: any plugin failure is an error

Source = Literal["default", "entry point", "directory", "spec"]
Status = Literal["loaded", "failed", "disabled"]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class PluginSettings:
    """Where to look for plugins and what to leave out. `dirs=None` means `./plugins`."""

    dirs: tuple[Path, ...] | None = None
    disabled: frozenset[str] = frozenset()
    external: bool = True
    strict: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginSettings:
        """Settings from KNIGHTCTL_PLUGINS_DIR, _DISABLE_PLUGINS, _NO_EXTERNAL_PLUGINS, _STRICT_PLUGINS."""
        env = os.environ if environ is None else environ
        dirs = tuple(Path(part) for part in env.get(ENV_DIRS, "").split(os.pathsep) if part)
        disabled = frozenset(name.strip() for name in env.get(ENV_DISABLE, "").split(",") if name.strip())
        return cls(dirs or None, disabled, not _flag(env.get(ENV_NO_EXTERNAL)), _flag(env.get(ENV_STRICT)))

    def override(
        self,
        *,
        dirs: Sequence[str | Path] = (),
        disable: Sequence[str] = (),
        no_external: bool = False,
        strict: bool = False,
    ) -> PluginSettings:
        """These settings with command-line options on top: given dirs replace, the rest add up."""
        return PluginSettings(
            tuple(Path(d) for d in dirs) or self.dirs,
            self.disabled | frozenset(disable),
            self.external and not no_external,
            self.strict or strict,
        )

    def plugin_dirs(self) -> tuple[Path, ...]:
        """The directories to scan, as absolute paths (the default depends on the working directory)."""
        return tuple(path.resolve() for path in (self.dirs if self.dirs is not None else (Path.cwd() / "plugins",)))


@dataclass(frozen=True)
class PluginInfo:
    """One plugin: where it came from, whether it loaded, and what it provides."""

    name: str
    source: Source
    origin: str  # the module, distribution or file it came from, in words
    version: str | None = None  # a distribution's version (defaults: knightctl's)
    digest: str | None = None  # SHA-256 of a local file
    path: Path | None = None  # its code on disk: a file, or a package's folder
    status: Status = "loaded"
    error: str | None = None
    hooks: tuple[str, ...] = ()
    provides: tuple[tuple[str, str], ...] = ()  # (kind, name) pairs

    @property
    def identity(self) -> str:
        """What MLflow records: `name==version`, or `name@sha256:<first 12>` for a local file."""
        if self.digest:
            return f"{self.name}@sha256:{self.digest[:12]}"
        return f"{self.name}=={self.version}" if self.version else self.name

    def describe_failure(self) -> str:
        return f"{self.name} ({self.origin}): {self.error}"


@dataclass
class PluginSystem:
    """The loaded plugins, the registry they filled, and the manager that calls their event hooks."""

    manager: pluggy.PluginManager
    registry: Registry
    settings: PluginSettings
    plugins: tuple[PluginInfo, ...]
    notes: tuple[str, ...] = field(default=())  # things worth a warning that are not failures

    @property
    def failures(self) -> list[PluginInfo]:
        return [info for info in self.plugins if info.status == "failed"]

    def info(self, name: str) -> PluginInfo | None:
        return next((info for info in self.plugins if info.name == name), None)

    def info_for_file(self, path: Path) -> PluginInfo | None:
        resolved = path.resolve()
        return next((info for info in self.plugins if info.path == resolved), None)

    def warnings(self) -> list[str]:
        """One line per failed plugin and per note, for the CLI to show before it goes on."""
        failed = [
            f"plugin {info.name!r} ({info.origin}) failed to load and was left out: {info.error}"
            for info in self.failures
        ]
        return failed + list(self.notes)

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an event hook in every plugin, in load order; an exception names its plugin."""
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except KnightctlError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} raised in hook {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc

    def blame(self, exc: BaseException) -> PluginInfo | None:
        """The non-default plugin whose code raised `exc` (the innermost such frame), if any."""
        located = [
            info
            for info in self.plugins
            if info.path is not None and info.source != "default" and info.status == "loaded"
        ]
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            where = Path(frame.filename)
            for info in located:
                assert info.path is not None
                if where == info.path or info.path in where.parents:
                    return info
        return None


class PluginEvents:
    """A run observer that passes the run's events on to the plugins' event hooks."""

    def __init__(self, system: PluginSystem) -> None:
        self.system = system

    def run_started(self, info: RunInfo) -> None:
        self.system.notify("train_started", info=info)

    def epoch_completed(self, epoch: int, step: int, metrics: Mapping[str, float] | None) -> None:
        self.system.notify("epoch_completed", epoch=epoch, step=step, metrics=metrics)

    def run_finished(self, result: RunResult) -> None:
        self.system.notify("train_finished", result=result)
