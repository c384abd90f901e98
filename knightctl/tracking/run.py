"""The MLflow adapter: it owns a run's lifecycle and keeps MLflow off the training hot path.

A run is opened (stores.py checks the store first) with the flattened spec as params, tags, and
the spec as artifacts; metrics are buffered in memory and written in batches by a writer process
that also samples system metrics (metricwriter.py); the run takes its datasets, description,
plots, checkpoint and model through `MlflowRun`; and it always ends FINISHED, FAILED (an
exception) or KILLED (Ctrl-C), with every queued metric written and its description brought up
to date first.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knightctl.errors import Interrupted, TrackingError, first_line
from knightctl.spec.overrides import overrides_label
from knightctl.tracking.datasets import log_datasets
from knightctl.tracking.metricwriter import MetricWriter
from knightctl.tracking.note import RunStory, outcome, render_note
from knightctl.tracking.offline.fallback import StoreFallback
from knightctl.tracking.offline.journal import Journal
from knightctl.tracking.plots import save_png
from knightctl.tracking.stores import absolute_uri, create_run, reopen_run
from knightctl.tracking.tags import NOTE_TAG, OUTCOME_TAG, RUN_NAME_TAG

if TYPE_CHECKING:
    from knightctl.spec.model import ExperimentSpec
    from knightctl.training.data import Split

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_PARAM_BATCH = 100  # params per log_batch call, MLflow's own limit


def resolve_tracking_uri(cli_uri: str | None, spec: ExperimentSpec | None = None) -> tuple[str, str]:
    """The URI and where it came from: --tracking-uri, then MLFLOW_TRACKING_URI, the spec, the default."""
    if cli_uri:
        return cli_uri, "--tracking-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI"
    if spec is not None and spec.tracking.uri:
        return spec.tracking.uri, "spec tracking.uri"
    return DEFAULT_TRACKING_URI, "default"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": "0.1"}; lists index as model.0.type."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: str(data)}
    out: dict[str, str] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@dataclass
class MlflowRun:
    """An open MLflow run: where it is, the writer that takes its metrics, and its story so far."""

    client: Any
    run_id: str
    experiment_id: str
    tracking_uri: str
    writer: MetricWriter
    notices: list[str] = field(default_factory=list)  # worth a line on screen: an unmigrated ./mlruns
    story: RunStory | None = None  # rendered into the run's description when the run ends
    # One sentence for the user when the tracking server was gone at the end: what waits in the
    # journal for `knightctl sync` (offline/fallback.py); None when everything reached the store.
    pending_sync: str | None = None
    _fallback: StoreFallback | None = field(default=None, repr=False)

    def log_metrics(self, points: list[tuple[int, Mapping[str, float]]]) -> None:
        """Queue (step, values) points; the writer process stores them while training goes on."""
        for step, values in points:
            self.writer.add(step, values)
        self.writer.flush()

    def close_metrics(self) -> None:
        """Wait until every queued metric is stored (before the model is logged, and at the end)."""
        self.writer.close()

    def log_text(self, text: str, artifact_file: str) -> None:
        def journal_it(journal: Journal) -> None:
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / Path(artifact_file).name
                local.write_text(text, encoding="utf-8")
                parent = str(Path(artifact_file).parent)
                journal.add_artifact(local, "" if parent == "." else parent)

        self._store(lambda: self.client.log_text(self.run_id, text, artifact_file), journal_it)

    def log_table(self, table: Mapping[str, list[Any]], artifact_file: str) -> None:
        """Store columns as an MLflow table (the dashboard's table view). Best effort: a table the store
        refuses is a warning, not a failed run. With the server gone it waits in the journal as the
        same JSON file, without the tag that makes MLflow show it as a table (only log_table sets it)."""

        def journal_it(journal: Journal) -> None:
            columns = list(table)
            rows = [list(row) for row in zip(*(table[column] for column in columns), strict=True)]
            with tempfile.TemporaryDirectory() as folder:
                local = Path(folder) / Path(artifact_file).name
                local.write_text(json.dumps({"columns": columns, "data": rows}), encoding="utf-8")
                parent = str(Path(artifact_file).parent)
                journal.add_artifact(local, "" if parent == "." else parent)

        def action() -> None:
            with warnings.catch_warnings():  # MLflow's own use of a pandas API that pandas 3 deprecates
                warnings.filterwarnings("ignore", message=".*select_dtypes", category=Warning)
                self.client.log_table(self.run_id, data=dict(table), artifact_file=artifact_file)

        try:
            self._store(action, journal_it)
        except Exception as exc:
            warnings.warn(
                f"could not store the table {artifact_file} with MLflow run {self.run_id}: {exc}", stacklevel=2
            )

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self._store(
            lambda: self.client.log_batch(
                self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True
            ),
            lambda journal: journal.add_tags(tags),
        )

    def log_params(self, params: Mapping[str, str]) -> None:
        """Add params; lost, not journaled, if the server went away in the moment since the run was made
        (the journal replays tags, metrics and files: these params say nothing the spec does not)."""
        from mlflow.entities import Param

        batch = [Param(key, value) for key, value in params.items()]
        self._store(lambda: self.client.log_batch(self.run_id, params=batch, synchronous=True), lambda journal: None)

    def describe(self, story: RunStory) -> None:
        """Show `story` as the run's description now, and again (updated) when the run ends."""
        self.story = story
        self.set_tags({NOTE_TAG: render_note(story), OUTCOME_TAG: outcome(story)})

    def log_datasets(self, split: Split, dataset_name: str) -> None:
        log_datasets(self.client, self.run_id, split, dataset_name)

    def log_figures(self, figures: Mapping[str, Any]) -> None:
        """Log matplotlib figures as PNG artifacts at the given paths."""
        with tempfile.TemporaryDirectory() as folder:
            for artifact_file, figure in figures.items():
                local = Path(folder) / artifact_file
                save_png(figure, local)
                self.log_file(local, str(Path(artifact_file).parent))

    def log_file(self, local_path: Path, artifact_dir: str) -> None:
        """Store the local file `local_path` with the run, in the artifact folder `artifact_dir`."""
        self._store(
            lambda: self.client.log_artifact(self.run_id, str(local_path), artifact_dir),
            lambda journal: journal.add_artifact(
                local_path, artifact_dir
            ),  # a copy: the file may change before `knightctl sync`
        )

    def log_model(self, log: Callable[[], Any]) -> str | None:
        """Run `log` (which logs a model into the fluent run and returns MLflow's ModelInfo); the
        model's URI. None, and the model skipped, if the tracking server is gone (`pending_sync`
        says so)."""
        fallback = self._store_fallback()
        if fallback.check():
            fallback.skipped.append("the model")
            return None
        return str(log().model_uri)

    def _store(self, action: Callable[[], Any], journal_it: Callable[[Journal], None]) -> None:
        """Do `action` on the store, or `journal_it` if the tracking server is gone (offline/fallback.py
        asks it first)."""
        self._store_fallback().call(action, journal_it)

    def _store_fallback(self) -> StoreFallback:
        if self._fallback is None:
            journal = Journal(self.writer.journal_root, self.run_id, self.tracking_uri)
            self._fallback = StoreFallback(
                self.client, self.tracking_uri, journal, loop_over=lambda: self.writer.closed
            )
        return self._fallback


@contextmanager
def open_run(
    spec: ExperimentSpec,
    *,
    tracking_uri: str,
    tags: Mapping[str, str],
    writer: MetricWriter | None = None,
    resume_run_id: str | None = None,
) -> Iterator[MlflowRun]:
    """Create the run (or reopen `resume_run_id`), log params, tags and spec; close it with the
    status the block earned.

    `writer` is a MetricWriter started earlier for `tracking_uri` (see `start_writer`); it is
    abandoned if the run cannot be made.
    """
    import mlflow

    writer = writer or start_writer(tracking_uri)
    # A relative sqlite path names the file in the working folder of now: MLflow caches its store per
    # URI string, so a later run (after a chdir, in a notebook) would otherwise reach the first file.
    store_uri = absolute_uri(tracking_uri)
    try:
        writer.wait_started()  # a writer that cannot start fails here, before there is a run to fail
        if resume_run_id is not None:
            client, experiment_id, run_id, notices = reopen_run(store_uri, resume_run_id, tags=tags)
        else:
            # A sweep names its trials; else the spec's name and what its --sets changed (`round_table
            # lr=0.3`), so that one spec's runs tell themselves apart; 250 characters: MLflow's limit.
            changed = overrides_label(spec.source.overrides if spec.source else ())
            run_name = tags.get(RUN_NAME_TAG) or spec.tracking.run_name or f"{spec.name} {changed}".strip()[:250]
            client, experiment_id, run_id, notices = create_run(
                store_uri,
                spec.tracking.experiment or spec.name,
                run_name=run_name,
                tags={k: v for k, v in tags.items() if k != RUN_NAME_TAG},
            )
    except BaseException:
        writer.abandon()
        raise
    writer.attach(run_id)
    run = MlflowRun(client, run_id, experiment_id, tracking_uri, writer, notices)
    restore_uri = fluent_tracking_uri(store_uri)
    mlflow.start_run(run_id=run_id)  # the fluent run, for mlflow.pyfunc.log_model; a resumed run is RUNNING again
    status, ending = "FAILED", ""
    try:
        _log_spec(client, run_id, spec, resumed=resume_run_id is not None)  # while the writer process starts
        run.writer.wait_ready()
        yield run
        run.close_metrics()  # a metric that could not be stored fails the run
        status = "FINISHED"
    except (KeyboardInterrupt, Interrupted) as interrupt:
        status, ending = "KILLED", first_line(interrupt) or "interrupted"
        if run.story is not None:  # the loop's stop says where to go on from
            run.story.next_step = _resume_advice(getattr(interrupt, "hint", None))
        raise
    except BaseException as exc:
        ending = first_line(exc) or type(exc).__name__
        _log_failure(run, exc)
        raise
    finally:
        _finish(run, status, ending, restore_uri)


def fluent_tracking_uri(tracking_uri: str) -> Callable[[], None]:
    """Point MLflow's fluent API at `tracking_uri`; the function returned puts everything back.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into os.environ, so without this a
    run's store outlived it: the next `train` in the same process (a sweep, a notebook) and every
    subprocess it started took that variable before their own spec's `tracking.uri`.
    """
    import mlflow

    previous_uri, previous_env = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)

    def restore() -> None:
        mlflow.set_tracking_uri(previous_uri)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env

    return restore


def start_writer(tracking_uri: str) -> MetricWriter:
    """A metric writer (with system metrics) for a run about to be made on `tracking_uri`."""
    return MetricWriter(absolute_uri(tracking_uri), system_metrics=True)  # the same file from its own process


def _finish(run: MlflowRun, status: str, ending: str, restore_uri: Callable[[], None]) -> None:
    """Store what was queued, tell the story's end, and close the run with `status`."""
    try:
        if not run.writer.closed:  # the error path: store what was queued before closing the run
            run.close_metrics()
    except TrackingError as lost:  # the error already propagating is the one to report
        warnings.warn(str(lost), stacklevel=1)
    fallback = run._store_fallback()
    try:
        if run.story is not None:
            run.story.status, run.story.ending = status, ending
            run.set_tags({NOTE_TAG: render_note(run.story) + fallback.note(), OUTCOME_TAG: outcome(run.story)})
    except Exception as exc:  # the run must still be closed
        warnings.warn(f"could not update the description of MLflow run {run.run_id}: {exc}", stacklevel=1)
    finally:
        try:
            fallback.end_run(status)  # the status is journaled if the server is gone
            run.pending_sync = fallback.pending_sync()
        finally:
            restore_uri()


def _resume_advice(hint: str | None) -> str:
    """`resume with: knightctl train --resume ...` out of a stop's hint, or ""."""
    match = re.search(r"resume with: .*", hint or "")
    return match.group(0) if match else ""


def spec_params(spec: ExperimentSpec) -> dict[str, str]:
    """The resolved spec, flattened, as a run's params: options left unset (None) are not shown, nor
    the description, which is the run's description already."""
    flat = flatten(spec.to_data())
    return {key: value for key, value in flat.items() if value != "None" and key != "description"}


def _log_spec(client: Any, run_id: str, spec: ExperimentSpec, resumed: bool = False) -> None:
    """The flattened resolved spec as params; the spec as written and resolved as artifacts.

    A resumed run keeps its params (MLflow refuses to change one): only new ones are added, and
    the spec it goes on with is stored as spec/resumed.yaml.
    """
    import yaml
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params if resumed else {}
    params = [Param(key, value[:6000]) for key, value in spec_params(spec).items() if key not in existing]
    for start in range(0, len(params), _PARAM_BATCH):
        client.log_batch(run_id, params=params[start : start + _PARAM_BATCH], synchronous=True)
    if spec.source is not None and not resumed:
        client.log_text(run_id, spec.source.text, f"spec/{Path(spec.source.path).name}")
    client.log_text(
        run_id,
        yaml.safe_dump(spec.to_data(), sort_keys=False),
        "spec/resumed.yaml" if resumed else "spec/resolved.yaml",
    )


def _log_failure(run: MlflowRun, exc: BaseException) -> None:
    """Keep the whole story of a failure with the run: message and traceback, chained causes too."""
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        run.log_text(text, "error/traceback.txt")  # journaled if the server is gone
    except Exception:  # the run still ends FAILED; the terminal shows the error either way
        pass
