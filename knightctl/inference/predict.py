"""`knightctl predict`: a logged model's answers for the rows of a CSV file.

The rows go through the model's own pyfunc (tracking/servedmodel.py), so they are preprocessed
exactly as in training (the card's standardisation) and answered in the task's terms: the class
name and each class's probability for a classifier, the value for a regression. The output is the
input's columns followed by the answers, as CSV.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knightctl.errors import DataError
from knightctl.inference.table import feature_frame, read_table
from knightctl.tracking.modelref import ModelReference, load_model, resolve_model


@dataclass(frozen=True)
class Predictions:
    """What `predict` did: the model, the rows, the answer columns and where they went (None: returned as text)."""

    reference: ModelReference
    why: str  # the card's account of which weights these are
    rows: int
    columns: tuple[str, ...]  # the answer columns: prediction, then probability_<class> for a classifier
    out: Path | None
    text: str | None  # the CSV, when no --out file was given
    counts: dict[str, int]  # a classifier's predictions per class


def predict(
    model: str, data: str | Path, *, out: str | Path | None = None, tracking_uri: str | None = None
) -> Predictions:
    """Answer every row of the CSV file `data` with the model `model` (a run or a model URI, see
    tracking/modelref.py); write the input's columns and the answers to `out`, or return them."""
    table = read_table(data)
    reference = resolve_model(model, tracking_uri)
    loaded = load_model(reference)
    frame = feature_frame(table, loaded.card)
    answers = loaded.pyfunc.predict(frame)
    answer_columns = tuple(str(column) for column in answers.columns)
    clashes = [column for column in answer_columns if column in table.columns]
    if clashes:
        raise DataError(f"{table.path}: its column(s) {', '.join(clashes)} would be overwritten by the answers")
    records = answers.to_dict(orient="list")
    buffer: Any = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*table.columns, *answer_columns])
    for index, row in enumerate(table.rows):
        writer.writerow(
            [*(row.get(column, "") for column in table.columns), *(_cell(records[c][index]) for c in answer_columns)]
        )
    text = buffer.getvalue()
    if out is not None:
        try:
            Path(out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise DataError(f"cannot write the predictions to {out}: {exc}") from None
    counts: dict[str, int] = {}
    if loaded.card["target"] != "real":
        for answer in records["prediction"]:
            counts[str(answer)] = counts.get(str(answer), 0) + 1
    return Predictions(
        reference,
        str(loaded.card.get("why", "")),
        len(table),
        answer_columns,
        Path(out) if out is not None else None,
        None if out is not None else text,
        counts,
    )


def _cell(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
