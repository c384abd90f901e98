"""The numbers behind knightctl's task metrics, on device tensors and without a device synchronisation.

Nothing here reads a value back: no `.item()`, no boolean-mask indexing, no `bincount` (all of
which wait for an accelerator), so an evaluation's metrics are read back with its loss, in one
transfer. Undefined values are NaN, never a made-up 0: precision of a class nothing was predicted
as, recall of a class absent from the split, R² of constant targets, ROC AUC with one class only.
The caller logs a NaN as n/a.

Classification targets come as the losses get them: binary ones as 0/1 floats shaped (N, 1) with
one logit per row (positive when > 0), class ones as int64 indices shaped (N,) with one logit per
class.
"""

from __future__ import annotations

import torch

# The last classification statistics, with the tensors they were counted from: accuracy,
# precision, recall, F1 and macro F1 of one evaluation come from one confusion matrix, counted once
# (the caller holds both tensors until the next evaluation, so their identities are not reused).
_last: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None


def labels(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(true class, predicted class, number of classes): two classes (bools) for binary targets."""
    if targets.dtype.is_floating_point:  # binary: one logit per row; True == 1 against the class indices
        return targets.reshape(-1) > 0.5, outputs.reshape(-1) > 0, 2
    return targets.reshape(-1), outputs.argmax(dim=-1).reshape(-1), int(outputs.shape[-1])


def classification(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The confusion matrix (float counts, row = true class, column = predicted) and what follows
    from it, per class (precision, recall, f1) and overall (accuracy, macro_f1)."""
    global _last
    if _last is not None and _last[0] is outputs and _last[1] is targets:
        return _last[2]
    true, predicted, n_classes = labels(outputs, targets)
    classes = torch.arange(n_classes, device=true.device)
    # One-hot rows multiplied: exact counts (float32 holds integers to 2**24 rows), deterministic,
    # and no data-dependent size (bincount reads its maximum back first).
    counts = (true.unsqueeze(1) == classes).float().T @ (predicted.unsqueeze(1) == classes).float()
    hits, as_predicted, as_true = counts.diagonal(), counts.sum(dim=0), counts.sum(dim=1)
    either = as_predicted + as_true  # 2 TP + FP + FN: 0 for a class neither there nor predicted
    f1 = 2 * hits / either
    present = either > 0
    stats = {
        "confusion": counts,
        "accuracy": hits.sum() / max(true.numel(), 1),
        "precision": hits / as_predicted,  # NaN for a class nothing was predicted as
        "recall": hits / as_true,  # NaN for a class the split lacks
        "f1": f1,  # 0 for a class there but never predicted right
        "macro_f1": torch.where(present, f1, 0.0).sum() / present.sum(),  # over the classes there or predicted
    }
    _last = (outputs, targets, stats)
    return stats


def confusion(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return classification(outputs, targets)["confusion"]


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return classification(outputs, targets)["accuracy"]


def precision(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class: of the rows predicted as it, the share that are it."""
    return classification(outputs, targets)["precision"]


def recall(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class: of its rows, the share predicted as it."""
    return classification(outputs, targets)["recall"]


def f1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per class: 2 TP / (2 TP + FP + FN), the harmonic mean of precision and recall."""
    return classification(outputs, targets)["f1"]


def macro_f1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean F1 over the classes that are in the split or were predicted."""
    return classification(outputs, targets)["macro_f1"]


def roc_auc(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary ROC AUC from ranks (Mann-Whitney U): the chance that a random positive row scores above
    a random negative one, ties counting a half. Tied scores share their average rank.

    With 1-based ranks r, AUC = (sum of the positives' r - P(P+1)/2) / (P N). A tie group spanning
    sorted positions lo..hi-1 (0-based) has average rank (lo + hi + 1) / 2, so 2r is an integer,
    summed exactly in float64 (to 2**53) until the one division."""
    scores = outputs.reshape(-1)
    positive = targets.reshape(-1) > 0.5
    ordered = torch.sort(scores).values
    exact = torch.float32 if scores.device.type == "mps" else torch.float64  # MPS has no float64
    twice_ranks = (torch.searchsorted(ordered, scores) + torch.searchsorted(ordered, scores, right=True) + 1).to(exact)
    n_positive = positive.sum(dtype=exact)
    numerator = (twice_ranks * positive).sum() - n_positive * (n_positive + 1)
    return (numerator / (2 * n_positive * (scores.numel() - n_positive))).float()  # 0/0, NaN, with one class


def mae(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every output."""
    return (outputs - targets).abs().mean()


def rmse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Root of the mean squared error over every output, in the targets' units."""
    return (outputs - targets).square().mean().sqrt()


def r2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - SS_res / SS_tot per output column, averaged over the columns whose targets vary."""
    columns = targets.shape[-1] if targets.dim() > 1 else 1
    truth, predicted = targets.reshape(-1, columns).float(), outputs.reshape(-1, columns).float()
    residual = (truth - predicted).square().sum(dim=0)
    total = (truth - truth.mean(dim=0)).square().sum(dim=0)
    per_column = torch.where(total > 0, 1 - residual / total, torch.full_like(total, float("nan")))
    return torch.nanmean(per_column)
