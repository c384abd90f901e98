"""Everything rich: training progress and the run summary, specs and errors on screen, and the tables
of ops, plugins, runs, gradient verdicts, sweeps and syncs. The library never imports it; only
`knightctl.cli` does.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ProgressObserver": "core",
        "duration": "runs",
        "make_console": "core",
        "render_comparison": "runs",
        "render_error": "core",
        "render_gradcheck": "gradcheck",
        "render_ops": "listings",
        "render_plugins": "listings",
        "render_resume_verdict": "core",
        "render_runs": "runs",
        "render_spec": "core",
        "render_summary": "core",
        "render_sweep": "sweeps",
        "render_sync": "sync",
        "render_trial": "sweeps",
        "render_warnings": "core",
        "significant": "runs",
    },
)
