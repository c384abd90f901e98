"""Checkpoint files and the faults around them: NaN, plugin errors, a full disk, unsafe pickles, no seed.

Real files and a real sqlite MLflow store throughout; the one stand-in is a write that fails with
ENOSPC, since this machine's disk cannot be filled on demand.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from processes import run_knightctl
from test_resume import STEPS_PER_EPOCH, write_spec

from knightctl.checkpoint.files import CheckpointFolder, _serialise, _with_checksum, load_checkpoint, save_checkpoint
from knightctl.errors import CheckpointError, PluginError, RunFailed
from knightctl.training.run import train

ROOT = Path(__file__).resolve().parents[2]
NOISY_EVENTS = ROOT / "tests" / "plugins" / "noisy_events.py"


def store(tmp_path: Path) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, MlflowClient(uri)


def the_run(client: MlflowClient) -> object:
    (run,) = client.search_runs([client.get_experiment_by_name("gated").experiment_id])
    return run


def test_a_checkpoint_is_a_plain_torch_file_that_carries_its_checksum(tmp_path: Path) -> None:
    state = {"format_version": 2, "step": 3, "weights": torch.arange(6.0)}
    path = save_checkpoint(state, tmp_path / "deep" / "c.pt")
    assert torch.equal(torch.load(path, weights_only=True)["weights"], state["weights"])  # any torch user can open it
    assert torch.equal(load_checkpoint(path)["weights"], state["weights"])
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_folder_keeps_the_newest_checkpoints_and_clears_what_a_killed_writer_left(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path, keep_last=2)
    (tmp_path / ".step-000000001.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    for step in (1, 2, 3):
        folder.save({"format_version": 2, "step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000002.pt", "step-000000003.pt"]
    assert folder.latest() == tmp_path / "step-000000003.pt"


def test_a_nan_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNIGHTCTL_NAN_STEP", "13")
    uri, client = store(tmp_path)
    with pytest.raises(RunFailed) as failure:
        train(write_spec(tmp_path), tracking_uri=uri, skip_gradcheck=True, checkpoint_dir=tmp_path / "checkpoints")
    run = the_run(client)
    good = tmp_path / "checkpoints" / run.info.run_id / f"step-{STEPS_PER_EPOCH:09d}.pt"
    assert str(failure.value).startswith("the training loss became nan at step 13 (epoch 2)")
    assert "--detect-anomaly" in str(failure.value) and f"the last good checkpoint is {good}" in str(failure.value)
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]  # nothing written after the NaN
    assert all(torch.isfinite(t).all() for t in load_checkpoint(good)["model"].values())
    assert run.info.status == "FAILED"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [f"checkpoints/{good.name}"]
    losses = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert [m.step for m in losses] == list(range(1, 14))  # every finite step, and the NaN at its own step
    assert all(math.isfinite(m.value) for m in losses[:-1]) and math.isnan(losses[-1].value)


def test_detect_anomaly_names_the_operation_that_made_the_nan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KNIGHTCTL_NAN_STEP", "3")
    with pytest.raises(RunFailed, match="returned nan values"):
        train(write_spec(tmp_path), track=False, skip_gradcheck=True, detect_anomaly=True, checkpoint_dir=tmp_path)


def test_an_exception_in_a_plugin_fails_the_run_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("plugins: [", f"plugins: [{NOISY_EVENTS}, "))  # raises after epoch 2
    uri, client = store(tmp_path)
    with pytest.raises(PluginError) as failure:  # raised in its epoch_completed hook
        train(spec, tracking_uri=uri, skip_gradcheck=True, checkpoint_dir=tmp_path / "checkpoints")
    run = the_run(client)
    kept = tmp_path / "checkpoints" / run.info.run_id / f"step-{STEPS_PER_EPOCH:09d}.pt"
    assert "noisy_events" in str(failure.value) and f"the last good checkpoint is {kept}" in str(failure.value)
    assert run.info.status == "FAILED"
    assert load_checkpoint(kept)["epoch"] == 1
    assert "error/traceback.txt" in [a.path for a in client.list_artifacts(run.info.run_id, "error")]


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "checkpoints"
    real_write = os.write
    writes_into_folder = []

    def write(handle: int, data: bytes) -> int:
        if str(folder) in os.readlink(f"/proc/self/fd/{handle}"):
            writes_into_folder.append(len(data))
            if len(writes_into_folder) > 1:  # the second checkpoint: half of it fits, then the disk is full
                real_write(handle, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(handle, data)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell the checkpoint's file from others")
    uri, client = store(tmp_path)
    monkeypatch.setattr(os, "write", write)
    with pytest.raises(CheckpointError) as failure:
        train(write_spec(tmp_path), tracking_uri=uri, skip_gradcheck=True, checkpoint_dir=folder)
    monkeypatch.undo()
    run = the_run(client)
    run_folder = folder / run.info.run_id
    assert f"cannot write checkpoint {run_folder / 'step-000000016.pt'}: No space left on device (ENOSPC)" in str(
        failure.value
    )
    assert sorted(p.name for p in run_folder.iterdir()) == ["step-000000008.pt"]  # no temporary file left
    assert load_checkpoint(run_folder / "step-000000008.pt")["step"] == 8
    assert run.info.status == "FAILED"


def test_a_checkpoint_that_pickles_code_is_refused_and_the_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "the-payload-ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    crafted.write_bytes(
        _with_checksum(_serialise({"format_version": 2, "step": 1, "model": Payload()}))
    )  # its checksum is right
    done = run_knightctl("train", "--resume", str(crafted), "--no-track", cwd=tmp_path, timeout=120)
    assert done.returncode == 1, done.stderr
    assert (
        f"{crafted}: refused: a checkpoint may hold only tensors and plain values, "
        f"and it pickles {os.system.__module__}.system" in done.stderr
    )
    assert not marker.exists()


@pytest.mark.slow
def test_a_spec_without_a_seed_gets_one_that_is_logged_stored_and_kept_on_resume(tmp_path: Path) -> None:
    uri, client = store(tmp_path)
    first = train(
        write_spec(tmp_path, seed=""),
        tracking_uri=uri,
        skip_gradcheck=True,
        stop_at_step=5,
        checkpoint_dir=tmp_path / "c",
    )
    assert first.checkpoint is not None
    seed = load_checkpoint(first.checkpoint)["seed"]
    assert client.get_run(str(first.run_id)).data.tags["seed"] == str(seed) == str(first.info.seed)
    resumed = train(resume=first.checkpoint, tracking_uri=uri, skip_gradcheck=True)
    assert resumed.info.seed == seed and resumed.run_id == first.run_id


@pytest.mark.cuda
def test_a_resumed_run_on_cuda_with_deterministic_algorithms_is_bit_identical(tmp_path: Path) -> None:
    from knightctl.checkpoint.verify import verify_resume

    verdict = verify_resume(write_spec(tmp_path), track=False, skip_gradcheck=True, device="cuda", deterministic=True)
    assert verdict.identical, verdict.first_difference
