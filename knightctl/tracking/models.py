"""The run's model of record in MLflow: exported, packed with what loads it, logged, linked, registered.

The model is logged from the best step by the monitored metric (training/best.py), or the last one
with `tracking.log_model: final`, as a pyfunc (tracking/servedmodel.py) holding:
- `graph`: the model as a torch.export program with a dynamic batch dimension;
- `card`: card.json, what the model takes and gives and why it was chosen (`model_card`);
- `plugins`: the plugin files that supplied its layers, loaded before the graph where needed;
- knightctl itself as code, and pinned requirements (torch, pluggy, pydantic, PyYAML, NumPy, and the
  distribution of any installed plugin it uses).
It is named after the spec, linked to the metrics of the step it came from (MLflow copies that
step's metrics onto the logged model), described in words, and registered when the spec says so.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from knightctl.training.best import Choice

# The model as code (MLflow's models-from-code: no pickled Python object to trust at load time).
# MLflow puts the model's code folder, which holds knightctl, on sys.path before running it.
_MODEL_CODE = """\"\"\"A knightctl model of record, as MLflow loads it (knightctl/tracking/servedmodel.py).\"\"\"

import mlflow.models

from knightctl.tracking.servedmodel import ServedModel

mlflow.models.set_model(ServedModel())
"""

_PACKAGE = Path(__file__).resolve().parents[1]  # knightctl's own folder: the model's code

# The distributions knightctl's code needs to load a model (beside mlflow, which MLflow adds itself).
_RUNTIME = ("torch", "pluggy", "pydantic", "PyYAML", "numpy")


def model_name(spec_name: str) -> str:
    """The spec's name as a logged model's name (MLflow refuses `/ : . % " '` in one)."""
    return re.sub(r"[/:.%\"']+", "-", spec_name).strip("-") or "model"


def custom_ops(program: Any) -> list[str]:
    """The operators outside torch's own namespaces a torch.export program calls: `knight::sigmoid_gate`."""
    found = set()
    for node in program.graph.nodes:
        target = node.target
        namespace = getattr(target, "namespace", None)
        if node.op == "call_function" and namespace and namespace not in ("aten", "prims", "_c10d_functional"):
            found.add(target.name().split(".")[0])  # "knight::sigmoid_gate.default" -> the op
    return sorted(found)


def plugin_files(spec: Any, system: Any) -> tuple[list[Path], list[str]]:
    """The plugin files that supplied the model's layers, and the pinned distributions of installed ones."""
    files: list[Path] = []
    requirements: list[str] = []
    for layer in spec.model:
        definition = system.registry.get("layer", layer.type)
        info = system.info(definition.plugin) if definition is not None else None
        if info is None or info.source == "default":
            continue
        if info.source == "entry point":
            found = re.match(r"distribution (\S+) (\S+)$", info.origin)
            if found and f"{found[1]}=={found[2]}" not in requirements:
                requirements.append(f"{found[1]}=={found[2]}")
        elif info.path is not None and info.path.is_file() and info.path not in files:
            files.append(info.path)
    return files, requirements


def model_card(spec: Any, data: Any, target: str, choice: Choice, ops: list[str], plugins: list[Path]) -> dict:
    """card.json: what the model takes (the feature names, in order) and gives (the class names in
    index order), the preprocessing applied first, its ops and plugins, and why these weights."""
    from knightctl.plugins.files import file_digest
    from knightctl.tracking.servedmodel import CARD_VERSION  # it imports mlflow.pyfunc: only when logging

    return {
        "card_version": CARD_VERSION,
        "spec_name": spec.name,
        "spec_digest": spec.digest(),
        "feature_names": list(data.feature_names),
        "class_names": list(data.class_names) if data.class_names else None,
        "target": target,
        "preprocessing": data.preprocessing.steps(),  # [] or the standardize step: training/preprocessing.py
        "custom_ops": ops,
        "plugins": [{"file": path.name, "sha256": file_digest(path)} for path in plugins],
        "chosen": {"kind": choice.kind, "step": choice.step, "metric": choice.metric, "value": choice.value},
        "why": choice.why(),
        "requirements": [],
    }


def log_model_of_record(
    spec: Any, system: Any, model: Any, data: Any, target: str, choice: Choice, tags: Mapping[str, str]
) -> Any:
    """Log `model` (a CPU copy in eval mode) as the active run's model of record; its ModelInfo."""
    import mlflow.pyfunc
    import pandas as pd
    import torch
    from mlflow.models import infer_signature

    from knightctl.tracking.servedmodel import answers

    example_rows = data.train_x[:5].detach().cpu()
    program = torch.export.export(model, (example_rows,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    ops = custom_ops(program)
    files, plugin_requirements = plugin_files(spec, system)
    card = model_card(spec, data, target, choice, ops, files)
    card["requirements"] = plugin_requirements
    # Raw rows, as a user's table holds them (predict standardises them again), in float64 columns:
    # the signature then takes any number a table holds; predict casts to float32.
    raw_rows = data.standardization.raw(example_rows) if data.standardization is not None else example_rows
    example = pd.DataFrame(raw_rows.double().numpy(), columns=list(data.feature_names))
    with torch.no_grad():
        output = pd.DataFrame(answers(model(example_rows), target, data.class_names))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        torch.export.save(program, root / "model.pt2")
        (root / "card.json").write_text(json.dumps(card, indent=2) + "\n")
        (root / "served_model.py").write_text(_MODEL_CODE)
        artifacts = {"graph": str(root / "model.pt2"), "card": str(root / "card.json")}
        if files:
            (root / "plugins").mkdir()
            for path in files:
                shutil.copyfile(path, root / "plugins" / path.name)
            artifacts["plugins"] = str(root / "plugins")
        code = root / "code" / "knightctl"
        shutil.copytree(_PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__"))
        chatter = logging.getLogger("mlflow.pyfunc")  # "Validating input example ...": MLflow's, not news
        level = chatter.level
        chatter.setLevel(max(level, logging.WARNING))
        try:
            return mlflow.pyfunc.log_model(
                name=model_name(spec.name),
                python_model=str(root / "served_model.py"),
                artifacts=artifacts,
                code_paths=[str(code)],
                signature=infer_signature(example, output),
                input_example=example,
                # Naming the requirements skips MLflow's inference, which reloads the model in a
                # subprocess (seconds). Local version suffixes (+cpu, +cu124) are not installable.
                pip_requirements=[*_runtime_requirements(), *plugin_requirements],
                step=choice.step,
                tags=dict(tags),
                registered_model_name=spec.tracking.register_model,
                await_registration_for=0,  # a model version is READY at once in MLflow's own stores
            )
        finally:
            chatter.setLevel(level)


def model_description(spec: Any, choice: Choice, data: Any, target: str) -> str:
    """The logged model's description (`mlflow.note.content`): which step and why, what goes in and out."""
    classes = f"; classes, in index order: {', '.join(data.class_names)}" if data.class_names else ""
    scaled = (
        " The model standardises it first with the training split's mean and standard deviation (card.json's "
        "preprocessing); the torch module takes standardised rows."
        if data.standardization is not None
        else ""
    )
    gives = {"real": "the predicted value", "binary": "the class and its probability"}.get(
        target, "the class and each class's probability"
    )
    return (
        f"{spec.name}'s model of record: {choice.why()}.\n\n"
        f"Input: a table with the columns {', '.join(data.feature_names)}.{scaled} Output: {gives}{classes}.\n\n"
        "Load it with `mlflow.pyfunc.load_model(uri).predict(rows)`; the torch module is "
        "`.unwrap_python_model().module`."
    )


def _runtime_requirements() -> list[str]:
    pinned = []
    for name in _RUNTIME:
        try:
            pinned.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:  # not installed as a distribution: nothing to pin
            continue
    return pinned
