"""MLflow: a run's lifecycle (`run`), checking a store first (`stores`), metrics written off the
training process (`metricwriter`), what a run records (`record`, `note`, `datasets`, `plots`,
`plugintags`), the tag names (`tags`), who owns a running run (`owner`), a distributed job's
failure (`failures`), a sweep's parent run (`sweeps`), a run's checkpoints (`checkpoints`),
reading runs back (`runlist`) and serving the UI (`ui`). `offline` keeps what a lost server could
not take. Only this package (and gradcheck's own logging) imports mlflow.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "BOUNDARY_ARTIFACT": "plots",
        "CURVES_ARTIFACT": "plots",
        "MetricWriter": "metricwriter",
        "MlflowRun": "run",
        "NOTE_TAG": "run",
        "RunComparison": "runlist",
        "RunSummary": "runlist",
        "absolute_uri": "stores",
        "amend_note": "note",
        "check_servable": "ui",
        "check_store": "stores",
        "compare_runs": "runlist",
        "components_used": "plugintags",
        "create_run": "stores",
        "decision_boundary": "plots",
        "decision_grid": "plots",
        "experiment_id_for": "stores",
        "flatten": "run",
        "fluent_tracking_uri": "run",
        "keep_checkpoint": "record",
        "list_runs": "runlist",
        "open_run": "run",
        "record_results": "record",
        "record_start": "record",
        "resolve_tracking_uri": "run",
        "resumed_from": "record",
        "run_plots": "plots",
        "run_tags": "record",
        "save_png": "plots",
        "serve_ui": "ui",
        "sqlite_path": "stores",
        "start_writer": "run",
        "store_lock": "stores",
        "training_curves": "plots",
    },
)
