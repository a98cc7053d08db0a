"""The config of contrastive synapse pretraining (SynapseCLR-style SimCLR):
`train_config.toml` with `task = "synapse-contrastive"`.

The data keys are the synapse classifier's (raw container, synapse database, voxel size);
labels are never read. Without `split_name` every synapse of the database is used; with
it, those of `split_part` of that split.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from connecto.config import (
    ConfigModel,
    DatabaseName,
    PositiveInt,
    Shape3,
    SplitName,
    SplitPart,
    TrainingSettings,
)

NAME = "synapse-contrastive"

Probability = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]


def _ordered(name: str, pair: tuple[float, float]) -> None:
    if pair[0] > pair[1]:
        raise ValueError(f"{name} = {list(pair)}: expected [low, high] with low <= high")


class ContrastiveAugmentConfig(ConfigModel):
    """How the two views of a crop are drawn (each view independently). Geometric
    augmentations act in y-x only and keep the crop's centre fixed, so the synapse stays
    centred; section cutout and misalignment imitate EM section defects."""

    rotate: bool = Field(default=True, description="any in-plane angle")
    mirror_transpose: bool = Field(default=True, description="y/x mirror and transpose")
    scale: tuple[float, float] = Field(default=(0.8, 1.2), description="in-plane zoom range")
    intensity_scale: tuple[float, float] = (0.8, 1.2)
    intensity_shift: tuple[float, float] = (-0.15, 0.15)
    gamma: tuple[float, float] = Field(default=(0.7, 1.4), description="gamma on [0, 1] raw")
    noise_sigma: NonNegative = Field(default=0.05, description="max Gaussian noise sigma")
    prob_blur: Probability = 0.3
    blur_sigma: tuple[float, float] = Field(default=(0.5, 1.5), description="in-plane, voxels")
    prob_cutout: Probability = Field(default=0.05, description="per section: blanked")
    prob_misalign: Probability = Field(default=0.05, description="per section: shifted")
    max_misalign: Annotated[int, Field(ge=0)] = Field(default=4, description="voxels in y-x")

    @model_validator(mode="after")
    def _check_ranges(self) -> ContrastiveAugmentConfig:
        for key in ("scale", "intensity_scale", "intensity_shift", "gamma", "blur_sigma"):
            _ordered(key, getattr(self, key))
        if self.scale[0] <= 0 or self.gamma[0] <= 0:
            raise ValueError("scale and gamma must be positive")
        return self


class ContrastiveModelConfig(ConfigModel):
    """The encoder and the crops it reads: shared by training and embedding."""

    task: Literal["synapse-contrastive"] = "synapse-contrastive"
    input_shape: Shape3 = Field(default=(16, 128, 128), description="crop (z, y, x) voxels")
    voxel_size: Shape3 = (40, 4, 4)
    width: PositiveInt = Field(default=64, description="ResNet-18 stem width (64: 512 features)")
    projection_dim: PositiveInt = 128
    batch_size: PositiveInt = Field(default=32, description="crops per batch (2x views)")
    db_credentials: str | None = Field(default=None, description="synister credentials INI")
    db_name_data: DatabaseName
    split_name: SplitName | None = Field(default=None, description="None: every synapse")
    split_part: SplitPart | None = Field(default=None, description="with split_name")
    raw_container: str
    raw_dataset: str

    @model_validator(mode="after")
    def _check_split(self) -> ContrastiveModelConfig:
        if self.split_part is not None and self.split_name is None:
            raise ValueError(f"split_part = {self.split_part!r} needs a split_name")
        if any(s < 2 for s in self.input_shape):
            raise ValueError(f"input_shape {list(self.input_shape)}: expected >= 2 per axis")
        return self


class ContrastiveTrainConfig(ContrastiveModelConfig, TrainingSettings):
    learning_rate: float = Field(default=3e-4, gt=0)
    weight_decay: NonNegative = 1e-6
    temperature: float = Field(default=0.5, gt=0, description="NT-Xent temperature")
    augmentation: ContrastiveAugmentConfig = Field(default_factory=ContrastiveAugmentConfig)


TrainConfig = ContrastiveTrainConfig
