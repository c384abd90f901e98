"""knightctl.train with tracking from wherever Python runs: a script without a main guard, standard
input, `python -c` and a Jupyter kernel, each in a real process; and a metric writer that cannot
start fails the call before any MLflow run exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from processes import environment

import knightctl
from knightctl.errors import TrackingError

ROUND_TABLE = Path(__file__).resolve().parents[2] / "experiments" / "round_table.yaml"

# No `if __name__ == "__main__":` guard, on purpose: the body must run once, in this process only.
SCRIPT = f"""\
import knightctl
print("body ran")
result = knightctl.train(
    {str(ROUND_TABLE)!r},
    overrides=["train.epochs=20", "tracking.log_model=false"],
    device="cpu",
    tracking_uri="sqlite:///mlflow.db",
)
print("run", result.run_id)
"""


def _finished_run(folder: Path, stdout: str) -> None:
    """The process printed its body once and left one FINISHED run with its metrics in `folder`."""
    assert stdout.count("body ran") == 1, stdout
    (run_id,) = [line.split()[1] for line in stdout.splitlines() if line.startswith("run ")]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("round_table").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")][-1] == 20
    assert "system/cpu_utilization_percentage" in run.data.metrics  # written by the helper process


# Runs SCRIPT as the one cell of a notebook in a Jupyter (IPython) kernel, and prints the cell's
# output; an error in the cell exits 1 with its traceback.
NOTEBOOK = f"""\
import nbclient, nbformat
notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell({SCRIPT!r})])
run = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={{"metadata": {{"path": "."}}}})
run.execute()
for output in notebook.cells[0].outputs:
    print(output.get("text", ""), end="")
"""


@pytest.mark.slow
def test_train_tracks_from_a_script_without_a_main_guard_from_stdin_from_python_c_and_from_jupyter(
    tmp_path: Path,
) -> None:
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    commands = {
        "script": ([sys.executable, "train_it.py"], None),
        "stdin": ([sys.executable, "-"], SCRIPT),
        "dash-c": ([sys.executable, "-c", SCRIPT], None),
        "jupyter": ([sys.executable, "-c", NOTEBOOK], None),
    }
    folders = {way: tmp_path / way for way in commands}
    for folder in folders.values():
        folder.mkdir()
    (folders["script"] / "train_it.py").write_text(SCRIPT)
    started = {
        way: (
            subprocess.Popen(
                argv,
                cwd=folders[way],
                env=environment({"MLFLOW_TRACKING_URI": None}),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
            given,
        )
        for way, (argv, given) in commands.items()
    }  # all at once: each spends most of its time importing torch and MLflow
    for way, (process, given) in started.items():
        stdout, stderr = process.communicate(given or "", timeout=300)
        assert process.returncode == 0, f"{way}: {stderr}"
        _finished_run(folders[way], stdout)


@pytest.mark.parametrize("python", ["/bin/false", "/nonexistent/python3"])
def test_a_metric_writer_that_cannot_start_fails_before_any_run_exists(
    python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sys.executable is what the writer process is started with: an embedded interpreter or a
    # deleted environment leaves it naming something that is not (or no longer) a Python.
    monkeypatch.setattr(sys, "executable", python)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(TrackingError, match="cannot start the process that writes metrics to MLflow"):
        knightctl.train(ROUND_TABLE, overrides=["train.epochs=2"], device="cpu", tracking_uri=store)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("round_table")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
