"""What `train` settles before its loop: the spec and its plugins, the device and the components
(with the dry forward and the pre-flight gradient check), where the run is tracked, the checkpoint
folder, what observers are told at the start, and the generators the loop draws from.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch

from knightctl.checkpoint.files import CheckpointFolder
from knightctl.checkpoint.resume import Resumption
from knightctl.checkpoint.state import set_rng_states
from knightctl.distributed.ranks import Single
from knightctl.errors import KnightctlError
from knightctl.gradcheck.preflight import preflight
from knightctl.gradcheck.report import OpReport
from knightctl.plugins.events import RunInfo
from knightctl.plugins.loader import load as load_plugins
from knightctl.plugins.system import PluginSettings, PluginSystem
from knightctl.spec.model import ExperimentSpec, load_spec
from knightctl.spec.monitor import check_monitor
from knightctl.tracking.record import resumed_from
from knightctl.tracking.run import resolve_tracking_uri
from knightctl.training.build import Components, build_components, dry_forward
from knightctl.training.data import steps_per_epoch
from knightctl.training.devices import (
    DeviceChoice,
    loop_seed,
    new_seed,
    resolve_device,
    seed_everything,
    set_deterministic,
)
from knightctl.training.metrics import logged_metrics
from knightctl.training.preprocessing import Preprocessing
from knightctl.training.threads import ThreadChoice, apply_threads, choose_threads
from knightctl.training.tracker import Tracker


def start_generators(spec: ExperimentSpec, resumed: Resumption | None, ranks: Single) -> None:
    """Seed the global generators (or restore them) just before the first step, so that nothing run
    before the loop (the gradient check, MLflow) changes what the loop draws (dropout and the like).
    The loop's seed differs from the one that initialised the weights, so its draws are not theirs;
    each rank of a distributed job gets its own (rank 0's is a single process's)."""
    if resumed is None:
        seed_everything(loop_seed(spec.seed or 0, 1, ranks.rank))
        return
    per_rank = resumed.state.get("rank_rng")  # written by a distributed job
    if per_rank is not None and len(per_rank) == ranks.world_size:
        set_rng_states(per_rank[ranks.rank])
    elif per_rank is None and not ranks.distributed:
        set_rng_states(resumed.state["rng"])
    else:  # a different number of processes: fresh draws, distinct per rank
        seed_everything(loop_seed(spec.seed or 0, int(resumed.state["step"]), ranks.rank))


def checkpoint_folder(
    spec: ExperimentSpec, run: Tracker, resumed: Resumption | None, checkpoint_dir: str | Path | None
) -> CheckpointFolder:
    """checkpoint.dir/RUN_ID (or SPEC-NAME-TIME under --no-track); a resumed run keeps its folder."""
    if resumed is not None and checkpoint_dir is None:
        folder = resumed.folder
    else:
        name = run.run_id or f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
        folder = Path(checkpoint_dir or spec.checkpoint.dir) / name
    return CheckpointFolder(folder.absolute(), spec.checkpoint.keep_last)


def tracking_uri_for(cli_uri: str | None, spec: ExperimentSpec, resumed: Resumption | None) -> tuple[str, str]:
    """The store as usual; a resumed run, unless told otherwise, goes on in the store it was tracked in."""
    uri, source = resolve_tracking_uri(cli_uri, spec)
    if resumed is not None and resumed.tracking_uri and source in ("default", "spec tracking.uri"):
        return resumed.tracking_uri, "the checkpoint"
    return uri, source


def prepare(
    spec: ExperimentSpec,
    system: PluginSystem,
    device: str | None,
    deterministic: bool | None,
    skip_gradcheck: bool,
    ranks: Single,
    threads: int | str | None = None,
    recorded: Preprocessing | None = None,
) -> tuple[DeviceChoice, Components, list[OpReport]]:
    """The device, seed and components; torch's thread count (`threads`, else the spec's); a dry
    forward and the ops' gradient check, before any run exists."""
    assert spec.seed is not None
    choice = resolve_device(device or spec.train.device)
    if ranks.distributed:
        where = f"{ranks.world_size} processes in DistributedDataParallel; this is rank {ranks.rank}"
        choice = DeviceChoice(ranks.device(choice.device), f"{choice.reason}; {where}")
    if spec.train.deterministic if deterministic is None else deterministic:
        set_deterministic(True)  # never switched off here: a caller may have switched it on
    seed_everything(spec.seed)
    parts = build_components(spec, system.registry, choice.device, spec.seed, recorded)  # recorded: a checkpoint's
    apply_threads(run_threads(spec, threads, parts, choice, ranks))  # before the dry forward and the checks
    task_keys = parts.task_metrics.keys if parts.task_metrics else ()
    check_monitor(spec, logged_metrics(has_validation=parts.data.val_x is not None, task_keys=task_keys))
    dry_forward(parts, spec)
    # The ops at the spec's options, and the model when small (gradcheck/run.py); on MPS, which has
    # no float64, the checks run on the CPU and their reports say so.
    verdicts = [] if skip_gradcheck else preflight(spec, system, str(choice.device), parts.model)
    return choice, parts, list(verdicts)


def run_threads(
    spec: ExperimentSpec, threads: int | str | None, parts: Components, choice: DeviceChoice, ranks: Single
) -> ThreadChoice:
    """The thread count for `threads` (else `train.threads`): a step's rows are this rank's share of the batch."""
    batch = parts.data.n_train if spec.train.batch_size == "full" else min(spec.train.batch_size, parts.data.n_train)
    return choose_threads(
        threads if threads is not None else spec.train.threads,
        device_type=choice.device.type,
        rows_per_step=max(1, batch // ranks.world_size),
        n_parameters=sum(p.numel() for p in parts.model.parameters()),
        available=torch.get_num_threads(),
    )


def spec_and_plugins(
    spec: ExperimentSpec | str | Path | None, overrides: Sequence[str], plugins: PluginSettings | None
) -> tuple[ExperimentSpec, PluginSystem]:
    """The spec, read if need be and given a seed if it has none, and the plugins it runs with."""
    if spec is None:
        raise KnightctlError("no spec: give a spec file, or --resume a run")
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides, plugins=plugins)
    system = load_plugins(plugins, files=spec.plugin_paths())
    return spec.with_seed(spec.seed if spec.seed is not None else new_seed()), system


def run_info(
    spec: ExperimentSpec,
    choice: DeviceChoice,
    parts: Components,
    run: Tracker,
    resumed: Resumption | None,
    world_size: int,
) -> RunInfo:
    batch_size = None if spec.train.batch_size == "full" else spec.train.batch_size
    return RunInfo(
        spec_name=spec.name,
        device=choice.description,
        device_reason=choice.reason,
        seed=spec.seed or 0,
        epochs=spec.train.epochs,
        steps_per_epoch=steps_per_epoch(parts.data.n_train, batch_size),
        n_train=parts.data.n_train,
        n_val=parts.data.n_val,
        tracking_uri=run.tracking_uri,
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        notices=tuple(run.notices),
        resumed_from=resumed_from(resumed),
        first_epoch=int(resumed.state["epoch"]) + 1 if resumed else 1,
        world_size=world_size,
    )
