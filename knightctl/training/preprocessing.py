"""The preprocessing a run records: its feature columns in order and the training split's standardisation.

`data.standardize: true` centres each feature on its training-split mean and divides it by its
training-split standard deviation (population, ddof 0); the validation rows get the same numbers,
so nothing of them leaks into training. A column that is constant on the training split (standard
deviation 0) is only centred: it is divided by 1. The statistics travel in every checkpoint (a
resumed run uses them rather than refitting) and in the logged model's card, whose `preprocessing`
is `record()`'s steps.

`model_input(rows, preprocessing)` turns a raw feature table into what the model takes, exactly
as training did: the served model (tracking/servedmodel.py), predict and evaluate all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from knightctl.errors import DataError

STANDARDIZE = "standardize"  # the step's kind in a record


@dataclass(frozen=True)
class Standardization:
    """Each feature's training-split mean and standard deviation, in the features' order."""

    mean: tuple[float, ...]
    std: tuple[float, ...]  # never 0: a constant column's is 1

    @classmethod
    def fit(cls, train_x: torch.Tensor) -> Standardization:
        """The statistics of `train_x` (N, F), computed in float64."""
        rows = train_x.detach().to("cpu", torch.float64)
        mean = rows.mean(dim=0) if rows.shape[0] else torch.zeros(rows.shape[1], dtype=torch.float64)
        std = rows.std(dim=0, correction=0) if rows.shape[0] else torch.ones(rows.shape[1], dtype=torch.float64)
        return cls(tuple(mean.tolist()), tuple(s if s > 0 else 1.0 for s in std.tolist()))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """`(x - mean) / std` in float32 on `x`'s device: the same operations `model_input` does in NumPy."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        return (x.to(torch.float32) - mean) / std

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """`x * std + mean`: standardised rows back in the dataset's units (to float32 rounding)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device)
        return x.to(torch.float32) * std + mean


@dataclass(frozen=True)
class Preprocessing:
    """What turns a raw feature table into the model's input: which columns, in order, then the steps."""

    feature_names: tuple[str, ...]
    standardization: Standardization | None = None

    def steps(self) -> list[dict[str, Any]]:
        """The steps as plain data (a model card's `preprocessing`): `[]`, or one standardize step."""
        if self.standardization is None:
            return []
        return [{"kind": STANDARDIZE, "mean": list(self.standardization.mean), "std": list(self.standardization.std)}]

    def record(self) -> dict[str, Any]:
        """Plain data for a checkpoint (loadable with weights_only) or JSON."""
        return {"feature_names": list(self.feature_names), "steps": self.steps()}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Preprocessing:
        """From `record()`'s data, or from a model card (`feature_names` and `preprocessing`)."""
        names = tuple(record["feature_names"])
        steps = record.get("steps", record.get("preprocessing")) or []
        standardization = None
        for step in steps:
            if step.get("kind") != STANDARDIZE:
                raise DataError(f"unknown preprocessing step {step.get('kind')!r}: this knightctl knows {STANDARDIZE}")
            mean, std = tuple(map(float, step["mean"])), tuple(map(float, step["std"]))
            if len(mean) != len(names) or len(std) != len(names):
                raise DataError(
                    f"the standardize step has {len(mean)} means and {len(std)} deviations for {len(names)} features"
                )
            standardization = Standardization(mean, std)
        return cls(names, standardization)


def recorded_preprocessing(state: Mapping[str, Any]) -> Preprocessing | None:
    """The preprocessing a checkpoint's contents recorded (None in one written before knightctl kept it)."""
    saved = state.get("preprocessing")
    return Preprocessing.from_record(saved) if saved else None


def model_input(rows: Any, preprocessing: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """A raw feature table as the model's input: a float32 matrix, standardised as in training.

    `rows` is a pandas DataFrame (the feature columns by name, in any order; others are ignored), or an
    array with one column per feature in the recorded order. `preprocessing` is a `Preprocessing`, or a
    record of one: a checkpoint's `preprocessing`, or a logged model's card (card.json). A missing
    column, a cell that is not a number and a non-finite value are DataErrors naming the column.
    """
    if not isinstance(preprocessing, Preprocessing):
        preprocessing = Preprocessing.from_record(preprocessing)
    matrix = _feature_matrix(rows, preprocessing.feature_names)
    scaling = preprocessing.standardization
    if scaling is not None:
        matrix = (matrix - np.asarray(scaling.mean, dtype=np.float32)) / np.asarray(scaling.std, dtype=np.float32)
    return matrix


def _feature_matrix(rows: Any, names: Sequence[str]) -> np.ndarray:
    if hasattr(rows, "columns"):
        absent = [name for name in names if name not in rows.columns]
        if absent:
            raise DataError(f"the input lacks the column(s) {', '.join(absent)}; the model takes {', '.join(names)}")
        columns = [_column(rows[name], name) for name in names]
        matrix = np.stack(columns, axis=1) if columns else np.zeros((len(rows), 0), dtype=np.float32)
    else:
        try:
            matrix = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"the input is not a table of numbers: {exc}") from None
        if matrix.ndim == 1:
            matrix = matrix.reshape(1, -1) if len(names) > 1 else matrix.reshape(-1, 1)
    if matrix.ndim != 2 or matrix.shape[1] != len(names):
        raise DataError(
            f"the input has shape {matrix.shape}; the model takes rows of {len(names)} features ({', '.join(names)})"
        )
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        raise DataError(
            f"column {names[column]!r} holds {matrix[row, column]} in row {row + 1} of the input, not a finite number"
        )
    return matrix


def _column(values: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        pass
    for row, value in enumerate(values, start=1):
        try:
            float(value)
        except (TypeError, ValueError):
            raise DataError(f"column {name!r} holds {value!r} in row {row} of the input, not a number") from None
    raise DataError(f"column {name!r} does not hold numbers")
