"""`--resume REF`: find the checkpoint REF names, check it, and settle the spec the run goes on with.

REF is a checkpoint file, a run's checkpoint folder, or an MLflow run id. A run id is looked up
first in the local checkpoint folder (`checkpoints/RUN_ID/`), then through the run itself: the
folder its `knightctl.checkpoint_dir` tag names, else the checkpoints stored with it as
artifacts. The newest checkpoint is verified before anything is loaded; a damaged one is an
error that names the previous one, never a silent fresh start (FAULTS 22).

The spec is the checkpoint's own copy (its YAML text, so `--set` works as on the first run)
unless a spec file is given. Any difference from the checkpoint's resolved spec is refused,
listed, unless allowed (FAULTS 24); the `checkpoint` section (where and how often to write) and
`train.threads` (how many CPU threads) are not part of the experiment and may change freely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from knightctl.checkpoint.files import CheckpointFolder, load_checkpoint
from knightctl.errors import CheckpointError, ResumeError
from knightctl.spec.model import ExperimentSpec, load_spec
from knightctl.tracking.checkpoints import run_checkpoint
from knightctl.tracking.run import flatten, resolve_tracking_uri

if TYPE_CHECKING:
    from knightctl.plugins.system import PluginSettings
# Spec paths that may differ on resume without --allow-spec-change: where and how often checkpoints
# are written, and how many CPU threads train (a checkpoint from before train.threads lacks it).
_FREE_SECTIONS = ("checkpoint.", "train.threads")
_SHOWN_CHANGES = 20


@dataclass(frozen=True)
class Resumption:
    """What a resumed run starts from."""

    checkpoint: Path
    state: dict[str, Any]
    spec: ExperimentSpec
    run_id: str | None
    tracking_uri: str | None  # the store the run was tracked in, as the checkpoint recorded it
    folder: Path  # where the resumed run writes its checkpoints
    changes: list[str]  # spec differences, allowed by the caller


def prepare_resume(
    reference: str | Path,
    spec: ExperimentSpec | str | Path | None,
    overrides: Sequence[str],
    *,
    plugins: PluginSettings | None,
    tracking_uri: str | None,
    allow_spec_change: bool,
) -> Resumption:
    """Find, verify and load the checkpoint `reference` names; the spec to go on with; what changed."""
    path = find_checkpoint(str(reference), spec, tracking_uri).absolute()
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        earlier = [p for p in CheckpointFolder(path.parent).checkpoints() if p != path]
        if earlier:
            error.hint = (
                f"an earlier checkpoint of this run is {earlier[-1]}; "
                f"resume from it with: knightctl train --resume {earlier[-1]}"
            )
        raise
    if state.get("kind") == "best":
        raise ResumeError(
            f"{path}: best.pt holds the model of record's weights only, not a point to resume from",
            hint=f"resume from the run's newest checkpoint: knightctl train --resume {path.parent}",
        )
    resumed_spec = _spec_for(state, path, spec, overrides, plugins)
    changes = spec_changes(state["spec"], resumed_spec.to_data())
    if changes and not allow_spec_change:
        shown = changes[:_SHOWN_CHANGES] + (
            [f"... and {len(changes) - _SHOWN_CHANGES} more"] if len(changes) > _SHOWN_CHANGES else []
        )
        raise ResumeError(
            f"{path}: the spec differs from the one this checkpoint was trained with:\n"
            + "\n".join(f"  {line}" for line in shown),
            hint="resume with the same spec, or pass --allow-spec-change to go on with the new one",
        )
    if int(state["epoch"]) >= resumed_spec.train.epochs:
        raise ResumeError(
            f"{path}: the run already trained all {state['epoch']} epochs (step {state['step']}); "
            "nothing is left to do",
            hint=f"to train on, raise the epochs: --set train.epochs={2 * state['epoch']} --allow-spec-change",
        )
    stopped = state.get("early_stopping") or {}
    early = resumed_spec.train.early_stopping
    if stopped.get("stopped_at") is not None and early is not None and int(stopped["stale"]) >= early.patience:
        raise ResumeError(
            f"{path}: the run stopped early at step {stopped['stopped_at']} ({stopped['metric']} had not improved "
            f"for {stopped['stale']} evaluations); nothing is left to do",
            hint=f"to train on, raise the patience: --set train.early_stopping.patience={2 * early.patience} "
            "--allow-spec-change",
        )
    folder = (
        path.parent
        if path.name.startswith("step-")
        else Path(resumed_spec.checkpoint.dir) / (state.get("run_id") or path.stem)
    )
    return Resumption(path, state, resumed_spec, state.get("run_id"), state.get("tracking_uri"), folder, changes)


def find_checkpoint(reference: str, spec: ExperimentSpec | str | Path | None, tracking_uri: str | None) -> Path:
    """The checkpoint file `reference` (a file, a folder or a run id) names."""
    given = Path(reference)
    if given.is_file():
        return given
    if given.is_dir():
        return _newest(CheckpointFolder(given), f"{given} holds no checkpoints (step-*.pt)")
    local = CheckpointFolder(Path(_checkpoint_dir(spec)) / reference)
    if local.latest() is not None:
        return _newest(local, "")
    return _from_run(reference, spec, tracking_uri, local.path)


def spec_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """`optimizer.lr: 0.1 -> 0.01` for every spec path whose value differs (the checkpoint section aside).

    A field that a later knightctl added, at its default, is no change: `before` (a checkpoint's
    spec) gets the current defaults filled in first."""
    try:
        before = ExperimentSpec.model_validate(before).to_data()
    except ValueError:  # a spec this knightctl no longer reads as it was: compared as it stands
        pass
    old, new = flatten(before), flatten(after)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key.startswith(_FREE_SECTIONS) or old.get(key) == new.get(key):
            continue
        if key not in new:
            lines.append(f"{key}: removed (was {old[key]})")
        elif key not in old:
            lines.append(f"{key}: added ({new[key]})")
        else:
            lines.append(f"{key}: {old[key]} -> {new[key]}")
    return lines


def _newest(folder: CheckpointFolder, empty_message: str) -> Path:
    newest = folder.latest()
    if newest is None:
        raise CheckpointError(empty_message)
    return newest


def _checkpoint_dir(spec: ExperimentSpec | str | Path | None) -> str:
    if isinstance(spec, ExperimentSpec):
        return spec.checkpoint.dir
    return "checkpoints"


def _from_run(run_id: str, spec: ExperimentSpec | str | Path | None, tracking_uri: str | None, looked_in: Path) -> Path:
    """The newest checkpoint of MLflow run `run_id`, in the store `--tracking-uri` or the spec names."""
    uri, _ = resolve_tracking_uri(tracking_uri, spec if isinstance(spec, ExperimentSpec) else None)
    return run_checkpoint(uri, run_id, looked_in)


def _spec_for(
    state: dict[str, Any],
    path: Path,
    spec: ExperimentSpec | str | Path | None,
    overrides: Sequence[str],
    plugins: PluginSettings | None,
) -> ExperimentSpec:
    """The spec given, else the checkpoint's own (its YAML and overrides, with any new overrides)."""
    if isinstance(spec, ExperimentSpec):
        loaded = spec
    elif spec is not None:
        loaded = load_spec(spec, overrides, plugins=plugins)
    elif state.get("spec_source"):
        source = state["spec_source"]
        loaded = load_spec(source["path"], [*source["overrides"], *overrides], plugins=plugins, text=source["text"])
    else:
        loaded = load_spec(
            f"{path} (its spec)", overrides, plugins=plugins, text=yaml.safe_dump(state["spec"], sort_keys=False)
        )
    return loaded if loaded.seed is not None else loaded.with_seed(int(state["seed"]))
