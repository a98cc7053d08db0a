"""The configs of synapse classification (synister): `train_config.toml` and
`predict_config.toml` (or synister's INI files, converted by `connecto config convert`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from connecto import ConnectoError
from connecto.config import (
    ConfigModel,
    ExperimentName,
    PositiveInt,
    Shape3,
    SplitName,
    SplitPart,
    TrainingSettings,
    WorkerConfig,
    checkpoint_iteration,
    load_config,
    parse_ini,
)
from connecto.names import check_name, predictions_database_name

NAME = "synapse-classification"


def _data_database_name(value: str) -> str:
    """A data database name whose `<name>_predictions` twin is a valid name as well."""
    check_name("database name", value)
    check_name("database name", predictions_database_name(value))
    return value


DataDatabaseName = Annotated[str, AfterValidator(_data_database_name)]
DataDatabaseName = Annotated[str, AfterValidator(_data_database_name)]


class SynapseModelConfig(ConfigModel):
    """The VGG and the data it reads: shared by training and prediction."""

    task: Literal["synapse-classification"] = "synapse-classification"
    synapse_types: list[str] = Field(min_length=2)
    neither_class: bool = Field(default=False, description="add a 'neither' output class")
    input_shape: Shape3 = (16, 160, 160)
    fmaps: PositiveInt = 12
    fmap_inc: list[PositiveInt] = Field(default_factory=lambda: [2, 2, 2, 2])
    n_convolutions: list[PositiveInt] = Field(default_factory=lambda: [2, 2, 2, 2])
    downsample_factors: list[Shape3] = Field(
        default_factory=lambda: [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    )
    classifier_width: PositiveInt = Field(
        default=4096, description="width of the VGG's two hidden fully connected layers"
    )
    network: Literal["VGG", "ResNet18"] = Field(
        default="VGG", description="ResNet18: the synapse-contrastive encoder + a linear layer"
    )
    resnet_width: PositiveInt = Field(
        default=64, description="ResNet18 only: stem width (64: 512 features)"
    )
    network_appendix: str | None = None
    batch_size: PositiveInt = 8
    db_credentials: str | None = Field(default=None, description="synister credentials INI")
    db_name_data: DataDatabaseName
    split_name: SplitName
    voxel_size: Shape3 = (40, 4, 4)
    raw_container: str
    raw_dataset: str

    @model_validator(mode="after")
    def _check_architecture(self) -> SynapseModelConfig:
        levels = len(self.downsample_factors)
        for key in ("fmap_inc", "n_convolutions"):
            if len(getattr(self, key)) != levels:
                raise ValueError(
                    f"{key} has {len(getattr(self, key))} entries, expected one per "
                    f"downsampling level ({levels}, from downsample_factors)"
                )
        total = [math.prod(f[d] for f in self.downsample_factors) for d in range(3)]
        vgg = self.network == "VGG"  # the ResNet pools globally: any input_shape fits
        if vgg and any(s % t for s, t in zip(self.input_shape, total, strict=True)):
            raise ValueError(
                f"input_shape {self.input_shape} is not divisible by the total "
                f"downsampling {tuple(total)} of downsample_factors"
            )
        if len(set(self.synapse_types)) != len(self.synapse_types):
            raise ValueError(f"synapse_types {self.synapse_types} has duplicates")
        return self

    @property
    def class_names(self) -> list[str]:
        return [*self.synapse_types, *(["neither"] if self.neither_class else [])]


class SynapseTrainConfig(SynapseModelConfig, TrainingSettings):
    ini_section: ClassVar[str | None] = "Training"

    init_from: str | None = Field(
        default=None,
        description="a synapse-contrastive model_checkpoint_<N>: its encoder starts the ResNet18",
    )

    @model_validator(mode="after")
    def _check_init_from(self) -> SynapseTrainConfig:
        if self.init_from is not None and self.network != "ResNet18":
            raise ValueError(
                f"init_from = {self.init_from!r} needs network = 'ResNet18' (the pretrained "
                f"encoder), not {self.network!r}"
            )
        return self


class SynapsePredictConfig(SynapseModelConfig):
    """One prediction run (synister's `[Predict]`): the training's model and data keys
    plus which checkpoint, which split part, and where the results go."""

    ini_section: ClassVar[str | None] = "Predict"

    train_checkpoint: str
    experiment: ExperimentName
    train_number: Annotated[int, Field(ge=0)]
    predict_number: Annotated[int, Field(ge=0)]
    split_part: SplitPart = "test"
    overwrite: bool = False

    @property
    def iteration(self) -> int:
        return checkpoint_iteration(self.train_checkpoint)


TrainConfig = SynapseTrainConfig
# synister's INI sections -> (model, TOML file stem)
INI_MODELS: dict[str, tuple[type[BaseModel], str]] = {
    "Training": (SynapseTrainConfig, "train_config"),
    "Worker": (WorkerConfig, "worker_config"),
    "Predict": (SynapsePredictConfig, "predict_config"),
}


def convert_ini(path: Path) -> tuple[BaseModel, str]:
    """Load a synister INI into its model; returns (config, TOML file stem)."""
    parser = parse_ini(path)
    known = [s for s in parser.sections() if s in INI_MODELS]
    if len(known) != 1:
        raise ConnectoError(
            f"{path}: expected one synister section ([Training], [Worker] or [Predict]), "
            f"found {parser.sections() or 'none'}"
        )
    model, stem = INI_MODELS[known[0]]
    return load_config(path, model), stem
