"""A table of new rows for a logged model, read from a CSV file and checked against the model's card.

The card names the feature columns, in order, and (for a classifier) the class names in index
order. Every feature column must be there and hold finite numbers; other columns are kept as
they are, to be written beside the predictions. A target column, for `evaluate`, holds class
names (or class indices) for a classifier, numbers for a regression. Every problem names the
file, the line and the column, as a spec error names its field.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightctl.errors import DataError


@dataclass(frozen=True)
class Table:
    """The rows of a CSV file: its columns in order, each as text, and where it came from."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def numbers(self, column: str, *, what: str = "a feature") -> list[float]:
        """The column's cells as finite numbers; DataError naming the line and column otherwise."""
        values = []
        for line, row in enumerate(self.rows, start=2):  # line 1 is the header
            text = (row.get(column) or "").strip()
            try:
                value = float(text)
            except ValueError:
                raise DataError(
                    f"{self.path}:{line}: column {column!r} ({what}) holds {text!r}, not a number"
                ) from None
            if not math.isfinite(value):
                raise DataError(f"{self.path}:{line}: column {column!r} ({what}) holds {text!r}, not a finite number")
            values.append(value)
        return values

    def require(self, columns: list[str], *, for_what: str) -> None:
        """DataError naming every column of `columns` the file lacks, and what it has."""
        absent = [name for name in columns if name not in self.columns]
        if absent:
            raise DataError(
                f"{self.path}: no column {', '.join(repr(name) for name in absent)}, which {for_what}; "
                f"its columns are {', '.join(self.columns) or 'none'}"
            )


def read_table(path: str | Path) -> Table:
    """The CSV file at `path` (a header row, then one row per example); DataError if unreadable or empty."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = tuple(reader)
            columns = tuple(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not columns:
        raise DataError(f"{path}: empty file; it needs a header row naming the model's feature columns")
    if not rows:
        raise DataError(f"{path}: a header row and no rows to use")
    return Table(path, columns, rows)


def feature_frame(table: Table, card: dict[str, Any]) -> Any:
    """The model's feature columns as a pandas DataFrame of float64, in the card's order."""
    import pandas as pd

    names = list(card["feature_names"])
    table.require(names, for_what="the model takes as a feature")
    return pd.DataFrame({name: table.numbers(name) for name in names}, columns=names)


def target_indices(table: Table, column: str, card: dict[str, Any]) -> list[float]:
    """The target column as the model's targets: class indices in the card's order for a classifier
    (from class names, or from indices where the model was trained on indices), values for a regression."""
    table.require([column], for_what="holds the target")
    if card["target"] == "real":
        return table.numbers(column, what="the target")
    names = card.get("class_names")
    if not names:
        values = table.numbers(column, what="the target")
        largest = 1 if card["target"] == "binary" else None
        for line, value in enumerate(values, start=2):
            if value != int(value) or value < 0 or (largest is not None and value > largest):
                allowed = "0 or 1" if largest is not None else "a class index (0, 1, 2, ...)"
                raise DataError(f"{table.path}:{line}: column {column!r} (the target) holds {value:g}, not {allowed}")
        return values
    index = {name: float(i) for i, name in enumerate(names)}
    found = []
    for line, row in enumerate(table.rows, start=2):
        label = (row.get(column) or "").strip()
        if label not in index:
            raise DataError(
                f"{table.path}:{line}: column {column!r} (the target) holds {label!r}, not a class the model "
                f"knows ({', '.join(names)})"
            )
        found.append(index[label])
    return found
