"""The logged model as MLflow loads it: a pyfunc that registers the plugin ops its graph calls, loads
the graph, and answers in the task's terms (class names and probabilities for a classifier).

`mlflow.pyfunc.load_model(uri).predict(rows)` works in any process with mlflow, torch and the
model's requirements: knightctl itself travels with the model (MLflow's `code_paths`), and so do
the plugin files that supplied its layers (the `plugins` artifact). The graph is a torch.export
program: it holds no Python classes, only calls to torch's operators and to the custom ops, which
must be registered before it loads. A process that already has them (the one that trained it,
`knightctl predict`) loads no plugin twice. The card (`card.json`, written by tracking/models.py)
says what the model takes and gives: the input feature names, the class names in index order,
the preprocessing (data.standardize's training-split statistics, applied to the raw rows given to
`predict` by training/preprocessing.py's `model_input`), the ops, and which step it came from and why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from knightctl.training.preprocessing import Preprocessing
from knightctl.training.preprocessing import model_input as to_model_input

CARD_VERSION = 1


class ServedModel(mlflow.pyfunc.PythonModel):
    """A knightctl model behind MLflow's pyfunc interface; `module` is the loaded torch module."""

    def load_context(self, context: Any) -> None:
        import torch

        self.card: dict[str, Any] = json.loads(Path(context.artifacts["card"]).read_text())
        self.preprocessing = Preprocessing.from_record(self.card)
        missing = unregistered(self.card["custom_ops"])
        if missing and "plugins" in context.artifacts:
            _load_plugins(Path(context.artifacts["plugins"]))
            missing = unregistered(missing)
        if missing:
            shipped = ", ".join(plugin["file"] for plugin in self.card["plugins"]) or "none"
            raise RuntimeError(
                f"the model calls {', '.join(missing)}, which no plugin registered (plugins shipped with it: {shipped}"
                f"{'; installed: ' + ', '.join(self.card['requirements']) if self.card['requirements'] else ''})"
            )
        self.module = torch.export.load(context.artifacts["graph"]).module()

    # MLflow reads predict's type hints; a DataFrame hint asks for no schema of its own (the logged
    # signature is the one enforced).
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Raw rows in (a DataFrame with the feature columns, or an array of them in the card's order),
        preprocessed as in training (`model_input`); a DataFrame out: `prediction`, and for a classifier
        one `probability_<class>` column per class."""
        import torch

        rows = to_model_input(model_input, self.preprocessing)  # the training split's standardisation, if any
        with torch.no_grad():
            outputs = self.module(torch.tensor(rows))  # a copy: a DataFrame's array may be read-only
        return pd.DataFrame(answers(outputs, self.card["target"], self.card["class_names"]))


def answers(outputs: Any, target: str, class_names: Sequence[str] | None) -> dict[str, list[Any]]:
    """The model's outputs as the task's answers: class names (or indices) and each class's probability
    for a classifier (binary: one logit, class: one logit per class), the value for a regression."""
    import torch

    if target == "real":
        return {"prediction": outputs.reshape(len(outputs), -1)[:, 0].tolist()}
    if target == "binary":
        positive = torch.sigmoid(outputs.reshape(-1))
        probabilities = torch.stack([1 - positive, positive], dim=1)
    else:
        probabilities = torch.softmax(outputs, dim=-1)
    names = list(class_names) if class_names else [str(i) for i in range(probabilities.shape[1])]
    chosen = probabilities.argmax(dim=1).tolist()
    columns: dict[str, list[Any]] = {"prediction": [names[i] if class_names else i for i in chosen]}
    for index, name in enumerate(names):
        columns[f"probability_{name}"] = probabilities[:, index].tolist()
    return columns


def unregistered(ops: Sequence[str]) -> list[str]:
    """The custom ops (`namespace::name`) torch does not know in this process."""
    import torch

    missing = []
    for qualified in ops:
        namespace, _, name = qualified.partition("::")
        try:
            getattr(getattr(torch.ops, namespace), name)
        except (AttributeError, RuntimeError):
            missing.append(qualified)
    return missing


def _load_plugins(folder: Path) -> None:
    """Load the shipped plugin files through knightctl's loader, as a spec's plugin files are."""
    from knightctl.plugins.loader import load
    from knightctl.plugins.system import PluginSettings

    load(PluginSettings(dirs=(folder,)), reload=True)
