"""What the registered components are and take, as plain data, for `knightctl components` and the
options `knightctl ops` shows.

Everything is read off the definitions the plugins registered: each one's params model (a field's
name in the spec, its type, default, constraints and description) and the facts its kind declares
(a loss's targets, a metric's goal). Nothing here imports torch, and nothing is built or run.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from knightctl.errors import UsageError

if TYPE_CHECKING:  # pydantic is imported on use: shell completion reads KINDS on every TAB
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    from knightctl.plugins.registry import Registry

# The kinds `knightctl components KIND` takes, in the order it lists them: the word a user types
# (plural) -> the registry's kind.
KINDS: dict[str, str] = {
    "datasets": "dataset",
    "layers": "layer",
    "losses": "loss",
    "optimizers": "optimizer",
    "schedulers": "scheduler",
    "metrics": "metric",
}


@dataclass(frozen=True)
class Option:
    """One option a spec may give a component (or an op used as a layer)."""

    name: str  # as the spec spells it
    type: str  # as Python writes it: "int", "float | None", "'none' | 'tanh'", "tuple[float, float]"
    required: bool  # True: the spec must give it, and `default` is None
    default: Any  # as JSON has it (a tuple as a list, None as null)
    constraints: str  # e.g. "> 0", ">= 0, < 1", "length >= 1"; "" where there are none
    description: str  # "" where the plugin gave none


@dataclass(frozen=True)
class Component:
    """One registered component: what it is called, who registered it, and what it takes."""

    kind: str  # the registry's kind: "dataset", "layer", "loss", "optimizer", "scheduler", "metric"
    name: str
    plugin: str
    description: str
    options: tuple[Option, ...]
    details: Mapping[str, Any] = field(default_factory=dict)  # the facts its kind declares (see `_details`)


def _type_name(annotation: Any) -> str:
    """A type as a user reads it in Python: classes by name, unions with |, literals by their values."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else _type_name(arg) for arg in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", "")
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# annotated_types' constraint classes (as pydantic's Field(gt=...) records them): attribute, as written
_BOUNDS: dict[str, tuple[str, str]] = {
    "Gt": ("gt", "> {}"),
    "Ge": ("ge", ">= {}"),
    "Lt": ("lt", "< {}"),
    "Le": ("le", "<= {}"),
    "MultipleOf": ("multiple_of", "multiple of {}"),
    "MinLen": ("min_length", "length >= {}"),
    "MaxLen": ("max_length", "length <= {}"),
}


def _constraints(info: FieldInfo) -> str:
    import annotated_types

    found = []
    for item in info.metadata:
        for class_name, (attribute, template) in _BOUNDS.items():
            if isinstance(item, getattr(annotated_types, class_name)):
                found.append(template.format(getattr(item, attribute)))
    return ", ".join(found)


def options_of(params: type[BaseModel]) -> tuple[Option, ...]:
    """The options a params model accepts, in its fields' order."""
    from pydantic_core import to_jsonable_python

    options = []
    for name, info in params.model_fields.items():
        required = info.is_required()
        default = None if required else info.get_default(call_default_factory=True)
        options.append(
            Option(
                name=info.alias or name,
                type=_type_name(info.annotation),
                required=required,
                default=to_jsonable_python(default, fallback=repr),
                constraints=_constraints(info),
                description=info.description or "",
            )
        )
    return tuple(options)


def _details(definition: Any) -> dict[str, Any]:
    """What a kind declares besides its options: a loss's targets; a metric's goal, the targets it
    fits, whether it is per class, whether a spec without `metrics:` gets it, and its logged name."""
    if definition.kind == "loss":
        return {"target": definition.target}
    if definition.kind == "metric":
        return {
            "goal": definition.goal,
            "targets": list(definition.targets),
            "per_class": definition.per_class,
            "default": definition.default,
            "logged_as": definition.key + ("/<class>" if definition.per_class else ""),
        }
    return {}


def component_kind(text: str) -> str:
    """The registry's kind for what a user typed ("layers" or "layer"); UsageError naming the kinds otherwise."""
    word = text.strip().lower()
    if word in KINDS:
        return KINDS[word]
    if word in KINDS.values():
        return word
    raise UsageError(f"unknown component kind {text!r}; the kinds are {', '.join(KINDS)}")


def catalog(registry: Registry, kinds: Sequence[str] = ()) -> list[Component]:
    """Every registered component of `kinds` (default: all, in `KINDS`' order), each kind by name."""
    wanted = [component_kind(kind) for kind in kinds] or list(KINDS.values())
    return [
        Component(
            kind=kind,
            name=name,
            plugin=definition.plugin,
            description=definition.description,
            options=options_of(definition.params),
            details=_details(definition),
        )
        for kind in dict.fromkeys(wanted)
        for name in registry.names(kind)
        for definition in (registry.get(kind, name),)
    ]
