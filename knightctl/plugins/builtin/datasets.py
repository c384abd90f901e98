"""Built-in datasets: `battles` (the chapter's battle outcomes), `blobs` (Gaussian clusters) and
`csv` (any CSV file)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

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
    features: Annotated[list[str], Field(min_length=1)] | Literal["all"] = Field(
        "all", description="columns used as numeric features; all: every column but the target and the excluded"
    )
    target: str = Field(description="column to predict: class names, class indices or numbers")
    delimiter: str = Field(",", min_length=1, max_length=1)
    exclude: list[str] = Field(
        default_factory=list, description="columns that features: all leaves out (an id, a text column)"
    )

    @field_validator("exclude")
    @classmethod
    def _excluded_columns_exist(cls, exclude: list[str], info: ValidationInfo) -> list[str]:
        if not exclude or "path" not in info.data or "features" not in info.data:
            return exclude
        if info.data["features"] != "all":
            raise ValueError(
                "leaves columns out of features: all; with a list of features, leave them out of the list instead"
            )
        try:
            header = _read_header(_resolve(info.data["path"], info.context), info.data.get("delimiter", ","))
        except ValueError:
            return exclude  # the file itself is reported once, below
        unknown = [column for column in exclude if column not in header]
        if unknown:
            raise ValueError(
                f"{info.data['path']} has no column {', '.join(map(repr, unknown))}; its columns: {', '.join(header)}"
            )
        return exclude

    @model_validator(mode="after")
    def _file_has_columns(self, info: ValidationInfo) -> CsvParams:
        path = _resolve(self.path, info.context)
        header = _read_header(path, self.delimiter)
        named = [] if self.features == "all" else self.features
        missing = [c for c in (*named, self.target) if c not in header]
        if missing:
            raise ValueError(
                f"{self.path} has no column {', '.join(map(repr, missing))}; its columns: {', '.join(header)}"
            )
        if self.features == "all":
            columns = self.feature_columns(header)
            if not columns:
                raise ValueError(f"features: all leaves no column of {self.path} besides the target {self.target!r}")
            for column, text in _first_row(path, self.delimiter, columns).items():
                if not _is_number(text):
                    raise ValueError(
                        f"features: all takes column {column!r} of {self.path}, which holds {text!r} on line 2, not a "
                        f"number; leave it out with exclude: [{column}]"
                    )
        return self

    def feature_columns(self, header: list[str]) -> list[str]:
        """The feature columns in order: those listed, or every column of `header` but the target and the excluded."""
        if self.features != "all":
            return list(self.features)
        return [column for column in header if column != self.target and column not in self.exclude]


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


def _first_row(path: Path, delimiter: str, columns: list[str]) -> dict[str, str]:
    """The first data row's text in `columns` (none if the file has no rows)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle, delimiter=delimiter), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read data file {path}: {exc}") from None
    return {} if row is None else {column: (row.get(column) or "").strip() for column in columns}


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _build_csv(params: CsvParams, base_dir: Path, seed: int) -> TabularData:
    import torch

    from knightctl.training.data import TabularData  # torch: only when the data is built, never to validate

    path = _resolve(params.path, {"base_dir": base_dir})
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=params.delimiter)
            rows = list(reader)
            columns = params.feature_columns(list(reader.fieldnames or ()))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from None
    hint = (
        "features: all takes every column but the target; leave this one out with exclude"
        if params.features == "all"
        else ""
    )
    features = [
        [_number(row, column, line, path, hint) for column in columns] for line, row in enumerate(rows, start=2)
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
        features=torch.tensor(features, dtype=torch.float32).reshape(len(rows), len(columns)),
        targets=torch.tensor(targets, dtype=torch.float32),
        feature_names=tuple(columns),
        class_names=class_names,
        source=str(path),
    )


def _number(row: dict[str, str], column: str, line: int, path: Path, hint: str) -> float:
    text = (row.get(column) or "").strip()
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r} holds {text!r}, not a number", hint=hint or None) from None
    if not math.isfinite(value):
        raise DataError(f"{path}:{line}: column {column!r} holds {text!r}, not a finite number", hint=hint or None)
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
            n_features=lambda params, base_dir: len(
                params.feature_columns(_read_header(_resolve(params.path, {"base_dir": base_dir}), params.delimiter))
            ),
            description="numeric feature columns (all but the target, by default) and a target column from a CSV file",
        )
    )
