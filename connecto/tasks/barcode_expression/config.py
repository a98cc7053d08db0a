"""The train config of barcode expression (`task = "barcode-expression"`).

The same data, ROIs and channel-agnostic U-Net as barcode-enhancement
(`ChannelAgnosticSettings`); the target is `expression` (C, z, y, x), 1 where the voxel's
neuron expresses the channel, and the loss counts inside `border_mask` (and where the
truth is known, `unlabelled` = 1). PRISM feeds it the enhanced barcodes: point
`raw_container`/`raw_dataset` at an enhancement prediction of the same volume.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from connecto.tasks.barcode_enhancement.config import ChannelAgnosticSettings

NAME = "barcode-expression"


class BarcodeExpressionTrainConfig(ChannelAgnosticSettings):
    """Per-channel foreground (does this voxel's neuron express channel c?)."""

    task: Literal["barcode-expression"] = "barcode-expression"
    target_dataset: str = "expression"
    border_mask_dataset: str = Field(
        default="border_mask", description="1 away from object borders: the loss counts there"
    )
    unlabelled_dataset: str | None = Field(
        default="unlabelled", description="1 where the truth is known; None: everywhere"
    )
    focal_alpha: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.25, description="focal loss weight of the positive class"
    )
    focal_gamma: Annotated[float, Field(ge=0)] = Field(
        default=2.0, description="focal loss focusing exponent (0: cross-entropy)"
    )
    call_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5, description="a neuron's channel is on when its mean probability is above"
    )


TrainConfig = BarcodeExpressionTrainConfig
