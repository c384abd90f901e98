"""`knightctl ops`, `knightctl components` and `knightctl plugins` on screen: one entry per op,
component or plugin, at any width.

Each entry is a headline (name, where it came from) and an indented line of facts, which reads at
80 columns as well as at 200 and greps well; `--json` gives the same as data.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from knightctl.console.core import render_warnings

if TYPE_CHECKING:
    from knightctl.plugins.catalog import Component, Option
    from knightctl.plugins.opsupport import OpSummary
    from knightctl.plugins.system import PluginInfo, PluginSystem


def _print_json(console: Console, data: Any) -> None:
    console.print(json.dumps(data, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)


def _short_path(text: str) -> str:
    """A path under the working directory, relative to it; anything else as it is."""
    try:
        return str(Path(text).relative_to(Path.cwd()))
    except ValueError:
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def render_ops(console: Console, rows: list[OpSummary], *, as_json: bool = False) -> None:
    """Every op: plugin and origin, form, layer use, derivative order, forward mode, vmap, devices."""
    if as_json:
        _print_json(console, [asdict(row) for row in rows])
        return
    unknown = any("?" in (row.max_order, row.forward_mode, row.vmap) for row in rows)
    console.print(
        f"[bold]{_count(len(rows), 'op')}[/]"
        + (" (?: not declared by its plugin; `knightctl gradcheck` measures it)" if unknown else "")
    )
    for row in rows:
        layer = "not a layer" if row.layer == "-" else f"{row.layer} layer"
        console.print(
            f"[bold]{escape(row.name)}[/]  from {escape(row.plugin)} ({escape(_short_path(row.origin))})",
            soft_wrap=True,
        )
        facts = (
            f"{row.form}, {layer}, order {row.max_order}, forward mode {row.forward_mode}, vmap {row.vmap}, "
            f"devices {row.devices}"
        )
        console.print(f"    {facts}", markup=False, soft_wrap=True)
        if row.surrogate_gradient:
            console.print(f"    surrogate gradient, by design: {row.surrogate_gradient}", markup=False, soft_wrap=True)
        _print_options(console, row.options, indent="    ")


def option_line(option: Option) -> str:
    """`name: type = default (constraints)  description`, the default as JSON (and YAML) writes it."""
    value = "(required)" if option.required else f"= {json.dumps(option.default)}"
    bounds = f" ({option.constraints})" if option.constraints else ""
    about = f"  {option.description}" if option.description else ""
    return f"{option.name}: {option.type} {value}{bounds}{about}"


def _print_options(console: Console, options: tuple[Option, ...], *, indent: str) -> None:
    if not options:
        console.print(f"{indent}options: none", markup=False, soft_wrap=True)
        return
    console.print(f"{indent}options:", markup=False, soft_wrap=True)
    for option in options:
        console.print(f"{indent}  {option_line(option)}", markup=False, soft_wrap=True)


def _facts(component: Component) -> str:
    details = component.details
    if component.kind == "loss":
        return f"targets: {details['target']}"
    if component.kind == "metric":
        default = "by default" if details["default"] else "when a spec lists it"
        return (
            f"logged as {details['logged_as']}, {details['goal']} is better, for {'/'.join(details['targets'])} "
            f"targets, {default}"
        )
    return ""


def render_components(console: Console, components: list[Component], *, as_json: bool = False) -> None:
    """Every component by kind: name, plugin, description, facts of its kind, and each option."""
    if as_json:
        _print_json(console, [asdict(component) for component in components])
        return
    kinds: dict[str, list[Component]] = {}
    for component in components:
        kinds.setdefault(component.kind, []).append(component)
    for kind, entries in kinds.items():
        console.print(f"[bold]{_count(len(entries), kind)}[/]")
        for component in entries:
            console.print(f"  [bold]{escape(component.name)}[/]  from {escape(component.plugin)}", soft_wrap=True)
            for line in (component.description, _facts(component)):
                if line:
                    console.print(f"      {line}", markup=False, soft_wrap=True)
            if component.kind != "metric":  # a spec names metrics; they take no options
                _print_options(console, component.options, indent="      ")


def _outcome(info: PluginInfo) -> str:
    if info.status != "loaded":
        return f"[red]{info.status.upper()}[/]" + (f": {escape(info.error)}" if info.error else "")
    counts: dict[str, int] = {}
    for kind, _ in info.provides:
        counts[kind] = counts.get(kind, 0) + 1
    provides = ", ".join(_count(n, kind) for kind, n in counts.items()) or "nothing to register"
    return f"hooks {', '.join(info.hooks) or 'none'}; provides {provides}"


def render_plugins(console: Console, system: PluginSystem, *, as_json: bool = False) -> None:
    """Every plugin in load order: version or file hash, source, hooks and what it provides, or why it failed."""
    if as_json:
        _print_json(console, [{**asdict(info), "identity": info.identity} for info in system.plugins])
        return
    console.print(f"[bold]{_count(len(system.plugins), 'plugin')}[/], in load order")
    for info in system.plugins:
        version = info.version or (f"sha256:{info.digest[:12]}" if info.digest else "")
        console.print(
            f"[bold]{escape(info.name)}[/] {escape(version)}  {info.source}: {escape(_short_path(info.origin))}",
            soft_wrap=True,
        )
        console.print(f"    {_outcome(info)}", soft_wrap=True)
    render_warnings(console, list(system.notes))
