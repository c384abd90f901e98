"""Suite-wide settings.

One OpenMP thread for torch, here and in every subprocess a test starts: the models under test
are tiny, and on a two-core machine with anything else running, a second intra-op thread spins
and waits, making a 300-step run 10-80x slower. Users keep torch's own default.

Tests marked `cuda` or `mps` need that device and are skipped, never faked, where it is absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    present = {
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    for item in items:
        for device, available in present.items():
            if device in item.keywords and not available:
                item.add_marker(pytest.mark.skip(reason=f"needs a {device.upper()} device; none here"))


@pytest.fixture(autouse=True)
def _work_in_a_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own folder: training writes checkpoints/ (and mlflow.db) in the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def load_logged_model() -> Callable[[str, str], Any]:
    """The torch module of a `models:/` URI in the store at `tracking_uri`, loaded through MLflow's pyfunc
    (MLflow resolves the URI against the global store)."""
    import mlflow.pyfunc

    from knightctl.tracking.run import fluent_tracking_uri

    def load(tracking_uri: str, model_uri: str) -> Any:
        restore = fluent_tracking_uri(tracking_uri)  # puts MLFLOW_TRACKING_URI back as well
        try:
            return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().module
        finally:
            restore()

    return load


def best_model(result: Any) -> Any:
    """The trained model with the weights of its best step (best.pt): what a run logs as its model."""
    import copy

    from knightctl.checkpoint.files import load_checkpoint

    model = copy.deepcopy(result.model).cpu()
    model.load_state_dict(load_checkpoint(result.best_checkpoint)["model"])
    return model.eval()
