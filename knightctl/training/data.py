"""In-memory tabular data: the dataset contract, the validation split, and batching.

The split (`data.split`) shuffles the rows with the run's seed and holds out the last
`val_fraction` of them, or, unshuffled, the last rows in the dataset's order; stratified, it holds
out each class's share of that class's rows. With `data.standardize`, the features are then
standardised with the training rows' statistics (training/preprocessing.py).

Everything lives on the training device as two tensors. An epoch is one random permutation
gathered once, after which every batch is a contiguous slice (a view, no copy): no per-sample
Dataset or DataLoader, which would dominate the step time of small models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from knightctl.errors import DataError
from knightctl.training.preprocessing import Preprocessing, Standardization

if TYPE_CHECKING:
    from knightctl.plugins.registry import TargetKind


@dataclass(frozen=True)
class TabularData:
    """What a dataset builds: features (N, F) float32 and targets (N,) on the CPU.

    `targets` holds numbers; when `class_names` is set they are class indices into it, and those
    names, in that order, are what the run records and the logged model answers with.
    `feature_names` name the columns a served model reads from a table; `source` says where the
    rows came from (a file path, or how they were generated). A plugin's dataset returns one of
    these, and gets the split, stratification and standardisation as the built-in ones do.
    """

    features: torch.Tensor
    targets: torch.Tensor
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    source: str = ""


@dataclass(frozen=True)
class Split:
    """Train and validation tensors on the training device, targets shaped for the loss."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] | None
    source: str = ""  # where the rows came from: a file path, or how they were generated
    standardization: Standardization | None = None  # applied to train_x and val_x, with data.standardize

    @property
    def preprocessing(self) -> Preprocessing:
        """What turns the dataset's raw rows into these features: for checkpoints and the logged model."""
        return Preprocessing(self.feature_names, self.standardization)

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return 0 if self.val_x is None else int(self.val_x.shape[0])


def prepare_targets(data: TabularData, target: TargetKind, dataset_name: str) -> torch.Tensor:
    """Shape and type the targets for a loss: binary (N, 1) float, class (N,) int64, real (N, 1) float."""
    values = data.targets
    if target == "real":
        return values.to(torch.float32).reshape(-1, 1)
    integral = bool(torch.all(values == values.round())) and bool(torch.all(values >= 0))
    if not integral:
        raise DataError(
            f"dataset {dataset_name!r} has non-integer targets, but the loss needs class labels",
            hint="use a regression loss (mse, l1, huber) or a dataset with class targets",
        )
    if target == "binary":
        if values.numel() and int(values.max()) > 1:
            n_classes = len(data.class_names) if data.class_names else int(values.max()) + 1
            raise DataError(
                f"dataset {dataset_name!r} has {n_classes} classes, but bce_with_logits is a binary loss",
                hint="use loss: cross_entropy with one output per class",
            )
        return values.to(torch.float32).reshape(-1, 1)
    return values.to(torch.int64).reshape(-1)


def split_data(
    data: TabularData,
    *,
    val_fraction: float,
    seed: int,
    target: TargetKind,
    dataset_name: str,
    device: torch.device,
    shuffle: bool = True,
    stratify: bool = False,
    standardize: bool = False,
    recorded: Preprocessing | None = None,
) -> Split:
    """Hold out `val_fraction` for validation (shuffled with `seed`, per class when `stratify`), then
    standardise with the training rows' statistics, or those `recorded` (a resumed run's checkpoint
    kept them), on `device`."""
    n = int(data.features.shape[0])
    if n == 0:
        raise DataError(f"dataset {dataset_name!r} is empty: it produced no rows")
    if data.features.ndim != 2 or data.targets.shape[0] != n:
        raise DataError(
            f"dataset {dataset_name!r} returned features of shape {tuple(data.features.shape)} and targets of "
            f"shape {tuple(data.targets.shape)}; expected (N, F) and (N,)"
        )
    if len(data.feature_names) != data.features.shape[1]:
        raise DataError(
            f"dataset {dataset_name!r} returned {data.features.shape[1]} feature columns and "
            f"{len(data.feature_names)} feature names"
        )
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and (n_val == 0 or n_val == n):
        raise DataError(f"dataset {dataset_name!r} has {n} rows: too few to hold out {val_fraction:.0%} for validation")
    targets = prepare_targets(data, target, dataset_name)
    generator = torch.Generator().manual_seed(seed)
    if stratify:
        if target == "real":
            raise DataError(
                f"data.split.stratify keeps each class's share in the validation split, but dataset "
                f"{dataset_name!r} is trained with a regression loss, whose targets have no classes"
            )
        train_rows, val_rows = _stratified(targets.reshape(-1).to(torch.int64), n_val, shuffle, generator)
    else:
        # Unchanged since before data.split: the same seed holds out the same rows.
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        train_rows, val_rows = order[: n - n_val], order[n - n_val :]
    features = data.features.to(torch.float32)
    standardization = None
    if standardize:
        standardization = _recorded(recorded, data, dataset_name) or Standardization.fit(features[train_rows])
        features = standardization.apply(features)
    return Split(
        train_x=features[train_rows].to(device),
        train_y=targets[train_rows].to(device),
        val_x=features[val_rows].to(device) if n_val else None,
        val_y=targets[val_rows].to(device) if n_val else None,
        feature_names=data.feature_names,
        class_names=data.class_names,
        source=data.source,
        standardization=standardization,
    )


def _recorded(recorded: Preprocessing | None, data: TabularData, dataset_name: str) -> Standardization | None:
    """The recorded statistics, for the same feature columns."""
    if recorded is None or recorded.standardization is None:
        return None
    if tuple(recorded.feature_names) != tuple(data.feature_names):
        raise DataError(
            f"the checkpoint standardised the features {', '.join(recorded.feature_names)}, and dataset "
            f"{dataset_name!r} now gives {', '.join(data.feature_names)}",
            hint="resume with the data the run was trained on",
        )
    return recorded.standardization


def _stratified(
    labels: torch.Tensor, n_val: int, shuffle: bool, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation row indices holding out each class's share of `n_val`.

    Each class gives `n_val * its rows / all rows`, rounded down, and the rows still missing go one
    each to the classes with the largest remainders (ties: the lower class index), never taking a
    class's last training row: each class's share of the validation split is within one row of
    its share of the data. Shuffled, each class's rows are drawn in class order from `generator`,
    and both splits are shuffled once more so that classes interleave; unshuffled, each class
    gives its last rows and both splits keep the dataset's order.
    """
    n = int(labels.shape[0])
    classes = [torch.nonzero(labels == c).reshape(-1) for c in range(int(labels.max()) + 1 if n else 0)]
    quotas = [len(rows) * n_val / n for rows in classes]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(classes)), key=lambda c: (counts[c] - quotas[c], c))
    for c in by_remainder:
        if sum(counts) >= n_val:
            break
        if counts[c] + 1 < len(classes[c]):
            counts[c] += 1
    train_parts, val_parts = [], []
    for rows, count in zip(classes, counts, strict=True):
        if shuffle:
            rows = rows[torch.randperm(len(rows), generator=generator)]
        train_parts.append(rows[: len(rows) - count])
        val_parts.append(rows[len(rows) - count :])
    train_rows, val_rows = torch.cat(train_parts), torch.cat(val_parts)
    if shuffle:
        train_rows = train_rows[torch.randperm(len(train_rows), generator=generator)]
        val_rows = val_rows[torch.randperm(len(val_rows), generator=generator)]
    else:
        train_rows, val_rows = train_rows.sort().values, val_rows.sort().values
    return train_rows, val_rows


def steps_per_epoch(n_train: int, batch_size: int | None) -> int:
    """Batches in one epoch; `batch_size=None` means the whole training set at once."""
    if batch_size is None or batch_size >= n_train:
        return 1
    return -(-n_train // batch_size)


def epoch_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int | None, generator: torch.Generator, skip: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield one epoch of (inputs, targets) batches in a fresh random order, after the first `skip`.

    The order is drawn whatever `skip` is, so a resumed epoch leaves `generator` where an
    uninterrupted one does. Full batch yields the tensors themselves: reordering a full batch
    changes nothing but the summation order, so it costs a gather for no benefit.
    """
    n = int(x.shape[0])
    if batch_size is None or batch_size >= n:
        if not skip:
            yield x, y
        return
    # The permutation is drawn on the CPU generator (its state is easy to save and identical
    # on every device), then gathered once on the device.
    order = torch.randperm(n, generator=generator).to(x.device, non_blocking=True)
    x_epoch, y_epoch = x[order], y[order]
    for start in range(skip * batch_size, n, batch_size):
        yield x_epoch[start : start + batch_size], y_epoch[start : start + batch_size]
