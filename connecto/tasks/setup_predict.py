"""Which task's `connecto predict` runs in a setup directory.

`connecto predict` was written for synapse classification (one document per synapse in
MongoDB). A task that predicts volumes instead gives its `predict` module a
`predict_in_setup(path, split, iterations, all_checkpoints, overwrite) -> [lines]`; run in
a train (or predict) setup of such a task, `connecto predict` calls it. Every other setup,
and every directory that is not a setup, goes the synapse way, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from connecto import ConnectoError
from connecto.config import find_config, read_toml
from connecto.experiment import PredictSetup, find_setup
from connecto.tasks import DEFAULT_TASK, TASKS, task_module

SetupPredictor = Callable[..., list[str]]


def setup_predictor(path: Path) -> SetupPredictor | None:
    """The `predict_in_setup` of the task of the setup at `path`, None when the task has
    none (or `path` is no setup: the synapse path reports that)."""
    try:
        setup = find_setup(path)
        train = setup.train_setup if isinstance(setup, PredictSetup) else setup
        config = find_config(train.path, "train_config")
    except ConnectoError:
        return None
    if config.suffix != ".toml":  # synister's INI configs are synapse classification
        return None
    task = read_toml(config).get("task", DEFAULT_TASK)
    if task not in TASKS or task == DEFAULT_TASK:
        return None
    try:
        module = task_module(task, "predict", str(config))
    except ModuleNotFoundError:  # a task without a predict module
        return None
    return getattr(module, "predict_in_setup", None)
