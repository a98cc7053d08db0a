"""The 2D->3D network: the segmentation task's U-Net (valid convolutions, so blockwise
prediction tiles seamlessly) on the stacked 2D predictions, one head of 3D affinities.
Its loss is the segmentation task's weighted MSE (weights: `BalanceLabels`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from connecto.tasks.affinities_from_2d.config import AffinitiesFrom2dTrainConfig
from connecto.tasks.segmentation.model import MtlsdLoss, UNet

AffinitiesLoss = MtlsdLoss  # called with affinities, target and weights only


class AffinitiesFrom2dModel(nn.Module):
    """(b, in_channels, z, y, x) stacked 2D predictions -> (b, n_offsets, z', y', x')
    3D affinities in [0, 1] (z', y', x': `output_shape` of the input's shape)."""

    def __init__(
        self, in_channels: int, num_affinities: int, num_fmaps: int = 12,
        fmap_inc_factor: int = 5,
        downsample_factors: Sequence[Sequence[int]] = ((1, 2, 2), (1, 2, 2)),
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet = UNet(in_channels, num_fmaps, fmap_inc_factor, downsample_factors)
        self.aff_head = nn.Conv3d(num_fmaps, num_affinities, 1)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.aff_head(self.unet(stack)))


def build_model(config: AffinitiesFrom2dTrainConfig) -> AffinitiesFrom2dModel:
    return AffinitiesFrom2dModel(
        in_channels=config.in_channels, num_affinities=len(config.neighborhood),
        num_fmaps=config.fmaps, fmap_inc_factor=config.fmap_inc_factor,
        downsample_factors=config.downsample_factors,
    )  # fmt: skip
