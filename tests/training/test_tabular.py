"""Real tables: a CSV's every column as features (`features: all`, `exclude`), the split (shuffled or not,
stratified), and `data.standardize` with the training rows' statistics, kept in checkpoints and
applied to raw rows by the logged model."""

from __future__ import annotations

import csv
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch

from knightctl.checkpoint.files import CheckpointFolder, load_checkpoint
from knightctl.errors import DataError, SpecError
from knightctl.plugins.loader import load as load_plugins
from knightctl.spec.model import load_spec
from knightctl.tracking.run import fluent_tracking_uri
from knightctl.training.build import build_components
from knightctl.training.data import TabularData, split_data
from knightctl.training.preprocessing import Preprocessing, Standardization, model_input
from knightctl.training.run import train
from tests.conftest import best_model

COLUMNS = ("alcohol", "magnesium", "proline")  # a wine-like table: features on very different scales
SHARES = {"barolo": 30, "grignolino": 18, "barbera": 12}  # rows per class


def write_wines(folder: Path, scale: float = 1.0) -> Path:
    """60 wines: three numeric columns whose scales differ by 1000x, a text column and the cultivar."""
    generator = torch.Generator().manual_seed(3)
    path = folder / "wines.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *COLUMNS, "cultivar"])
        row = 0
        for index, (cultivar, count) in enumerate(SHARES.items()):
            for _ in range(count):
                noise = torch.randn(3, generator=generator).tolist()
                values = [12.0 + index + noise[0], 100.0 + 10 * noise[1], scale * (500.0 + 300 * index + 90 * noise[2])]
                writer.writerow([f"w{row}", *(f"{v:.4f}" for v in values), cultivar])
                row += 1
    return path


def write_spec(folder: Path, data: str, *, epochs: int = 4, loss: str = "cross_entropy", outputs: int = 3) -> Path:
    spec = folder / "wines.yaml"
    spec.write_text(
        f"name: wines\nseed: 5\ndata: {{name: csv, path: wines.csv, target: cultivar, {data}}}\n"
        f"model: [{{type: linear, in_features: 3, out_features: 8}}, relu, "
        f"{{type: linear, in_features: 8, out_features: {outputs}}}]\n"
        f"loss: {loss}\noptimizer: {{name: adam, lr: 0.05}}\n"
        f"train: {{epochs: {epochs}, batch_size: 16, device: cpu}}\n"
    )
    return spec


def split_of(spec: Path, sets: tuple[str, ...] = ()):  # noqa: ANN201 - a Split
    return build_components(load_spec(spec, sets), load_plugins().registry, torch.device("cpu"), 5).data


def problem(spec: Path, *sets: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(spec, sets)
    assert len(caught.value.problems) == 1, caught.value.problems
    return caught.value.problems[0]


# --------------------------------------------------------------------------------------------
# features: all, exclude


def test_features_omitted_or_all_are_every_column_but_the_target_and_the_excluded(tmp_path: Path) -> None:
    write_wines(tmp_path)
    omitted = split_of(write_spec(tmp_path, "exclude: [id]"))
    assert omitted.feature_names == COLUMNS and omitted.class_names == ("barbera", "barolo", "grignolino")
    assert omitted.train_x.shape == (48, 3)
    spec = write_spec(tmp_path, "features: all, exclude: [id]")
    assert torch.equal(split_of(spec).train_x, omitted.train_x)
    assert load_spec(spec).data.options()["features"] == "all"  # the resolved spec says what was written
    # the static width check counts the columns too
    assert "in_features" in problem(spec, "data.exclude=[id, proline]")


def test_an_excluded_column_the_file_lacks_is_a_spec_error_naming_the_file_and_field(tmp_path: Path) -> None:
    write_wines(tmp_path)
    message = problem(write_spec(tmp_path, "exclude: [id, colour]"))
    assert "wines.yaml:3:" in message and "data.exclude: wines.csv has no column 'colour'" in message
    assert "its columns: id, alcohol, magnesium, proline, cultivar" in message
    listed = problem(write_spec(tmp_path, "features: [alcohol], exclude: [id]"))
    assert "data.exclude: leaves columns out of features: all; with a list of features" in listed


def test_a_text_column_under_features_all_is_named_with_the_fix(tmp_path: Path) -> None:
    write_wines(tmp_path)
    message = problem(write_spec(tmp_path, "features: all"))
    assert "features: all takes column 'id' of wines.csv, which holds 'w0' on line 2, not a number" in message
    assert "exclude: [id]" in message and "(got" not in message
    lines = (tmp_path / "wines.csv").read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[2], "n/a")  # past the first row: found when the data is read
    (tmp_path / "wines.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"wines\.csv:6: column 'magnesium' holds 'n/a', not a number") as caught:
        split_of(write_spec(tmp_path, "exclude: [id]"))
    assert "leave this one out with exclude" in str(caught.value)


# --------------------------------------------------------------------------------------------
# the split


def numbered(n: int, labels: list[int]) -> TabularData:
    """Rows whose one feature is their own index, so a split's rows can be named."""
    features = torch.arange(n, dtype=torch.float32).reshape(n, 1)
    return TabularData(features, torch.tensor(labels, dtype=torch.float32), ("row",), ("a", "b", "c"))


def split(data: TabularData, target: str = "class", **options):  # noqa: ANN003, ANN201
    return split_data(
        data, val_fraction=0.2, seed=11, target=target, dataset_name="t", device=torch.device("cpu"), **options
    )


def test_the_default_split_holds_out_the_same_rows_as_before_data_split_existed() -> None:
    data = numbered(50, [i % 3 for i in range(50)])
    order = torch.randperm(50, generator=torch.Generator().manual_seed(11))  # the split as it always was
    shuffled = split(data)
    assert shuffled.train_x.reshape(-1).tolist() == order[:40].float().tolist()
    assert shuffled.val_x.reshape(-1).tolist() == order[40:].float().tolist()
    kept = split(data, shuffle=False)  # the dataset's last rows, in its order
    assert kept.val_x.reshape(-1).tolist() == list(range(40, 50)) and kept.train_x.reshape(-1).tolist() == list(
        range(40)
    )


def test_a_stratified_split_keeps_each_classs_share_in_validation() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 10
    data = numbered(100, labels)
    for shuffle in (True, False):
        held = split(data, stratify=True, shuffle=shuffle)
        assert torch.bincount(held.val_y, minlength=3).tolist() == [12, 6, 2]
        assert torch.bincount(held.train_y, minlength=3).tolist() == [48, 24, 8]
        rows = sorted(held.train_x.reshape(-1).tolist() + held.val_x.reshape(-1).tolist())
        assert rows == list(map(float, range(100)))  # every row once
    assert split(data, stratify=True, shuffle=False).val_x.reshape(-1).tolist()[-2:] == [
        98.0,
        99.0,
    ]  # each class's last
    uneven = split(numbered(7, [0, 0, 0, 0, 1, 1, 2]), stratify=True)  # 1.4 rows held out: the largest remainder
    assert torch.bincount(uneven.val_y, minlength=3).tolist() == [1, 0, 0]
    assert torch.bincount(uneven.train_y, minlength=3).tolist() == [3, 2, 1]  # a class keeps its training rows


def test_stratifying_a_regression_is_refused(tmp_path: Path) -> None:
    write_wines(tmp_path)
    spec = write_spec(tmp_path, "features: [alcohol, magnesium, proline]")
    message = problem(spec, "data.split.stratify=true", "loss=mse", "model.2.out_features=1")
    assert (
        "data.split.stratify: stratify keeps each class's share" in message and "'mse' is a regression loss" in message
    )
    assert "data.val_fraction is 0" in problem(spec, "data.split={stratify: true}", "data.val_fraction=0")
    with pytest.raises(DataError, match="regression loss, whose targets have no classes"):  # a plugin's data too
        split(numbered(10, [0] * 10), stratify=True, target="real")


# --------------------------------------------------------------------------------------------
# standardisation


def test_standardize_uses_the_training_rows_statistics_only() -> None:
    n = 40
    features = torch.stack([torch.arange(n, dtype=torch.float32), torch.full((n,), 7.0)], dim=1)  # row, constant
    data = TabularData(features, torch.tensor([i % 2 for i in range(n)], dtype=torch.float32), ("row", "flat"))
    held = split_data(
        data, val_fraction=0.25, seed=2, target="binary", dataset_name="t", device=torch.device("cpu"), standardize=True
    )
    scaling = held.standardization
    assert scaling is not None and held.preprocessing.standardization == scaling
    train_rows = scaling.raw(held.train_x)[:, 0].round()  # each row's index, back in the dataset's units
    assert scaling.mean[0] == pytest.approx(train_rows.double().mean().item())
    assert scaling.std[0] == pytest.approx(train_rows.double().std(correction=0).item())
    assert scaling.mean[0] != pytest.approx((n - 1) / 2)  # the validation rows did not count
    assert held.train_x[:, 0].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert held.train_x[:, 0].std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    assert scaling.std[1] == 1.0 and torch.all(held.train_x[:, 1] == 0) and torch.all(held.val_x[:, 1] == 0)
    unscaled = split_data(
        data, val_fraction=0.25, seed=2, target="binary", dataset_name="t", device=torch.device("cpu")
    )
    assert unscaled.standardization is None and torch.equal(scaling.raw(held.val_x).round(), unscaled.val_x)


def test_model_input_turns_raw_rows_into_exactly_what_training_saw(tmp_path: Path) -> None:
    write_wines(tmp_path)
    held = split_of(write_spec(tmp_path, "exclude: [id], standardize: true"))
    table = pd.read_csv(tmp_path / "wines.csv")
    record = held.preprocessing.record()
    rows = model_input(table, Preprocessing.from_record(record))  # every row, in the file's order
    standardized = torch.tensor(rows)
    train_and_val = torch.cat([held.train_x, held.val_x])
    matches = (standardized[:, None, :] == train_and_val[None, :, :]).all(dim=2)
    assert bool(matches.any(dim=0).all())  # bit for bit, each row the model trained or validated on
    assert torch.equal(torch.tensor(model_input(table, record)), standardized)  # a record works as well
    with pytest.raises(DataError, match="the input lacks the column.s. proline"):
        model_input(table.drop(columns=["proline"]), record)
    with pytest.raises(DataError, match="column 'alcohol' holds 'dry' in row 2 of the input, not a number"):
        model_input(table.astype({"alcohol": object}).assign(alcohol=["12.1", "dry"] + ["12"] * 58), record)


def test_standardisation_travels_in_checkpoints_and_a_resumed_run_keeps_it(tmp_path: Path) -> None:
    write_wines(tmp_path)
    spec = write_spec(tmp_path, "exclude: [id], standardize: true", epochs=4)
    first = train(spec, track=False, skip_gradcheck=True, checkpoint_dir=tmp_path / "ckpt", stop_at_step=6)
    state = load_checkpoint(first.checkpoint)
    fitted = split_of(spec).standardization
    assert state["preprocessing"] == {
        "feature_names": list(COLUMNS),
        "steps": [{"kind": "standardize", "mean": list(fitted.mean), "std": list(fitted.std)}],
    }
    write_wines(tmp_path, scale=10.0)  # the file changed under the run: refitting would give other numbers
    assert split_of(spec).standardization != fitted
    resumed = train(resume=first.checkpoint.parent, track=False, skip_gradcheck=True)
    final = load_checkpoint(CheckpointFolder(resumed.checkpoint.parent).latest())
    assert final["step"] == 12 and final["preprocessing"] == state["preprocessing"]
    assert Standardization(tuple(fitted.mean), tuple(fitted.std)) == fitted


@pytest.mark.slow  # a tracked run that logs its model, loaded back through MLflow
def test_the_logged_model_standardises_raw_rows_as_training_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_wines(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = write_spec(tmp_path, "exclude: [id], standardize: true, split: {stratify: true}", epochs=30)
    result = train(spec, tracking_uri=uri, skip_gradcheck=True, checkpoint_dir=tmp_path / "ckpt")
    restore = fluent_tracking_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(result.model_uri)
    finally:
        restore()
    card = loaded.unwrap_python_model().card
    assert card["feature_names"] == list(COLUMNS) and card["class_names"] == ["barbera", "barolo", "grignolino"]
    (step,) = card["preprocessing"]
    assert step["kind"] == "standardize" and step["mean"][2] > 500  # proline, in the file's units
    raw = pd.read_csv(tmp_path / "wines.csv").sample(12, random_state=0)
    answers = loaded.predict(raw)
    scaled = (torch.tensor(raw[list(COLUMNS)].to_numpy(), dtype=torch.float32) - torch.tensor(step["mean"])) / (
        torch.tensor(step["std"])
    )
    with torch.no_grad():
        probabilities = torch.softmax(best_model(result)(scaled), dim=1)
        unscaled = torch.softmax(
            best_model(result)(torch.tensor(raw[list(COLUMNS)].to_numpy(), dtype=torch.float32)), 1
        )
    for index, name in enumerate(card["class_names"]):
        assert answers[f"probability_{name}"].tolist() == pytest.approx(probabilities[:, index].tolist(), abs=1e-6)
    assert not torch.allclose(probabilities, unscaled, atol=1e-3)  # raw rows straight into the module differ
    assert (answers["prediction"].to_numpy() == raw["cultivar"].to_numpy()).mean() >= 0.9
