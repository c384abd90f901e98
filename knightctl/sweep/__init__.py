"""`knightctl sweep`: the trials a sweep asks for (`space`), running them in worker processes as
MLflow runs nested under one parent (`run`), and ranking them by their best value (`ranking`).
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SweepResult": "ranking",
        "TrialResult": "ranking",
        "grid_trials": "space",
        "random_trials": "space",
        "sweep": "run",
    },
)
