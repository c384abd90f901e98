"""One training run: the device and seeds (`devices`), the components built from a spec
(`build`), in-memory data and batching (`data`), the recorded preprocessing and `model_input`
(`preprocessing`), device-side metrics (`metrics`), signal handling
(`signals`), where the run stands (`position`), what it tells the place it is recorded
(`tracker`), what is settled before the loop (`setup`), the loop as the chapter writes it (`loop`)
and `train()` top to bottom (`run`).
"""

from knightctl._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Components": "build",
        "DeviceChoice": "devices",
        "Position": "position",
        "NoTracker": "tracker",
        "Split": "data",
        "TrainOptions": "run",
        "Tracker": "tracker",
        "StepMetrics": "metrics",
        "TabularData": "data",
        "Preprocessing": "preprocessing",
        "model_input": "preprocessing",
        "build_components": "build",
        "gradient_norm": "metrics",
        "new_seed": "devices",
        "resolve_device": "devices",
        "set_deterministic": "devices",
        "train": "run",
    },
)
