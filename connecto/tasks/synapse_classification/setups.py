"""Predict setups of synapse classification: one per checkpoint iteration, numbered across
the experiment (synister numbers them per experiment so collection names never collide)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.config import write_config
from connecto.experiment import (
    PREDICT_DIR,
    PREDICT_NAME,
    PredictSetup,
    TrainSetup,
    missing_directories,
    remove_created,
)
from connecto.tasks.synapse_classification.config import SynapsePredictConfig, SynapseTrainConfig


def next_predict_id(train: TrainSetup) -> int:
    """The next free predict number across the experiment (synister numbers them per
    experiment so collection names never collide)."""
    root = train.base / train.experiment / PREDICT_DIR
    used = [int(m.group(2)) for p in root.glob("setup_t*_p*") if (m := PREDICT_NAME.match(p.name))]
    return max(used, default=-1) + 1


PredictionCheck = Callable[[list[tuple[PredictSetup, SynapsePredictConfig]]], Any]


def prepare_prediction(
    train: TrainSetup,
    iterations: list[int],
    split_part: str = "test",
    overwrite: bool = False,
    check: PredictionCheck | None = None,
    number_by_iteration: bool = False,
) -> list[tuple[PredictSetup, SynapsePredictConfig]]:
    """One predict setup per iteration, pointing at `model_checkpoint_<it>`. Its
    `predict_number` (the `p<M>` of its collection) is the setup's number, as synister's
    prepare_prediction.py numbers them, or with `number_by_iteration` the checkpoint
    iteration, as synister's predict.py does. `check` sees the planned (setup, config)
    pairs before anything is created and refuses by raising; then nothing is created, and
    a failure while writing takes back every setup of the call."""
    train_config = train.train_config()
    if not isinstance(train_config, SynapseTrainConfig):
        raise ConnectoError(
            f"{train.path}: prepare-prediction is for synapse classification; "
            "segmentation predicts with `connecto segment predict`"
        )
    model_keys = set(SynapsePredictConfig.model_fields) & set(SynapseTrainConfig.model_fields)
    shared = train_config.model_dump(include=model_keys)
    worker = train.worker_config()
    first = next_predict_id(train)
    planned = []
    for offset, iteration in enumerate(iterations):
        setup = train.predict_setup(first + offset)
        config = SynapsePredictConfig(
            **shared,
            train_checkpoint=str(train.checkpoint(iteration)),
            experiment=train.experiment,
            train_number=train.train_id,
            predict_number=iteration if number_by_iteration else setup.predict_id,
            split_part=split_part,  # type: ignore[arg-type]
            overwrite=overwrite,
        )
        planned.append((setup, config))
    if check is not None:
        check(planned)
    root = train.base / train.experiment / PREDICT_DIR
    root_created = missing_directories(root)
    made: list[Path] = []
    try:
        for setup, config in planned:
            try:
                setup.path.mkdir(parents=True)
            except FileExistsError:
                raise ConnectoError(
                    f"{setup.path} appeared meanwhile (another prepare-prediction or predict "
                    "in this experiment?); run again"
                ) from None
            made.append(setup.path)
            write_config(setup.path / "predict_config.toml", config)
            write_config(setup.path / "worker_config.toml", worker)
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
        remove_created(root_created)
        raise
    return planned
