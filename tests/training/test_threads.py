"""torch's CPU threads: train.threads and --threads, applied before training, logged, and put back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from knightctl.cli import main
from knightctl.errors import SpecError
from knightctl.spec.model import load_spec
from knightctl.sweep.run import sweep
from knightctl.training.run import train
from knightctl.training.threads import AUTO_MANY_THREADS_WORK, choose_threads

ROOT = Path(__file__).resolve().parents[2]
ROUND_TABLE = ROOT / "experiments" / "round_table.yaml"
QUICK = ["train.epochs=2", "tracking.log_model=false"]


@pytest.fixture
def two_threads():  # type: ignore[no-untyped-def]
    """torch at two threads (the suite runs at one), so that a run at one shows it was applied."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_auto_takes_one_thread_for_a_small_step_and_torchs_own_count_for_a_big_one_or_off_the_cpu() -> None:
    small = choose_threads("auto", device_type="cpu", rows_per_step=800, n_parameters=21, available=8)
    assert small.count == 1 and "16,800 multiply-adds a step" in small.reason  # the chapter's model, full batch
    big = choose_threads(
        "auto", device_type="cpu", rows_per_step=1024, n_parameters=AUTO_MANY_THREADS_WORK, available=8
    )
    assert big.count == 8
    assert choose_threads("auto", device_type="cuda", rows_per_step=8, n_parameters=21, available=4).count == 4
    assert choose_threads(3, device_type="cpu", rows_per_step=8, n_parameters=21, available=4).count == 3  # as set


def test_train_threads_is_applied_during_the_run_and_put_back(two_threads: None) -> None:
    """Logged as the param torch.num_threads: tests/tracking/test_dashboard.py reads it from a tracked run."""
    seen: list[int] = []

    class Watch:  # an observer: torch's count once the run has started, when its params are logged
        def run_started(self, info: object) -> None:
            seen.append(torch.get_num_threads())

        def __getattr__(self, name: str) -> object:
            return lambda *args, **kwargs: None

    train(ROUND_TABLE, overrides=[*QUICK, "train.threads=1"], track=False, skip_gradcheck=True, observers=[Watch()])
    assert seen == [1] and torch.get_num_threads() == 2  # one thread while training; the caller's count after
    train(ROUND_TABLE, overrides=QUICK, track=False, skip_gradcheck=True, observers=[Watch()])
    assert seen[-1] == 1  # auto: one thread for the chapter's model
    train(
        ROUND_TABLE,
        overrides=[*QUICK, "train.threads=1"],
        threads=2,
        track=False,
        skip_gradcheck=True,
        observers=[Watch()],
    )
    assert seen[-1] == 2  # the keyword (--threads) beats the spec


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_a_thread_count_that_is_not_a_positive_integer_or_auto_is_refused(value: object, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"threads: must be a positive integer or 'auto' \(got "):
        train(ROUND_TABLE, threads=value, track=False)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match=r"train.threads: must be a positive integer or 'auto'"):
        load_spec(ROUND_TABLE, [f"train.threads={value}"])
    with pytest.raises(SpecError, match="threads: must be"):  # before any trial or parent run
        sweep(ROUND_TABLE, grid=["optimizer.lr=0.1"], threads=value, tracking_uri=f"sqlite:///{tmp_path}/m.db")  # type: ignore[arg-type]
    assert not (tmp_path / "m.db").exists()


def test_the_threads_option_is_parsed_and_reaches_the_run(tmp_path: Path, two_threads: None) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "watch.py").write_text(
        "import torch\nfrom knightctl import hookimpl\n\n\n"
        "@hookimpl\n"
        "def train_started(info):\n"
        f"    open({str(tmp_path / 'threads.txt')!r}, 'a').write(f'{{torch.get_num_threads()}}\\n')\n"
    )
    args = ["--plugins-dir", str(plugins), "train", str(ROUND_TABLE), "--no-track", "--skip-gradcheck"]
    done = CliRunner().invoke(main, [*args, "--threads", "1", *(item for s in QUICK for item in ("--set", s))])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "threads.txt").read_text() == "1\n"
    for bad in ("0", "x", "-2", "1.5"):
        refused = CliRunner().invoke(main, [*args, "--threads", bad])
        assert refused.exit_code == 2 and f"{bad!r} is not a positive integer or 'auto'" in refused.output


def test_a_checkpoint_from_before_train_threads_or_at_another_count_resumes_without_a_spec_change() -> None:
    from knightctl.checkpoint.resume import spec_changes

    now = load_spec(ROUND_TABLE).to_data()
    before = {**now, "train": {k: v for k, v in now["train"].items() if k != "threads"}}  # an older checkpoint's
    assert spec_changes(before, now) == []
    assert spec_changes(now, load_spec(ROUND_TABLE, ["train.threads=2"]).to_data()) == []
    assert spec_changes(now, load_spec(ROUND_TABLE, ["train.epochs=5"]).to_data()) == ["train.epochs: 300 -> 5"]
