"""Experiment specs: the YAML file read with positions, `--set` overrides, validation into frozen
pydantic models with every problem named at once, the static width check of the layer chain, and
the plugin files a spec lists. No torch.
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ExperimentSpec": "model",
        "load_spec": "model",
        "read_spec_file": "file",
    },
)
