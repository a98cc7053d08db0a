"""The train config of barcode enhancement (`task = "barcode-enhancement"`), and the
settings every channel-agnostic barcode task shares (`ChannelAgnosticSettings`).

The data is one container in the format `connecto data synthesize-barcodes` writes: `raw`
(C, z, y, x) uint8, `average_barcode` (C, z, y, x) float32 in [0, 1], `unlabelled`
(z, y, x), 1 where the truth is known. Shapes are voxels (z, y, x), the same for every
channel: the network never sees more than one channel at a time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from connecto.config import PositiveInt, Shape3, TrainingSettings
from connecto.tasks.channel_augment import ChannelAugmentConfig

NAME = "barcode-enhancement"
ROI_KEYS = ("train_roi", "validation_roi", "test_roi")


class ChannelAgnosticSettings(TrainingSettings):
    """Data, ROIs, U-Net and channel augmentation of a channel-agnostic barcode task."""

    container: str = Field(description="zarr with the truth arrays (synthesize-barcodes)")
    raw_container: str | None = Field(
        default=None, description="zarr with the network's input; None: container"
    )
    raw_dataset: str = "raw"
    labels_dataset: str = Field(
        default="labels", description="neuron ids in container: per-neuron scores of predictions"
    )
    voxel_size: Shape3 | None = Field(
        default=None, description="[z, y, x] nm, checked against the data; None: the raw's"
    )
    train_roi: list[list[int]] | None = Field(
        default=None, description="[[z, y, x] offset nm, [z, y, x] shape nm]; None: all"
    )
    validation_roi: list[list[int]] | None = None
    test_roi: list[list[int]] | None = None
    min_masked: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="batches whose output has a smaller share of loss-carrying "
        "voxels are redrawn; 0: keep every batch",
    )
    input_shape: Shape3 = (36, 84, 84)
    output_shape: Shape3 | None = Field(
        default=None, description="None: computed from input_shape (valid convolutions)"
    )
    fmaps: PositiveInt = 12
    fmap_inc_factor: PositiveInt = 5
    downsample_factors: list[Shape3] = Field(default_factory=lambda: [(1, 2, 2), (2, 2, 2)])
    batch_size: PositiveInt = 1
    learning_rate: float = Field(default=5e-5, gt=0)
    channel_augment: ChannelAugmentConfig = Field(default_factory=ChannelAugmentConfig)

    @model_validator(mode="after")
    def _check_shapes_and_rois(self) -> ChannelAgnosticSettings:
        from connecto.tasks.segmentation.model import check_output_shape

        check_output_shape(self.input_shape, self.downsample_factors, self.output_shape)
        for key in ROI_KEYS:
            value = getattr(self, key)
            if value is not None and (len(value) != 2 or any(len(p) != 3 for p in value)):
                raise ValueError(f"{key} must be [[z, y, x] offset, [z, y, x] shape] in nm")
        return self

    @property
    def input_source(self) -> str:
        return self.raw_container or self.container

    @property
    def network_output_shape(self) -> tuple[int, int, int]:
        from connecto.tasks.segmentation.model import output_shape

        return output_shape(self.input_shape, self.downsample_factors)  # type: ignore[return-value]


class BarcodeEnhancementTrainConfig(ChannelAgnosticSettings):
    """Per-object average barcodes from raw, one channel at a time."""

    task: Literal["barcode-enhancement"] = "barcode-enhancement"
    target_dataset: str = "average_barcode"
    mask_dataset: str = Field(
        default="unlabelled", description="1 where the truth is known; the loss counts there"
    )
    residual: bool = Field(
        default=True,
        description="learn average_barcode - raw (added back to raw when predicting); "
        "false: the average itself",
    )


TrainConfig = BarcodeEnhancementTrainConfig
