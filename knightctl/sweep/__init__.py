"""`knightctl sweep`: the space a sweep searches (`space`), the Optuna study its processes share
(`study`), running its trials in worker processes as MLflow runs nested under one parent (`run`),
and ranking them by their best value (`ranking`).
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SweepResult": "ranking",
        "TrialResult": "ranking",
        "grid_trials": "space",
        "sweep": "run",
    },
)
