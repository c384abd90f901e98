"""The plugin manager: loads the default plugins and fills the component registry.

Loading is an explicit, idempotent call (`load()`), never an import side effect. Each
registration hook is called plugin by plugin so that the registry can record who registered what
and an error inside a hook names its plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial

import pluggy

from knightctl import hookspecs
from knightctl.builtin import DEFAULT_PLUGINS
from knightctl.errors import KnightctlError, PluginError
from knightctl.registry import Registry

REGISTRATION_HOOKS: tuple[str, ...] = (
    "register_layers",
    "register_losses",
    "register_optimizers",
    "register_schedulers",
    "register_datasets",
)


@dataclass
class PluginSystem:
    """The loaded plugin manager and the registry its plugins filled."""

    manager: pluggy.PluginManager
    registry: Registry


_loaded: PluginSystem | None = None


def load(*, reload: bool = False) -> PluginSystem:
    """Load every plugin once and return the result; `reload=True` starts afresh."""
    global _loaded
    if _loaded is None or reload:
        _loaded = _load_fresh()
    return _loaded


def _load_fresh() -> PluginSystem:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name.removeprefix("knightctl."))
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {exc.plugin!r}: {exc}") from None
    registry = Registry()
    registry.plugins = [name for name, _ in manager.list_name_plugin()]
    for hook_name in REGISTRATION_HOOKS:
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            try:
                impl.function(register=partial(registry.add, plugin=impl.plugin_name))
            except KnightctlError:
                raise
            except Exception as exc:  # a plugin's own bug: name it, never a bare traceback
                raise PluginError(f"plugin {impl.plugin_name!r} raised in hook {hook_name}: {type(exc).__name__}: {exc}") from exc
    return PluginSystem(manager=manager, registry=registry)
