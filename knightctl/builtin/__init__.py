"""knightctl's own components, shipped as default plugins through the same hooks as any other."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "knightctl.builtin.layers",
    "knightctl.builtin.losses",
    "knightctl.builtin.optimizers",
    "knightctl.builtin.datasets",
)
