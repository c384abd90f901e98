"""The names of the tags knightctl sets on MLflow runs, in one place: MLflow's own that it fills in,
and its own `knightctl.*` ones. Tests spell them out as strings, so a renamed tag fails them."""

# MLflow's own, which its UI reads.
NOTE_TAG = "mlflow.note.content"  # the run's description
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"  # nests a sweep's trials under its parent run
SOURCE_TYPE_TAG = "mlflow.source.type"
SOURCE_NAME_TAG = "mlflow.source.name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
MLFLOW_VERSION_TAG = "mlflow.version"
USER_TAG = "mlflow.user"

# knightctl's.
VERSION_TAG = "knightctl.version"
OUTCOME_TAG = "knightctl.outcome"  # the first line of the description: FINISHED/FAILED/KILLED and why
MODEL_CHOICE_TAG = "knightctl.model_of_record"  # on a logged model: which weights, "best" (by train.monitor) or "final"
# Which process owns a RUNNING run: bookkeeping, under one prefix so that it sorts apart from the
# tags a reviewer reads.
HOST_TAG = "knightctl.process.host"
PID_TAG = "knightctl.process.pid"
STARTED_TAG = "knightctl.process.started"  # the process's start time, ISO 8601 in UTC, to the millisecond
# The same, as runs tracked before December 2026 hold them (the start time in s since the epoch):
# still read, so that `sync` and `--resume` know who owns such a run.
LEGACY_HOST_TAG = "knightctl.host"
LEGACY_PID_TAG = "knightctl.pid"
LEGACY_STARTED_TAG = "knightctl.pid_started"
CHECKPOINT_DIR_TAG = "knightctl.checkpoint_dir"
RESUMED_FROM_TAG = "knightctl.resumed_from"
SPEC_CHANGES_TAG = "knightctl.spec_changes"
WORLD_SIZE_TAG = "knightctl.world_size"
RESTARTS_TAG = "knightctl.restarts"
FAILED_RANK_TAG = "knightctl.failed_rank"
SWEEP_TAG = "knightctl.sweep"  # on a sweep's parent: the sweep's key
SWEEP_TRIALS_TAG = "knightctl.sweep.trials"
TRIAL_TAG = "knightctl.trial"  # on a trial: its key
TRIAL_OVERRIDES_TAG = "knightctl.trial.overrides"
STUDY_TAG = "knightctl.trial.study"  # on a trial: the Optuna study it is a trial of
TRIAL_NUMBER_TAG = "knightctl.trial.number"  # ... and its number there (from 0)
PRUNED_TAG = "knightctl.trial.pruned"  # on a pruned trial: why the pruner stopped it
BEST_RUN_TAG = "knightctl.best_run_id"
BEST_TRIAL_TAG = "knightctl.best_trial"
EVALUATES_RUN_TAG = "knightctl.evaluates.run"  # on a `knightctl evaluate` run: the run that trained the model
EVALUATES_MODEL_TAG = "knightctl.evaluates.model"  # ... and the model's URI
