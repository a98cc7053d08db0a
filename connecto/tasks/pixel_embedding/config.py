"""The train config of pixel embedding (`task = "pixel-embedding"`).

The data is one container in the format `connecto data synthesize-barcodes` writes:
`raw` (C, z, y, x) (or the enhancement task's `enhanced`, via `raw_container`), `labels`
(z, y, x) neuron ids, `unlabelled` (z, y, x), 1 where the truth is known. Data, ROIs,
U-Net shape and channel augmentation are those of the barcode tasks
(`ChannelAgnosticSettings`); here the network sees all channels at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from connecto.config import PositiveInt
from connecto.tasks.barcode_enhancement.config import ChannelAgnosticSettings

NAME = "pixel-embedding"


class PixelEmbeddingTrainConfig(ChannelAgnosticSettings):
    """A unit-norm embedding per voxel from the barcoded channels, trained contrastively."""

    task: Literal["pixel-embedding"] = "pixel-embedding"
    in_channels: PositiveInt = Field(
        default=18, description="raw channels (C of (C, z, y, x)); checked against the data"
    )
    mask_dataset: str | None = Field(
        default="unlabelled",
        description="1 where the labels are known; elsewhere no loss. None: all of labels",
    )
    embedding_dims: PositiveInt = Field(default=24, description="D, the embedding's length")
    head_fmaps: PositiveInt = Field(default=64, description="width of the per-voxel MLP head")
    head_layers: Annotated[int, Field(ge=0)] = Field(
        default=2, description="hidden 1x1x1 layers of the head (0: one linear layer)"
    )
    temperature: float = Field(
        default=2.0, gt=0, description="t of the uniformity term exp(-t ||mu_i - mu_j||^2)"
    )
    intra_weight: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="weight of the pull of voxels to their object's mean"
    )
    uniformity_weight: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="weight of the spread of object means over the sphere"
    )
    norm_weight: Annotated[float, Field(ge=0)] = Field(
        default=1.0, description="weight of the unit-norm regulariser of the raw output"
    )


TrainConfig = PixelEmbeddingTrainConfig
