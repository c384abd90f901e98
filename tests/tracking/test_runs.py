"""`knightctl runs`, `runs compare` and `ui` on a real sqlite MLflow store: runs made with MlflowClient, one trained
by knightctl."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ports import free_port
from processes import start_knightctl, wait_until
from rich.console import Console

from knightctl.cli.commands import main
from knightctl.console.runs import duration, render_runs, significant
from knightctl.errors import TrackingError
from knightctl.tracking.runlist import compare_runs, list_runs

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
DAY_MS = 86_400_000
# The process's environment as the CLI sees it: 80 columns, and MLflow's HTTP settings given, so
# that `runs` (which sets them for its own process when absent) changes nothing here.
CLI_ENV = {
    "COLUMNS": "80",
    "NO_COLOR": None,
    "MLFLOW_TRACKING_URI": None,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


@dataclass(frozen=True)
class Store:
    folder: Path
    uri: str
    ids: dict[str, str]  # "experiment/run name" -> run id


def _add_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    start_ms: int,
    status: str,
    seconds: float | None = None,
    *,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    run_id = client.create_run(experiment_id, start_time=start_ms, run_name=name).info.run_id
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in (params or {}).items()],
        metrics=[Metric(k, v, start_ms, 0) for k, v in (metrics or {}).items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    if status != "RUNNING":
        client.set_terminated(run_id, status=status, end_time=start_ms + int((seconds or 0) * 1000))
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Seven runs, newest first: round_table (trained by knightctl), grail/lancelot, percival (RUNNING),
    mordred (KILLED), galahad (FAILED), knights/lancelot, and a decoy named after a prefix of galahad's id."""
    from knightctl.training.run import train

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # MLflow puts artifacts in ./mlruns
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = train(str(ROUND_TABLE), overrides=["train.epochs=3"], tracking_uri=uri)
        client = MlflowClient(uri)
        knights, grail = client.create_experiment("knights"), client.create_experiment("grail")
        day_ago = int(time.time() * 1000) - DAY_MS
        common = {"train.epochs": "300", "seed": "1"}
        ids = {"round_table/round_table epochs=3": trained.info.run_id}
        ids["knights/lancelot"] = _add_run(
            client,
            knights,
            "lancelot",
            day_ago + 1000,
            "FINISHED",
            12.3,
            params={**common, "optimizer.lr": "0.1"},
            metrics={"val/accuracy": 0.912345, "val/loss": 0.2, "train/loss": 0.15},
            tags={"device": "cpu", "gradcheck.verdict": "passed"},
        )
        ids["knights/galahad"] = _add_run(
            client,
            knights,
            "galahad",
            day_ago + 2000,
            "FAILED",
            245,
            params={**common, "optimizer.lr": "0.05", "optimizer.momentum": "0.9"},
            metrics={"val/loss": 1234.5678},
            tags={"device": "cuda:0", "gradcheck.verdict": "failed"},
        )
        ids["knights/mordred"] = _add_run(
            client, knights, "mordred", day_ago + 3000, "KILLED", 7500, tags={"device": "mps"}
        )
        ids["knights/percival"] = _add_run(client, knights, "percival", day_ago + 4000, "RUNNING")
        ids["grail/lancelot"] = _add_run(client, grail, "lancelot", day_ago + 5000, "FINISHED", 1.0)
        ids["grail/decoy"] = _add_run(client, grail, ids["knights/galahad"][:6], day_ago - 10_000, "FINISHED", 1.0)
    yield Store(folder, uri, ids)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=CLI_ENV)


def _failed_cleanly(result: Result, code: int = 1) -> str:
    """The output of a command that failed with `code` and an error message, never a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "error:" in result.output and "Traceback" not in result.output
    return result.output


def test_runs_come_newest_first_across_experiments_with_limit_and_filter(store: Store) -> None:
    everything = list_runs(store.uri)
    assert [f"{run.experiment}/{run.run_name}" for run in everything[:6]] == [
        "round_table/round_table epochs=3",
        "grail/lancelot",
        "knights/percival",
        "knights/mordred",
        "knights/galahad",
        "knights/lancelot",
    ]
    assert len(everything) == 7 and everything[-1].run_id == store.ids["grail/decoy"]
    assert [run.run_name for run in list_runs(store.uri, limit=2)] == ["round_table epochs=3", "lancelot"]
    knights = list_runs(store.uri, experiment="knights")
    assert [run.run_name for run in knights] == ["percival", "mordred", "galahad", "lancelot"]
    with pytest.raises(TrackingError, match="no experiment named 'excalibur'"):
        list_runs(store.uri, experiment="excalibur")


def test_summaries_carry_status_device_metrics_verdict_and_duration(store: Store) -> None:
    runs = {f"{run.experiment}/{run.run_name}": run for run in list_runs(store.uri)}
    trained = runs["round_table/round_table epochs=3"]  # the tags and metrics knightctl really logs
    # the pre-flight checks the chapter's model itself (under 10k parameters), so there is a verdict
    assert (trained.status, trained.device, trained.gradcheck_verdict) == ("FINISHED", "cpu", "passed")
    assert set(trained.metrics) == {"val/accuracy", "val/loss", "train/loss"}
    assert trained.duration_s is not None and 0 < trained.duration_s < 600
    galahad = runs["knights/galahad"]
    assert (galahad.status, galahad.device, galahad.gradcheck_verdict, galahad.duration_s) == (
        "FAILED",
        "cuda:0",
        "failed",
        245.0,
    )
    assert galahad.metrics == {"val/loss": 1234.5678}
    assert runs["knights/mordred"].status == "KILLED" and runs["knights/mordred"].metrics == {}
    assert runs["knights/percival"].status == "RUNNING" and runs["knights/percival"].duration_s is None


def test_the_runs_table_reads_at_80_columns_with_dashes_for_what_is_absent(store: Store, runner: CliRunner) -> None:
    result = runner.invoke(main, ["runs", "--tracking-uri", store.uri])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\x1b[" not in result.output  # not a terminal: no colour, no bold
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line and line.split()[0] in ("galahad", "mordred", "percival")
    }
    assert rows["galahad"] == ["FAILED", "cuda:0", "-", "1235", "-", "failed", "4", "min", "05", "s"]
    assert rows["mordred"] == ["KILLED", "mps", "-", "-", "-", "-", "2", "h", "05", "min"]
    assert rows["percival"] == ["RUNNING"] + ["-"] * 6
    assert re.search(
        r"^lancelot +FINISHED +cpu +0\.9123 +0\.2000 +0\.1500 +passed +12\.3 s$", result.output, flags=re.M
    )
    assert store.ids["knights/galahad"][:8] in result.output  # the id, under the name


def test_runs_json_parses_and_the_default_store_is_the_one_here(
    store: Store, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(store.folder)  # sqlite:///mlflow.db, relative to the working directory
    result = runner.invoke(main, ["runs", "--experiment", "knights", "--limit", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [row["run_name"] for row in data] == ["percival", "mordred"]
    assert data[0]["duration_s"] is None and data[1]["device"] == "mps" and data[1]["gradcheck_verdict"] is None
    assert data[0]["start_time"].endswith("+00:00")


def test_compare_shows_only_differing_params_and_both_metric_columns(store: Store, runner: CliRunner) -> None:
    lancelot = store.ids["knights/lancelot"]
    result = runner.invoke(main, ["runs", "--tracking-uri", store.uri, "compare", lancelot[:8], "galahad"])
    assert result.exit_code == 0, result.output
    assert f"A  lancelot: {lancelot}" in result.output and "B  galahad: " in result.output
    assert "params: 2 differ, 2 identical" in result.output
    assert re.search(r"^optimizer\.lr +0\.1 +0\.05 *$", result.output, flags=re.M)
    assert re.search(r"^optimizer\.momentum +- +0\.9 *$", result.output, flags=re.M)
    assert "train.epochs" not in result.output and "seed" not in result.output
    assert re.search(r"^val/accuracy +0\.9123 +-$", result.output, flags=re.M)
    assert re.search(r"^val/loss +0\.2000 +1235$", result.output, flags=re.M)


def test_compare_json_by_full_id_and_name(store: Store, runner: CliRunner) -> None:
    trained = store.ids["round_table/round_table epochs=3"]
    result = runner.invoke(main, ["runs", "compare", trained, "percival", "--tracking-uri", store.uri, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["run_a"]["run_id"] == trained and data["run_b"]["status"] == "RUNNING"
    assert (
        data["identical_params"] == 0
        and {"key": "train.epochs", "value_a": "3", "value_b": None} in data["differing_params"]
    )
    keys = [pair["key"] for pair in data["metrics"]]
    assert keys == sorted(keys) and "val/accuracy" in keys
    assert all(pair["value_b"] is None for pair in data["metrics"])


def test_library_comparison_by_prefix(store: Store) -> None:
    comparison = compare_runs(store.uri, store.ids["knights/galahad"][:12], store.ids["knights/lancelot"][:4])
    assert [(d.key, d.value_a, d.value_b) for d in comparison.differing_params] == [
        ("optimizer.lr", "0.05", "0.1"),
        ("optimizer.momentum", "0.9", None),
    ]
    assert [pair.key for pair in comparison.metrics] == ["train/loss", "val/accuracy", "val/loss"]


@pytest.mark.parametrize("reference", ["lancelot", "decoy"])
def test_an_ambiguous_reference_names_every_candidate(store: Store, runner: CliRunner, reference: str) -> None:
    if reference == "lancelot":  # a name two runs share
        reference, candidates = "lancelot", [store.ids["knights/lancelot"], store.ids["grail/lancelot"]]
    else:  # a run named like the start of another run's id
        reference, candidates = (
            store.ids["knights/galahad"][:6],
            [store.ids["knights/galahad"], store.ids["grail/decoy"]],
        )
    output = _failed_cleanly(
        runner.invoke(main, ["runs", "compare", reference, "percival", "--tracking-uri", store.uri])
    )
    assert f"'{reference}' is ambiguous" in output
    assert all(candidate in output for candidate in candidates)


@pytest.mark.parametrize("reference", ["excalibur", "abc"])  # "abc": too short to be an id prefix
def test_an_unknown_reference_names_the_store(store: Store, runner: CliRunner, reference: str) -> None:
    if reference == "abc":
        reference = store.ids["knights/mordred"][:3]
    output = _failed_cleanly(
        runner.invoke(main, ["runs", "compare", "percival", reference, "--tracking-uri", store.uri])
    )
    assert f"no run '{reference}' in {store.uri}" in output


@pytest.mark.parametrize("args", [["runs"], ["runs", "compare", "a", "b"], ["ui"]])
def test_a_missing_store_is_an_error_that_creates_nothing(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    output = _failed_cleanly(runner.invoke(main, args))
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in output.replace("\n", "")
    assert "knightctl train SPEC" in output
    assert list(tmp_path.iterdir()) == []


def test_formats_and_status_colours() -> None:
    assert [significant(v) for v in (0.6349999, 1234.5678, 0.000012345, 12345.6, 0.2, None)] == [
        "0.6350",
        "1235",
        "1.234e-05",
        "1.235e+04",
        "0.2000",
        "-",
    ]
    assert [duration(s) for s in (12.34, 59.96, 245, 7500, None)] == [
        "12.3 s",
        "1 min 00 s",
        "4 min 05 s",
        "2 h 05 min",
        "-",
    ]
    from knightctl.tracking.runlist import RunSummary

    failed = RunSummary("f" * 32, "galahad", "knights", "FAILED", "cpu", {}, None, None, 1.0)
    colour = Console(force_terminal=True, color_system="standard", width=80, record=True)
    render_runs(colour, [failed])
    assert "\x1b[31mFAILED" in colour.export_text(styles=True)
    no_color = Console(force_terminal=True, color_system="standard", width=80, record=True, no_color=True)
    render_runs(no_color, [failed])
    assert "\x1b[" not in no_color.export_text(styles=True)


def test_runs_never_imports_torch_and_help_imports_neither_torch_nor_mlflow(store: Store) -> None:
    script = (
        "import json, sys\nfrom knightctl.cli import main\n"
        "def call(args):\n    try:\n        main(args)\n"
        "    except SystemExit as done:\n        assert not done.code, (args, done.code)\n"
        "for args in (['--help'], ['runs', '--help'], ['ui', '--help']):\n    call(args)\n"
        "after_help = sorted(m for m in ('torch', 'mlflow') if m in sys.modules)\n"
        f"call(['runs', '--tracking-uri', {store.uri!r}, '--limit', '3'])\n"
        f"call(['runs', '--tracking-uri', {store.uri!r}, 'compare', 'galahad', 'percival'])\n"
        "print(json.dumps({'after_help': after_help, "
        "'torch': 'torch' in sys.modules, 'mlflow': 'mlflow' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=store.folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"after_help": [], "torch": False, "mlflow": True}


def _get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except OSError:  # not listening yet (or any more)
        return None


def _group_alive(group: int) -> bool:
    """Whether any process of process group `group` is still running (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or os.name != "posix",
    reason="finds the server's processes through Linux's /proc",
)
def test_ui_serves_the_store_and_its_artifacts_and_stops_on_ctrl_c(store: Store, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = (tmp_path / "stdout.txt").open("w+"), (tmp_path / "stderr.txt").open("w+")
    ui = start_knightctl(
        "ui",
        "--port",
        str(port),
        "--tracking-uri",
        store.uri,
        cwd=tmp_path,
        stdout=logs[0],
        stderr=logs[1],
        env={"NO_COLOR": "1"},
        preexec_fn=lambda: signal.signal(
            signal.SIGINT, signal.SIG_DFL
        ),  # a shell may start background jobs ignoring SIGINT
    )
    try:
        wait_until(
            lambda: _get(f"{base}/") is not None,
            60,
            process=ui,
            explain=(tmp_path / "stderr.txt").read_text,
            interval_s=0.5,
        )
        found = json.loads(_get(f"{base}/api/2.0/mlflow/experiments/search?max_results=10") or b"{}")
        assert {"round_table", "knights", "grail"} <= {e["name"] for e in found["experiments"]}
        trained = store.ids["round_table/round_table epochs=3"]
        spec = _get(f"{base}/get-artifact?path=spec/resolved.yaml&run_uuid={trained}") or b""
        assert spec.startswith(b"name: round_table")  # artifacts knightctl logged are served
        (server,) = (int(pid) for pid in Path(f"/proc/{ui.pid}/task/{ui.pid}/children").read_text().split())
        ui.send_signal(signal.SIGINT)
        code = ui.wait(timeout=15)
    finally:
        if ui.poll() is None:
            ui.kill()
    assert code == 130
    assert not _group_alive(server)  # mlflow ui, uvicorn and its workers: all gone
    assert _get(f"{base}/") is None
    errors = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in errors and f"at {base}/" in errors
    experiment_ids = {e["name"]: e["experiment_id"] for e in found["experiments"]}
    assert f"  round_table: {base}/#/experiments/{experiment_ids['round_table']}/runs" in errors  # where to go
    assert 'choose "Model training"' in errors
    assert list(tmp_path.glob("ml*")) == []  # nothing written beside the server (the store is elsewhere)


def test_the_training_api_imports_mlflow_only_when_a_run_is_tracked() -> None:
    """Importing `knightctl.train`'s module (all an untracked run needs) leaves MLflow and the pandas
    of its pyfunc models unimported: seconds of start-up that a --no-track run never pays."""
    probe = "import sys, knightctl.training.run; print(sorted({'mlflow', 'pandas'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
