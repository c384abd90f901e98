"""A sweep's parent run as a reviewer finds it in MLflow: `knightctl sweep` in a real subprocess on a
real sqlite store, read back through MlflowClient.

Two trials of the chapter's model, lr 0.3 and 0.7, 28 full-batch epochs with an evaluation each:
lr=0.7 reaches the lower val/loss (at epoch 25) and then rises past lr=0.3's last value, so ranking
by the last value and by the best give different winners. One test, so that the sweep runs once
whichever xdist worker takes it.
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from processes import run_knightctl

from knightctl.tracking.provenance import git_commit

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETS = ["train.epochs=28", "train.eval_every_n_epochs=1", "train.log_every_n_steps=7", "tracking.log_model=false"]


@pytest.mark.slow
def test_the_parent_holds_the_space_the_spec_a_plot_and_the_trials_ranked_by_their_best_value(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [arg for item in SETS for arg in ("--set", item)]
    done = run_knightctl(
        "sweep",
        str(ROUND_TABLE),
        "--grid",
        "optimizer.lr=0.3,0.7",
        "--workers",
        "2",
        "--skip-gradcheck",
        "--device",
        "cpu",
        "--tracking-uri",
        uri,
        *sets,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("round_table")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.data.tags["mlflow.runName"]: run for run in runs if run is not parent}
    assert sorted(children) == ["lr=0.3", "lr=0.7"]
    assert parent.info.status == "FINISHED" and all(c.info.status == "FINISHED" for c in children.values())
    for child in children.values():  # each trial keeps its best step by the metric the sweep ranks by
        assert (child.data.params["train.monitor"], child.data.params["train.monitor_mode"]) == ("val/loss", "min")

    tags = parent.data.tags  # provenance as a training run has it, recorded without loading torch
    assert tags["mlflow.user"] and tags["mlflow.source.name"] == str(ROUND_TABLE)
    assert tags["torch.version"] == torch.__version__ and tags["mlflow.version"] == mlflow.__version__
    repository = git_commit(ROUND_TABLE.parent)
    assert tags.get("mlflow.source.git.commit") == (repository[0] if repository else None)

    params = parent.data.params
    assert {key: value for key, value in params.items() if key != "sweep.base_spec.digest"} == {
        "sweep.space.optimizer.lr": "[0.3, 0.7]",
        "sweep.sampler": "grid",
        "sweep.trials": "2",
        "sweep.metric": "val/loss",
        "sweep.goal": "min",
        "sweep.base_spec.name": "round_table",
        "sweep.base_spec.overrides": "\n".join(SETS),
        "sweep.study": params["sweep.study"],
        "sweep.storage": f"sqlite:///{tmp_path.resolve()}/optuna.db",  # in the working folder, beside mlflow.db
    }
    assert re.fullmatch(r"round_table-[0-9a-f]{12}", params["sweep.study"])
    assert re.fullmatch(r"[0-9a-f]{64}", params["sweep.base_spec.digest"])
    assert all(value.strip() and value != "None" for value in params.values())

    spec_text = Path(client.download_artifacts(parent.info.run_id, "spec/round_table.yaml", str(tmp_path))).read_text()
    assert spec_text == ROUND_TABLE.read_text()  # the spec as written, as a training run stores it
    resolved = Path(client.download_artifacts(parent.info.run_id, "spec/resolved.yaml", str(tmp_path))).read_text()
    assert "epochs: 28" in resolved  # with the --sets every trial shares
    plot = Path(client.download_artifacts(parent.info.run_id, "plots/sweep.png", str(tmp_path)))
    assert plot.read_bytes().startswith(PNG_MAGIC) and plot.stat().st_size > 10_000

    histories = {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/loss")]
        for name, run in children.items()
    }
    best = {name: min(value for _, value in history) for name, history in histories.items()}
    last = {name: max(history)[1] for name, history in histories.items()}
    assert min(best, key=best.__getitem__) == "lr=0.7" and min(last, key=last.__getitem__) == "lr=0.3", (
        f"the premise: lr=0.7 is best by its best value, lr=0.3 by its last; best {best}, last {last}"
    )
    winner = children["lr=0.7"]
    assert parent.data.tags["knightctl.best_run_id"] == winner.info.run_id
    assert parent.data.metrics == {"sweep/best_val_loss": best["lr=0.7"]}  # nothing under best/ any more
    best_step = min(step for step, value in histories["lr=0.7"] if value == best["lr=0.7"])

    note = parent.data.tags["mlflow.note.content"]
    first = note.splitlines()[0]
    assert first == (
        f"FINISHED: best val/loss {best['lr=0.7']:.4g} (trial lr=0.7, run {winner.info.run_id}) of 2 trials"
    )
    assert parent.data.tags["knightctl.outcome"] == first
    rows = [line for line in note.splitlines() if line.startswith("| ")][2:]
    for place, name in enumerate(["lr=0.7", "lr=0.3"], start=1):
        run_id = children[name].info.run_id
        link = f"[{run_id[:8]}](#/experiments/{experiment.experiment_id}/runs/{run_id})"
        assert rows[place - 1].startswith(f"| {place} | {name} | {name[3:]} | {best[name]:.6g} | ")
        assert rows[place - 1].endswith(f" | FINISHED | {link} |")
    assert f"| {best['lr=0.7']:.6g} | {best_step} | FINISHED |" in rows[0]  # the step of the best, not the last
    assert "not its last value; ties go to the earlier step" in note
