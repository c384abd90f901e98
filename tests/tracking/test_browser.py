"""`knightctl ui` in a real browser: what a reviewer sees of two trained runs, one FINISHED and one FAILED.

The other tracking tests read the store back through MlflowClient; this one checks that MLflow's
own UI (a React app, its routes and tabs changing between MLflow releases) shows what knightctl
logged: the runs table with each run's outcome, a run's page, its Models tab and its artifacts.
What each page should show comes from MlflowClient, not from strings written here, so the test
says whether the UI shows the store, not what the store holds (the other tests say that).

Headless Chromium from Debian's chromium and chromium-driver, driven by selenium; where either is
missing the module is skipped with the reason (.ci/run installs them where apt can). Screenshots of
each page land in the test's folder, and in $KNIGHTCTL_SCREENSHOTS when it names one.
"""

from __future__ import annotations

import re
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import Pages, headless_chromium, unavailable
from mlflow.entities import LoggedModel, Run
from mlflow.tracking import MlflowClient
from ports import free_port
from processes import answers, start_knightctl, wait_until

if (reason := unavailable()) is not None:
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
DIVERGE = "optimizer.lr=1e30"  # Adam moves each weight by about lr a step: the loss overflows float32, FAILED
# The UI's classic view (runs, models, the model registry); without it MLflow 3 may open on its GenAI view.
CLASSIC = "workflowType=machine_learning"
ENV = {"MLFLOW_TRACKING_URI": None, "NO_COLOR": "1"}  # the store is --tracking-uri's alone


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    experiment_id: str
    finished: Run
    failed: Run
    models: list[LoggedModel]


def start_training(uri: str, folder: Path, *overrides: str) -> subprocess.Popen[str]:
    """`knightctl train round_table.yaml` into `uri`, on the CPU (the same steps everywhere), in `folder`."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    return start_knightctl(
        "train", str(ROUND_TABLE), "--tracking-uri", uri, "--device", "cpu", *sets, cwd=folder, env=ENV
    )


def wait_for(training: subprocess.Popen[str], code: int) -> None:
    """Wait for a training started by start_training to end; fail unless it exited with `code`."""
    stdout, stderr = training.communicate(timeout=300)
    assert training.returncode == code, stdout + stderr


class KnightctlUI:
    """`knightctl ui` on a store, on a free port of 127.0.0.1, its output in folder/ui.log; started on entry,
    stopped on exit with SIGTERM (knightctl then stops MLflow's whole process tree), SIGKILL after 20 s."""

    def __init__(self, uri: str, folder: Path) -> None:
        port = free_port()
        self.base, self.folder, self.log = f"http://127.0.0.1:{port}", folder, folder / "ui.log"
        self.args = ("ui", "--port", str(port), "--tracking-uri", uri)

    def __enter__(self) -> KnightctlUI:
        with self.log.open("w") as output:  # a file, not a pipe: nobody reads the request log as it runs
            self.process = start_knightctl(*self.args, cwd=self.folder, env=ENV, stdout=output, stderr=output)
        return self

    def wait_until_up(self) -> None:
        wait_until(lambda: answers(f"{self.base}/health"), 60, what="the UI", process=self.process, explain=self.output)

    def output(self) -> str:
        return self.log.read_text()

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def read_store(uri: str) -> Store:
    """The runs and logged models as MlflowClient reads them: what the UI should show."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("round_table")
    assert experiment is not None
    runs = {run.info.status: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["FAILED", "FINISHED"], sorted(runs)
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [model.source_run_id for model in models] == [runs["FINISHED"].info.run_id]  # FAILED logs no model
    return Store(client, experiment.experiment_id, runs["FINISHED"], runs["FAILED"], models)


def outcome(run: Run) -> str:
    """The first line of the run's description: its status, its steps and why it ended."""
    return run.data.tags["mlflow.note.content"].splitlines()[0]


def close_assistant(driver: Any) -> None:
    """Close MLflow's assistant panel where this MLflow has one: it opens by itself on a first visit and takes a
    quarter of the window, which the runs table's last columns need."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(
        By.CSS_SELECTOR, "button[data-component-id='mlflow.assistant.chat_panel.close']"
    ):
        button.click()


def click_text(driver: Any, text: str, within: str = "") -> None:
    """Click the element whose own text is `text` (a toggle, a menu entry), inside the elements the XPath
    `within` selects (default: anywhere), once it can be clicked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    where = (By.XPATH, f"{within}//*[normalize-space(text())='{text}']")
    WebDriverWait(driver, 30).until(expected_conditions.element_to_be_clickable(where)).click()


def row_text(driver: Any, row_id: str) -> str:
    """The text of one row of a runs or models table, its pinned and scrolled halves together (the grid
    renders them as separate rows with the same row-id: the run's or model's id)."""
    from selenium.webdriver.common.by import By

    return "\n".join(part.text for part in driver.find_elements(By.CSS_SELECTOR, f"[row-id='{row_id}']"))


def check_runs_table(pages: Pages, link: str, store: Store) -> None:
    """The link `knightctl ui` prints leads to the runs; as its hint says, "Model training" shows the classic
    view; with the Description column on, each run's row shows its own outcome."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    runs = (store.finished, store.failed)
    pages.open(link, "runs-first-view", "Model training", *(run.info.run_name for run in runs))
    close_assistant(pages.driver)
    click_text(pages.driver, "Model training")
    pages.wait_for("runs", "Model registry", "Columns")  # the classic sidebar: Runs, Models, Model registry
    pages.driver.find_element(By.CSS_SELECTOR, "[data-testid=column-selection-dropdown]").click()
    click_text(pages.driver, "Description", within="//*[@role='dialog']")  # the column chooser's entry
    pages.driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    # The cell cuts the description at about 50 characters: the outcome up to its colon always fits.
    headlines = {run.info.run_id: outcome(run).split(":")[0] for run in runs}
    assert headlines[store.finished.info.run_id].startswith("FINISHED after ")
    assert headlines[store.failed.info.run_id].startswith("FAILED after ")
    pages.wait_for("runs-with-descriptions", *headlines.values())
    for run in runs:
        row = row_text(pages.driver, run.info.run_id)
        assert run.info.run_name in row and headlines[run.info.run_id] in row, row


def check_run_page(pages: Pages, base: str, store: Store, run: Run, status: str) -> None:
    """A run's page: its outcome line (the description's first), its status, and a param with its value."""
    url = f"{base}/#/experiments/{store.experiment_id}/runs/{run.info.run_id}?{CLASSIC}"
    lr = f"optimizer.lr\n{run.data.params['optimizer.lr']}"  # name and value, in the table's order
    pages.open(url, f"run-{status.lower()}", "Description", outcome(run), status, "Parameters", lr)


def check_models_tab(pages: Pages, base: str, store: Store) -> None:
    """The experiment's Models tab lists each logged model, linked to its own page and to the run it came from;
    the model's page shows its metrics and its source run."""
    url = f"{base}/#/experiments/{store.experiment_id}/models?{CLASSIC}"
    pages.open(url, "models", "Model name", "Source run", *(model.name for model in store.models))
    experiment = f"{base}/#/experiments/{store.experiment_id}"
    links = {}
    for model in store.models:
        row = row_text(pages.driver, model.model_id)
        assert model.name in row and "Ready" in row, row
        links[f"{experiment}/models/{model.model_id}"] = model.name
        links[f"{experiment}/runs/{model.source_run_id}"] = store.client.get_run(model.source_run_id).info.run_name
    pages.wait_for_links("models-linked", links)  # the source run shows as its id until the run's name is fetched
    model = store.models[0]
    metrics = [metric.key for metric in model.metrics or []]
    assert "val/loss" in metrics, metrics  # the model is the run's best val/loss: it carries that step's metrics
    url = f"{base}/#/experiments/{store.experiment_id}/models/{model.model_id}?{CLASSIC}"
    pages.open(url, "model", model.name, model.model_id, model.source_run_id, *metrics)


def png_width(path: Path) -> int:
    """A PNG's width in pixels, from its IHDR chunk (right after the 8-byte signature)."""
    return struct.unpack(">I", path.read_bytes()[16:20])[0]


def check_artifacts_tab(pages: Pages, base: str, store: Store, folder: Path) -> None:
    """The Artifacts tab lists the run's folders, opens the plots and previews one, at its real size."""
    run_id = store.finished.info.run_id
    top = [artifact.path for artifact in store.client.list_artifacts(run_id)]
    assert {"checkpoints", "plots", "spec"} <= set(top), top
    plots = [artifact.path for artifact in store.client.list_artifacts(run_id, "plots")]
    png = next(path for path in plots if path.endswith(".png"))
    url = f"{base}/#/experiments/{store.experiment_id}/runs/{run_id}/artifacts/{png}?{CLASSIC}"
    pages.open(url, "artifacts", "Artifacts", *top, *(Path(path).name for path in plots), png)
    folder.mkdir(exist_ok=True)
    width = png_width(Path(store.client.download_artifacts(run_id, png, str(folder))))
    widths = "return Array.from(document.images, image => image.naturalWidth)"  # 0 until an image has loaded
    preview = f"a preview of {png}, {width} px wide"
    pages.wait_until(
        "artifacts-preview", lambda: [] if width in pages.driver.execute_script(widths) else [preview], "not loaded"
    )


def browse(ui: KnightctlUI, store: Store, folder: Path) -> None:
    """Each page in turn, from the link `knightctl ui` printed for the experiment."""
    printed = re.search(r"^  round_table: (\S+)$", ui.output(), flags=re.M)
    assert printed and printed[1] == f"{ui.base}/#/experiments/{store.experiment_id}/runs", ui.output()
    with headless_chromium() as driver:
        pages = Pages(driver, folder / "screenshots")
        check_runs_table(pages, printed[1], store)
        check_run_page(pages, ui.base, store, store.finished, "Finished")
        check_run_page(pages, ui.base, store, store.failed, "Failed")
        check_models_tab(pages, ui.base, store)
        check_artifacts_tab(pages, ui.base, store, folder / "downloads")


def test_knightctl_ui_shows_each_runs_outcome_params_model_and_artifacts(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Both at once (knightctl's lock on a new sqlite store puts their creating it one after the other); the
    # failed run ends within seconds, and from then on the store is whole and the UI can start on it.
    finished, failed = start_training(uri, tmp_path), start_training(uri, tmp_path, DIVERGE)
    try:
        wait_for(failed, code=1)
        with KnightctlUI(uri, tmp_path) as ui:
            wait_for(finished, code=0)
            ui.wait_until_up()
            store = read_store(uri)
            browse(ui, store, tmp_path)
    finally:
        for training in (finished, failed):
            if training.poll() is None:  # a check above failed while it trained
                training.kill()
                training.wait()
