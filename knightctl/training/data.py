"""In-memory tabular data: the dataset contract, the validation split, and batching.

Everything lives on the training device as two tensors. An epoch is one random permutation
gathered once, after which every batch is a contiguous slice (a view, no copy): no per-sample
Dataset or DataLoader, which would dominate the step time of small models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from knightctl.errors import DataError

if TYPE_CHECKING:
    from knightctl.plugins.registry import TargetKind


@dataclass(frozen=True)
class TabularData:
    """What a dataset builds: features (N, F) float32 and targets (N,) on the CPU.

    `targets` holds numbers; when `class_names` is set they are class indices into it.
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
) -> Split:
    """Shuffle once with `seed`, hold out `val_fraction` for validation, move both to `device`."""
    n = int(data.features.shape[0])
    if n == 0:
        raise DataError(f"dataset {dataset_name!r} is empty: it produced no rows")
    if data.features.ndim != 2 or data.targets.shape[0] != n:
        raise DataError(
            f"dataset {dataset_name!r} returned features of shape {tuple(data.features.shape)} and targets of "
            f"shape {tuple(data.targets.shape)}; expected (N, F) and (N,)"
        )
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and (n_val == 0 or n_val == n):
        raise DataError(f"dataset {dataset_name!r} has {n} rows: too few to hold out {val_fraction:.0%} for validation")
    targets = prepare_targets(data, target, dataset_name)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    features = data.features.to(torch.float32)[order].to(device)
    targets = targets[order].to(device)
    n_train = n - n_val
    return Split(
        train_x=features[:n_train],
        train_y=targets[:n_train],
        val_x=features[n_train:] if n_val else None,
        val_y=targets[n_train:] if n_val else None,
        feature_names=data.feature_names,
        class_names=data.class_names,
        source=data.source,
    )


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
