"""The tasks connecto trains, one package each; `task = "..."` in train_config.toml picks one.

A task package holds at least
- `config.py`: `NAME` (the `task` value) and `TrainConfig`, the model of its train_config;
- `pipeline.py`: `task_parts(config, worker_config, source) -> TaskParts`
  (`connecto.tasks.parts`), what the generic training driver needs;
and, as the task needs them, `model.py`, `predict.py` and `evaluate.py`. Adding a task is
adding a package and a line in `TASKS`. Only the task in use is imported: a command that
loads a segmentation config never imports the synapse classifier, nor torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from connecto import ConnectoError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from connecto.tasks.parts import TaskParts

# `task` in train_config.toml -> the package under connecto/tasks/
TASKS: dict[str, str] = {
    "synapse-classification": "synapse_classification",
    "segmentation": "segmentation",
    "segmentation-2d": "segmentation_2d",
    "affinities-from-2d": "affinities_from_2d",
    "synapse-contrastive": "synapse_contrastive",
    "barcode-enhancement": "barcode_enhancement",
    "barcode-expression": "barcode_expression",
    "pixel-embedding": "pixel_embedding",
    "synapse-detection": "synapse_detection",
}
DEFAULT_TASK = "synapse-classification"  # synister's train configs name no task


def task_module(task: Any, part: str, source: str) -> ModuleType:
    """`connecto.tasks.<package of task>.<part>`; an unknown task names the key."""
    if task not in TASKS:
        raise ConnectoError(f"{source}: key 'task' = {task!r}: expected one of {', '.join(TASKS)}")
    return importlib.import_module(f"connecto.tasks.{TASKS[task]}.{part}")


def train_config_model(values: dict[str, Any], source: str) -> type[BaseModel]:
    """The train config model for the `task` in `values`."""
    return task_module(values.get("task", DEFAULT_TASK), "config", source).TrainConfig


def load_train_config(path: Path) -> Any:
    """The train config at `path` (TOML, or synister's INI), as its task's model."""
    from connecto.config import load_config, read_toml

    raw = read_toml(path) if path.suffix != ".ini" else {}
    return load_config(path, train_config_model(raw, str(path)))


def task_parts(config: Any, worker: Any, source: str) -> TaskParts:
    """What the training driver needs of the config's task (see `connecto.tasks.parts`)."""
    return task_module(config.task, "pipeline", source).task_parts(config, worker, source)
