"""knightctl predict and evaluate on held-out rows of a CSV table: the logged model of a run that
standardised its features answers raw rows as the trained model does, and an evaluation is logged
as a run whose metrics are linked to the model; bad tables are refused naming the file, line and column."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
from conftest import best_model
from mlflow.tracking import MlflowClient
from processes import run_knightctl

from knightctl.checkpoint.files import load_checkpoint
from knightctl.errors import DataError, TrackingError
from knightctl.inference.evaluate import evaluate
from knightctl.inference.predict import predict
from knightctl.training.run import train

CLASSES = ("amber", "ruby", "straw")
FEATURES = ("acidity", "sugar_g_per_l", "proline_mg_per_l")  # scales of 1, 10 and 1000: standardise


def _rows(n: int, rng: random.Random) -> list[dict[str, str]]:
    rows = []
    for _ in range(n):
        label = rng.randrange(3)
        acidity, sugar, proline = 3 + label + rng.gauss(0, 0.4), 10 * (1 + label) + rng.gauss(0, 3), 600 + 300 * label
        values = (acidity, sugar, proline + rng.gauss(0, 60))
        rows.append(
            {**{name: f"{value:.3f}" for name, value in zip(FEATURES, values, strict=True)}, "colour": CLASSES[label]}
        )
    return rows


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*FEATURES, "colour"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, object]:
    folder = tmp_path_factory.mktemp("wines")
    rng = random.Random(5)
    _write(folder / "wines.csv", _rows(150, rng))
    _write(folder / "held_out.csv", _rows(30, rng))
    (folder / "wines.yaml").write_text(
        "name: wines\nseed: 2\n"
        "data: {name: csv, path: wines.csv, target: colour, standardize: true, split: {stratify: true}}\n"
        "model:\n  - {type: linear, in_features: 3, out_features: 8}\n  - relu\n"
        "  - {type: linear, in_features: 8, out_features: 3}\n"
        "loss: cross_entropy\noptimizer: {name: adam, lr: 0.05}\n"
        "train: {epochs: 40, batch_size: full}\n"
    )
    store = f"sqlite:///{folder / 'mlflow.db'}"
    result = train(folder / "wines.yaml", device="cpu", tracking_uri=store, checkpoint_dir=folder / "checkpoints")
    return folder, store, result


@pytest.mark.slow
def test_predict_writes_class_names_and_probabilities_as_the_trained_model_answers(trained) -> None:  # noqa: ANN001
    folder, store, result = trained
    out = folder / "answers.csv"
    done = run_knightctl(
        "predict", str(result.run_id)[:8], "held_out.csv", "--out", "answers.csv", "--tracking-uri", store, cwd=folder
    )
    assert done.returncode == 0, done.stderr
    assert f"predicted 30 rows to answers.csv with {result.model_uri} (the best val/loss" in done.stderr
    with out.open() as handle:
        answers = list(csv.DictReader(handle))
    assert list(answers[0]) == [*FEATURES, "colour", "prediction", *(f"probability_{name}" for name in CLASSES)]
    with (folder / "held_out.csv").open() as handle:
        raw = torch.tensor([[float(row[f]) for f in FEATURES] for row in csv.DictReader(handle)])
    # The trained model's own answer on the raw rows, standardised with the training split's statistics.
    (scaling,) = load_checkpoint(result.checkpoint)["preprocessing"]["steps"]
    mean, std = torch.tensor(scaling["mean"]), torch.tensor(scaling["std"])
    expected = best_model(result)((raw - mean) / std).softmax(dim=1)
    assert [row["prediction"] for row in answers] == [CLASSES[i] for i in expected.argmax(dim=1).tolist()]
    got = torch.tensor([[float(row[f"probability_{name}"]) for name in CLASSES] for row in answers])
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_evaluate_measures_the_task_and_logs_an_evaluation_linked_to_the_model(  # noqa: ANN001
    trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, store, result = trained
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", '{"knightctl.test.hall": "camelot"}')  # read by MLflow's own context
    predicted = predict(str(result.run_id), folder / "held_out.csv", tracking_uri=store)
    assert predicted.text is not None
    answers = list(csv.DictReader(predicted.text.splitlines()))
    accuracy = sum(row["prediction"] == row["colour"] for row in answers) / len(answers)

    evaluation = evaluate(result.model_uri, folder / "held_out.csv", tracking_uri=store)
    assert evaluation.target_column == "colour" and evaluation.rows == 30 and evaluation.loss is not None
    assert evaluation.report.values["val/accuracy"] == pytest.approx(accuracy)
    assert set(evaluation.report.per_class["f1"]) == set(CLASSES)
    assert sum(map(sum, evaluation.report.confusion)) == 30
    client = MlflowClient(store)
    run = client.get_run(evaluation.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "evaluate wines on held_out.csv"
    assert run.data.tags["knightctl.evaluates.run"] == result.run_id
    assert run.data.metrics["eval/accuracy"] == pytest.approx(accuracy)
    assert run.data.tags["knightctl.outcome"].startswith("Evaluated wines on 30 rows of held_out.csv: accuracy ")
    model = client.get_logged_model(result.model_uri.removeprefix("models:/"))
    linked = {m.key: m for m in model.metrics if m.run_id == evaluation.run_id}
    assert linked["eval/accuracy"].dataset_name == "held_out.csv" and "eval/loss" in linked
    assert "confusion_matrix.json" in {a.path for a in client.list_artifacts(evaluation.run_id)}
    (used,) = run.inputs.dataset_inputs  # the file, as an MLflow dataset in the evaluation's context
    assert used.dataset.name == "held_out.csv" and used.dataset.source_type == "local"
    assert used.dataset.digest == linked["eval/accuracy"].dataset_digest and used.tags[0].value == "evaluation"
    assert run.data.tags["knightctl.test.hall"] == "camelot" and run.data.tags["mlflow.user"]
    assert run.data.tags["mlflow.source.name"] == "knightctl evaluate held_out.csv"


@pytest.mark.slow
def test_bad_tables_are_refused_naming_the_file_line_and_column(trained) -> None:  # noqa: ANN001
    folder, store, result = trained
    held_out = (folder / "held_out.csv").read_text().splitlines()
    (folder / "no_sugar.csv").write_text(
        "\n".join(line.split(",", 2)[0] + "," + line.split(",", 2)[2] for line in held_out)
    )
    (folder / "words.csv").write_text("\n".join([held_out[0], "high," + held_out[1].split(",", 1)[1], *held_out[2:]]))
    (folder / "new_class.csv").write_text("\n".join([held_out[0], held_out[1].rsplit(",", 1)[0] + ",rose"]))
    with pytest.raises(DataError, match=r"no_sugar.csv: no column 'sugar_g_per_l', which the model takes as a feature"):
        predict(str(result.run_id), folder / "no_sugar.csv", tracking_uri=store)
    with pytest.raises(DataError, match=r"words.csv:2: column 'acidity' \(a feature\) holds 'high', not a number"):
        predict(str(result.run_id), folder / "words.csv", tracking_uri=store)
    with pytest.raises(DataError, match=r"new_class.csv:2: column 'colour' \(the target\) holds 'rose', not a class"):
        evaluate(str(result.run_id), folder / "new_class.csv", tracking_uri=store, log=False)
    with pytest.raises(TrackingError, match="no run 'no-such-run'"):
        predict("no-such-run", folder / "held_out.csv", tracking_uri=store)
