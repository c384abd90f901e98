"""What a run records about its plugins: which ones provided its components, and which ops it used."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knightctl.plugins.system import PluginSystem
    from knightctl.spec.model import ExperimentSpec


def components_used(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """(kind, name) of every registered component the spec uses, in spec order."""
    used = [("dataset", spec.data.name), *(("layer", layer.type) for layer in spec.model), ("loss", spec.loss.name)]
    used.append(("optimizer", spec.optimizer.name))
    if spec.optimizer.scheduler is not None:
        used.append(("scheduler", spec.optimizer.scheduler.name))
    return used


def plugin_tags(spec: ExperimentSpec, system: PluginSystem) -> dict[str, str]:
    """Tags: `plugins` (name==version or name@sha256 of each plugin used), `ops`, `plugin.<name>`."""
    registry = system.registry
    ops = sorted({name for kind, name in components_used(spec) if kind == "layer" and registry.get("op", name)})
    providers: list[str] = []
    for kind, name in components_used(spec):
        definition = registry.get(kind, name)
        if definition is not None and definition.plugin not in providers:
            providers.append(definition.plugin)
    infos = [info for info in (system.info(name) for name in providers) if info is not None]
    tags = {"plugins": ", ".join(info.identity for info in infos), "ops": ", ".join(ops) or "none"}
    for info in infos:
        if info.source != "default":
            tags[f"plugin.{info.name}"] = f"{info.identity} from {info.origin}"
    return tags
