"""Built-in datasets: `battles` (the chapter's battle outcomes), `blobs` (Gaussian clusters) and
`csv` (any CSV file)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationInfo, model_validator

from knightctl.errors import DataError
from knightctl.plugins.hookspecs import hookimpl
from knightctl.plugins.registry import DatasetDef, Params

if TYPE_CHECKING:
    from knightctl.training.data import TabularData  # torch: only when the data is built, never to validate

# Victory radius squared, 2 ln 2: the median of a chi-squared variable with two degrees of freedom,
# so that with standard-normal positions about half of all battles are won.
_VICTORY_RADIUS_SQUARED = 2.0 * math.log(2.0)


class BattlesParams(Params):
    n_samples: int = Field(1000, ge=2, description="number of battles")
    noise: float = Field(0.1, ge=0.0, description="standard deviation of the fortune of war, in squared units")
    seed: int | None = Field(None, ge=0, description="data seed; default: the experiment's seed")


def _build_battles(params: BattlesParams, base_dir: Path, seed: int) -> TabularData:
    """Battles fought at (east, north) of Camelot, in units of 100 km; the knights win near home.

    Victory is east^2 + north^2 + noise below 2 ln 2: a disc, which no straight line separates, so
    the model needs its hidden ReLU layer.
    """
    import torch

    from knightctl.training.data import TabularData  # torch: only when the data is built, never to validate

    generator = torch.Generator().manual_seed(params.seed if params.seed is not None else seed)
    position = torch.randn(params.n_samples, 2, generator=generator)
    fortune = params.noise * torch.randn(params.n_samples, generator=generator)
    victory = (position.pow(2).sum(dim=1) + fortune < _VICTORY_RADIUS_SQUARED).to(torch.float32)
    return TabularData(
        features=position,
        targets=victory,
        feature_names=("east", "north"),
        class_names=("defeat", "victory"),
        source=f"battles(n_samples={params.n_samples}, noise={params.noise})",
    )


class BlobsParams(Params):
    n_samples: int = Field(10000, ge=2, description="number of points")
    n_features: int = Field(784, ge=1, description="dimensions of each point (784: the size of a 28x28 image)")
    n_classes: int = Field(10, ge=2, description="number of clusters, one class each")
    spread: float = Field(1.0, gt=0.0, description="standard deviation of the points around their cluster centre")
    seed: int | None = Field(None, ge=0, description="data seed; default: the experiment's seed")


def _build_blobs(params: BlobsParams, base_dir: Path, seed: int) -> TabularData:
    """Points scattered with standard deviation `spread` around `n_classes` standard-normal centres.

    Sized like a small image dataset by default, for measuring wider models than the chapter's.
    Two centres lie about sqrt(2 n_features) apart, so the classes overlap once `spread` nears
    half of that.
    """
    import torch

    from knightctl.training.data import TabularData  # torch: only when the data is built, never to validate

    generator = torch.Generator().manual_seed(params.seed if params.seed is not None else seed)
    centres = torch.randn(params.n_classes, params.n_features, generator=generator)
    labels = torch.randint(params.n_classes, (params.n_samples,), generator=generator)
    noise = torch.randn(params.n_samples, params.n_features, generator=generator)
    return TabularData(
        features=centres[labels] + noise * params.spread,
        targets=labels.to(torch.float32),
        feature_names=tuple(f"x{i}" for i in range(params.n_features)),
        class_names=tuple(f"blob{i}" for i in range(params.n_classes)),
        source=f"blobs(n_samples={params.n_samples}, n_features={params.n_features}, n_classes={params.n_classes}, "
        f"spread={params.spread})",
    )


class CsvParams(Params):
    path: str = Field(description="CSV file with a header row; relative paths start at the spec's folder")
    features: list[str] = Field(min_length=1, description="columns used as numeric features")
    target: str = Field(description="column to predict: class names, class indices or numbers")
    delimiter: str = Field(",", min_length=1, max_length=1)

    @model_validator(mode="after")
    def _file_has_columns(self, info: ValidationInfo) -> CsvParams:
        header = _read_header(_resolve(self.path, info.context), self.delimiter)
        missing = [c for c in (*self.features, self.target) if c not in header]
        if missing:
            raise ValueError(
                f"{self.path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(header)}"
            )
        return self


def _resolve(path: str, context: Any) -> Path:
    base = Path((context or {}).get("base_dir", "."))
    return (base / path) if not Path(path).is_absolute() else Path(path)


def _read_header(path: Path, delimiter: str) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle, delimiter=delimiter), [])
    except FileNotFoundError:
        raise ValueError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from None


def _build_csv(params: CsvParams, base_dir: Path, seed: int) -> TabularData:
    import torch

    from knightctl.training.data import TabularData  # torch: only when the data is built, never to validate

    path = _resolve(params.path, {"base_dir": base_dir})
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter=params.delimiter))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from None
    features = [
        [_number(row, column, line, path) for column in params.features] for line, row in enumerate(rows, start=2)
    ]
    labels = [(row.get(params.target) or "").strip() for row in rows]
    if any(label == "" for label in labels):
        line = labels.index("") + 2
        raise DataError(f"{path}:{line}: the target column {params.target!r} is empty")
    class_names: tuple[str, ...] | None = None
    try:
        targets = [float(label) for label in labels]
    except ValueError:
        class_names = tuple(sorted(set(labels)))
        index = {name: i for i, name in enumerate(class_names)}
        targets = [float(index[label]) for label in labels]
    return TabularData(
        features=torch.tensor(features, dtype=torch.float32).reshape(len(rows), len(params.features)),
        targets=torch.tensor(targets, dtype=torch.float32),
        feature_names=tuple(params.features),
        class_names=class_names,
        source=str(path),
    )


def _number(row: dict[str, str], column: str, line: int, path: Path) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r} holds {text!r}, not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: column {column!r} holds {text!r}, not a finite number")
    return value


@hookimpl
def register_datasets(register) -> None:  # type: ignore[no-untyped-def]
    register(
        DatasetDef(
            name="battles",
            build=_build_battles,
            params=BattlesParams,
            n_features=lambda params, base_dir: 2,
            description="synthetic battle outcomes around Camelot: two features, a disc-shaped victory region",
        )
    )
    register(
        DatasetDef(
            name="blobs",
            build=_build_blobs,
            params=BlobsParams,
            n_features=lambda params, base_dir: params.n_features,
            description="synthetic Gaussian clusters: many features, one class per cluster",
        )
    )
    register(
        DatasetDef(
            name="csv",
            build=_build_csv,
            params=CsvParams,
            n_features=lambda params, base_dir: len(params.features),
            description="numeric feature columns and a target column from a CSV file",
        )
    )
