"""knightctl's own components (and metrics), shipped as default plugins through the same hooks as any other."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "knightctl.plugins.builtin.layers",
    "knightctl.plugins.builtin.losses",
    "knightctl.plugins.builtin.optimizers",
    "knightctl.plugins.builtin.datasets",
    "knightctl.plugins.builtin.metrics",
)
