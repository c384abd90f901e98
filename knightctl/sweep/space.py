"""A sweep's space: a grid over spec paths, or distributions to draw from; a trial is a list of `--set`s.

`--grid optimizer.lr=0.1,0.01` takes the values as written; `--random` or `--tpe
optimizer.lr=loguniform:1e-4:1e-1` names a distribution (`uniform:LOW:HIGH`, `loguniform:LOW:HIGH`,
`int:LOW:HIGH`, `choice:A,B,C`) that Optuna's sampler draws from (sweep/study.py). Either way a
trial is `PATH=VALUE` strings that go through the same parser and typing as `--set`: the spec
decides what a value means, and a bad path or value is the spec error `--set` would give (for
draws, each bound and choice is checked so). `space_axes` describes the options as data (each path
with its values or distribution), for the study, the parent run's params and the plot.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

from knightctl.errors import SweepError
from knightctl.spec.overrides import overrides_label

_DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: its overrides, and a key that names it across reruns."""

    overrides: tuple[str, ...]

    @property
    def key(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.overrides)).encode()).hexdigest()[:16]

    @property
    def values(self) -> dict[str, str]:
        """Each swept path and the value this trial gives it, as --set text."""
        return dict(item.split("=", 1) for item in self.overrides if "=" in item)

    @property
    def label(self) -> str:
        """`lr=0.006937 batch_size=32`: each path's last part and its value, a number to 4 significant
        digits, for run names, tables and the console (the full value is in the trial's overrides)."""
        pairs = (item.split("=", 1) for item in self.overrides if "=" in item)
        return overrides_label([f"{path}={short_value(value.strip())}" for path, value in pairs])


@dataclass(frozen=True)
class Axis:
    """One swept path and what it takes: a grid's values, or a distribution, each as written."""

    path: str
    values: tuple[str, ...] = ()  # a grid's values, or a choice's choices
    distribution: str | None = None  # uniform, loguniform, int or choice; None for a grid
    bounds: tuple[str, str] = ("", "")  # LOW and HIGH of uniform, loguniform and int

    def describe(self) -> str:
        """`[0.01, 0.1]` for a grid; `loguniform(1e-4, 1e-1)` or `choice(32, 64)` for draws."""
        if self.distribution is None:
            return f"[{', '.join(self.values)}]"
        arguments = self.values if self.distribution == "choice" else self.bounds
        return f"{self.distribution}({', '.join(arguments)})"

    @property
    def logarithmic(self) -> bool:
        """Whether the values spread evenly on a log scale (drawn from loguniform)."""
        return self.distribution == "loguniform"


def short_value(text: str) -> str:
    """A float written with more than 4 significant digits, to 4 (`0.0069365442590166495` ->
    `0.006937`); anything else as written (`1e-3`, `64`, `full`, `[0.9, 0.99]`)."""
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number) or float(f"{number:.4g}") == number or text.strip().lstrip("+-").isdigit():
        return text
    return f"{number:.4g}"


def space_axes(grids: Sequence[str], draws: Sequence[str]) -> list[Axis]:
    """The swept paths of `--grid` and `--random` options, in the order given (options already checked
    by `grid_trials` or `random_trials`)."""
    axes = [Axis(path, tuple(values)) for path, values in (_split_option(option, "--grid") for option in grids)]
    for path, text in (_path_and_text(option, "--random") for option in draws):
        name, _, args = text.partition(":")
        if name == "choice":
            axes.append(Axis(path, tuple(_split_option(f"{path}={args}", "--random")[1]), name))
        else:
            low, _, high = args.partition(":")
            axes.append(Axis(path, distribution=name, bounds=(low, high)))
    return axes


def grid_trials(grids: Sequence[str]) -> list[Trial]:
    """Every combination of `PATH=V1,V2,...` options, in the order given (the last varies fastest)."""
    axes = [
        [f"{path}={value}" for value in values]
        for path, values in (_split_option(option, "--grid") for option in grids)
    ]
    return [Trial(tuple(combination)) for combination in product(*axes)]


def check_draws(options: Sequence[str], flag: str = "--random") -> None:
    """Each `PATH=DISTRIBUTION:ARGS` option read, or a SweepError naming it; one path given once."""
    paths = [_check_distribution(*_path_and_text(option, flag), flag) for option in options]
    if len(set(paths)) != len(paths):
        raise SweepError(f"{flag}: a path given twice: {', '.join(sorted({p for p in paths if paths.count(p) > 1}))}")


def axis_checks(axes: Sequence[Axis]) -> list[str]:
    """The --sets that stand for every value a drawn axis can take: each choice, each bound."""
    values = [(axis.path, axis.values if axis.distribution == "choice" else axis.bounds) for axis in axes]
    return [f"{path}={value}" for path, options in values for value in options]


def _path_and_text(option: str, flag: str) -> tuple[str, str]:
    path, equals, text = option.partition("=")
    if not equals or not path.strip() or not text.strip():
        raise SweepError(f"{flag} {option!r}: expected PATH=VALUES, e.g. optimizer.lr=0.1,0.01")
    return path.strip(), text.strip()


def _split_option(option: str, flag: str) -> tuple[str, list[str]]:
    """`PATH=A,B,[1, 2]` -> PATH, ["A", "B", "[1, 2]"]: commas inside brackets or braces stay."""
    path, text = _path_and_text(option, flag)
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if any(not value for value in values):
        raise SweepError(f"{flag} {option!r}: an empty value between commas")
    return path, values


def _check_distribution(path: str, text: str, flag: str) -> str:
    """`path`, once `NAME:ARGS` reads as one of the distributions, with bounds in order."""
    name, _, args = text.partition(":")
    where = f"{flag} {path}={text}"
    if name == "choice":
        _split_option(f"{path}={args}", flag)
        return path
    if name not in _DISTRIBUTIONS:
        raise SweepError(f"{where}: unknown distribution {name!r}; use {', '.join(_DISTRIBUTIONS)}")
    low_text, _, high_text = args.partition(":")
    try:
        low, high = (int(low_text), int(high_text)) if name == "int" else (float(low_text), float(high_text))
    except ValueError:
        raise SweepError(
            f"{where}: expected {name}:LOW:HIGH with {'integers' if name == 'int' else 'numbers'}"
        ) from None
    if not low < high or (name == "loguniform" and low <= 0):
        raise SweepError(f"{where}: needs LOW < HIGH" + (", both above 0" if name == "loguniform" else ""))
    return path
