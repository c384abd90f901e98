"""Device choice: only `auto` chooses; an absent device named explicitly is an error.

Absent hardware is simulated by patching torch's availability checks, never by faking training;
the tests that train on CUDA or MPS are marked and run only where that device exists.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from knightctl.errors import DeviceError
from knightctl.training.devices import resolve_device, set_deterministic
from knightctl.training.run import train

ROUND_TABLE = Path(__file__).resolve().parents[2] / "experiments" / "round_table.yaml"


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_falls_back_to_the_cpu_and_says_why(no_accelerators: None) -> None:
    choice = resolve_device("auto")
    assert choice.device == torch.device("cpu")
    assert "neither CUDA nor MPS" in choice.reason


def test_auto_prefers_cuda(one_gpu: None) -> None:
    choice = resolve_device("auto")
    assert choice.device == torch.device("cuda", 0)
    assert "CUDA is available" in choice.reason


def test_auto_takes_mps_when_there_is_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    choice = resolve_device("auto")
    assert choice.device.type == "mps"
    assert "MPS" in choice.reason


def test_explicit_cuda_without_cuda_is_an_error(no_accelerators: None) -> None:
    with pytest.raises(DeviceError, match=r"--device cuda: .*") as caught:
        resolve_device("cuda")
    assert caught.value.exit_code == 2
    assert "--device auto" in str(caught.value)


def test_a_gpu_index_beyond_the_count_is_an_error(one_gpu: None) -> None:
    with pytest.raises(DeviceError, match=r"only 1 CUDA device \(cuda:0\.\.cuda:0\)"):
        resolve_device("cuda:3")


def test_mps_off_macos_is_an_error(no_accelerators: None) -> None:
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")


def test_cpu_is_always_there() -> None:
    assert resolve_device("cpu").device == torch.device("cpu")


def test_an_absent_device_stops_training_before_anything_is_written(
    no_accelerators: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeviceError):
        train(ROUND_TABLE, device="cuda", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert list(tmp_path.iterdir()) == []


def test_deterministic_mode_switches_on_and_off() -> None:
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.deterministic


def test_deterministic_mode_works_after_torch_test_utilities_froze_the_flags() -> None:
    """A plugin defining OpInfo entries imports torch's test utilities, which freeze the cudnn
    flags for the whole process (a subprocess, since nothing public thaws them)."""
    script = (
        "import torch\ntorch.backends.disable_global_flags()\n"
        "from knightctl.training.devices import set_deterministic\n"
        "set_deterministic(True)\n"
        "assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()\n"
        "set_deterministic(False)\nassert not torch.backends.cudnn.deterministic\nprint('switched')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "switched", done.stderr


@pytest.mark.cuda
def test_round_table_trains_on_cuda() -> None:
    result = train(ROUND_TABLE, device="cuda", track=False)
    assert result.info.device.startswith("cuda:0")
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.final_metrics["val/accuracy"] >= 0.90


@pytest.mark.cuda
def test_mini_batches_on_cuda_are_reproducible() -> None:
    try:
        runs = [
            train(
                ROUND_TABLE,
                overrides=["train.batch_size=64", "train.epochs=5"],
                device="cuda",
                track=False,
                deterministic=True,
            )
            for _ in range(2)
        ]
    finally:
        set_deterministic(False)  # train() leaves it on, as a caller who asked for it would want
    for name, value in runs[0].model.state_dict().items():
        assert torch.equal(runs[1].model.state_dict()[name], value), name


@pytest.mark.cuda
def test_cuda_training_matches_the_cpu_within_float_tolerance() -> None:
    on_cpu = train(ROUND_TABLE, overrides=["train.epochs=20"], device="cpu", track=False)
    on_gpu = train(ROUND_TABLE, overrides=["train.epochs=20"], device="cuda", track=False)
    for name, value in on_cpu.model.state_dict().items():
        assert torch.allclose(on_gpu.model.state_dict()[name].cpu(), value, atol=1e-4), name


@pytest.mark.mps
def test_round_table_trains_on_mps() -> None:
    result = train(ROUND_TABLE, device="mps", track=False)
    assert result.final_metrics["val/accuracy"] >= 0.90
