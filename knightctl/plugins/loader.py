"""Loading plugins one at a time, in isolation: a plugin that fails is left out whole, with its reason.

`load()` is an explicit call, idempotent for the same settings and files (the loaded system is
kept per process).

A plugin fails when it cannot be imported, implements a hook that does not exist (a misspelling)
or with arguments the hook does not provide, raises inside a registration hook, or registers a
malformed definition. Its registrations are then dropped and the others load. Two plugins that
register the same name are not a failure of either but an error naming both.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy

from knightctl._version import __version__
from knightctl.errors import PluginError
from knightctl.plugins import hookspecs
from knightctl.plugins.builtin import DEFAULT_PLUGINS
from knightctl.plugins.files import PluginFileError, describe_exception, file_digest, import_plugin_file
from knightctl.plugins.registry import Registry, as_definition
from knightctl.plugins.system import ENTRY_POINT_GROUP, PluginInfo, PluginSettings, PluginSystem

REGISTRATION_HOOKS: tuple[str, ...] = (
    "register_ops",
    "register_layers",
    "register_losses",
    "register_optimizers",
    "register_schedulers",
    "register_datasets",
    "register_metrics",
)

# Every hook a plugin may implement, with the arguments each provides.
HOOKS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(function).parameters)
    for name, function in vars(hookspecs).items()
    if callable(function) and hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")
}


class _Failed(Exception):
    """This plugin is left out; the message says why."""


def load_plugins(settings: PluginSettings, files: tuple[Path, ...]) -> PluginSystem:
    """Defaults, entry points, directories, then `files`, each plugin in isolation."""
    loader = _Loader(settings)
    for module_name in DEFAULT_PLUGINS:
        module_path = Path(inspect.getfile(importlib.import_module(module_name)))
        name = module_name.removeprefix(
            "knightctl.plugins."
        )  # "builtin.layers", as it was named before the package moved
        info = PluginInfo(name, "default", module_name, __version__, path=module_path)
        loader.load(info, lambda name=module_name: importlib.import_module(name))
    if settings.external:
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = entry.dist
            origin = f"distribution {dist.name} {dist.version}" if dist else f"entry point {entry.value}"
            loader.load(PluginInfo(entry.name, "entry point", origin, dist.version if dist else None), entry.load)
        for directory in settings.plugin_dirs():
            if directory.is_dir():
                for path in sorted(directory.glob("*.py")):
                    if not path.name.startswith("_"):
                        loader.load_file(path, "directory")
            elif directory != (Path.cwd() / "plugins").resolve():  # only the default may be absent unremarked
                loader.notes.append(f"plugin directory {directory} does not exist")
    for path in files:
        if not settings.external:
            loader.infos.append(PluginInfo(path.stem, "spec", str(path), status="disabled", path=path))
        elif loader.known_path(path) is None:
            loader.load_file(path, "spec")
    for name in sorted(settings.disabled - {info.name for info in loader.infos}):
        loader.notes.append(f"--disable-plugin {name}: no plugin has that name")
    loader.registry.plugins = [info.name for info in loader.infos if info.status == "loaded"]
    loader.registry.failed = [info.describe_failure() for info in loader.infos if info.status == "failed"]
    return PluginSystem(loader.manager, loader.registry, settings, tuple(loader.infos), tuple(loader.notes))


class _Loader:
    def __init__(self, settings: PluginSettings) -> None:
        self.settings = settings
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.infos: list[PluginInfo] = []
        self.notes: list[str] = []

    def known_path(self, path: Path) -> PluginInfo | None:
        return next((info for info in self.infos if info.path == path.resolve()), None)

    def load_file(self, path: Path, source: str) -> None:
        resolved = path.resolve()
        if self.known_path(resolved) is not None:
            return  # the same file named twice (a spec listing ./plugins/x.py): once is enough
        try:
            digest = file_digest(resolved)
        except OSError as exc:
            self.infos.append(
                PluginInfo(
                    path.stem,
                    source,
                    str(path),
                    path=resolved,
                    status="failed",
                    error=f"cannot read it: {exc.strerror or exc}",
                )
            )  # type: ignore[arg-type]
            return
        info = PluginInfo(path.stem, source, str(path), digest=digest, path=resolved)  # type: ignore[arg-type]
        self.load(info, lambda: import_plugin_file(resolved))

    def load(self, info: PluginInfo, obtain: Callable[[], Any]) -> None:
        """Import, check and register one plugin; on any problem record it as failed, unregistered."""
        if info.name in self.settings.disabled:
            self.infos.append(replace(info, status="disabled"))
            return
        try:
            loaded = self._load(info, obtain)
        except _Failed as failure:
            loaded = replace(info, status="failed", error=str(failure))
        self.infos.append(loaded)

    def _load(self, info: PluginInfo, obtain: Callable[[], Any]) -> PluginInfo:
        clash = next((other for other in self.infos if other.name == info.name and other.status == "loaded"), None)
        if clash is not None:
            raise _Failed(f"a plugin named {info.name!r} is already loaded from {clash.origin}; rename one of them")
        try:
            plugin = obtain()
        except PluginFileError as exc:
            raise _Failed(f"import failed: {exc}") from None
        except Exception as exc:
            raise _Failed(f"import failed: {describe_exception(exc, None)}") from None
        if info.path is None:
            info = replace(info, path=_code_location(plugin))
        hooks = self._check_hooks(plugin)
        self.manager.register(plugin, name=info.name)
        try:
            definitions = [
                as_definition(value, plugin=info.name) for value in self._registrations(info.name, info.path)
            ]
            for definition in definitions:
                self.registry.check(definition, plugin=info.name)
        except (_Failed, PluginError) as exc:
            self.manager.unregister(name=info.name)
            raise _Failed(str(exc)) from None
        for definition in definitions:
            self.registry.add(definition, plugin=info.name)  # a duplicate is fatal: it names both plugins
        return replace(info, hooks=hooks, provides=tuple((d.kind, d.name) for d in definitions))

    def _check_hooks(self, plugin: Any) -> tuple[str, ...]:
        """The hooks `plugin` implements; a misspelled hook or a wrong argument fails it."""
        found = []
        for attribute in dir(plugin):
            if self.manager.parse_hookimpl_opts(plugin, attribute) is None:
                continue
            provided = HOOKS.get(attribute)
            if provided is None:
                close = difflib.get_close_matches(attribute, HOOKS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise _Failed(f"@hookimpl {attribute!r} is not a knightctl hook{hint}")
            wanted = [
                name
                for name, parameter in inspect.signature(getattr(plugin, attribute)).parameters.items()
                if parameter.default is inspect.Parameter.empty
                and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            ]
            unknown = [name for name in wanted if name not in provided]
            if unknown:
                raise _Failed(
                    f"hook {attribute!r} asks for argument {unknown[0]!r}, which it does not get; it gets "
                    f"({', '.join(provided)})"
                )
            found.append(attribute)
        return tuple(found)

    def _registrations(self, plugin_name: str, where: Path | None) -> list[Any]:
        """Call this plugin's registration hooks and collect what it registers."""
        collected: list[Any] = []
        for hook_name in REGISTRATION_HOOKS:
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                try:
                    impl.function(*(collected.append for _ in impl.argnames))
                except Exception as exc:
                    raise _Failed(f"raised in hook {hook_name}: {describe_exception(exc, where)}") from None
        return collected


def _code_location(plugin: Any) -> Path | None:
    """A plugin's file, or its package's folder (so `blame` finds frames in any of its modules)."""
    try:
        path = Path(inspect.getfile(plugin if inspect.ismodule(plugin) else type(plugin))).resolve()
    except (TypeError, OSError):
        return None
    return path.parent if path.name == "__init__.py" else path


_systems: dict[tuple[PluginSettings, tuple[Path, ...]], PluginSystem] = {}


def load(
    settings: PluginSettings | None = None, *, files: Sequence[str | Path] = (), reload: bool = False
) -> PluginSystem:
    """Load every plugin once for these settings and extra files; `reload=True` starts afresh.

    Settings default to the environment (`PluginSettings.from_env()`). A plugin that fails is left
    out and listed in `failures`; with `strict` any failure raises PluginError. Two plugins that
    register one name raise PluginError naming both.
    """
    settings = settings if settings is not None else PluginSettings.from_env()
    settings = replace(settings, dirs=settings.plugin_dirs())
    key = (settings, tuple(Path(file).resolve() for file in files))
    if reload or key not in _systems:
        system = load_plugins(settings, key[1])
        if settings.strict and system.failures:
            failed = "".join(f"\n  - {info.describe_failure()}" for info in system.failures)
            raise PluginError(
                f"strict plugin mode: {len(system.failures)} plugin(s) failed to load:{failed}",
                hint="fix or disable the failing plugins (--disable-plugin NAME)",
            )
        _systems[key] = system
    return _systems[key]
