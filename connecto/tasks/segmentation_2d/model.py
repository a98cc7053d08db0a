"""A 2D U-Net (valid convolutions) on a stack of sections, with an affinity head and a
2D LSD head, and its masked loss.

The sections z-k..z+k are the input channels; the outputs belong to section z alone.
They keep a z axis of length one, (b, C, 1, y, x), because training runs in gunpowder's 3D
world, where the centre section is a 3D array one section deep.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from connecto import ConnectoError
from connecto.tasks.segmentation.model import MtlsdLoss, UNet, output_shape

LSD_2D_CHANNELS = 6  # mean offset (2), covariance (2), pearson (1), size (1)
MODEL_KEYS = (
    "context_sections, input_shape, fmaps, fmap_inc_factor, downsample_factors, lsds, neighborhood"
)


def output_shape_2d(
    input_shape: Sequence[int], downsample_factors: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The U-Net's (y, x) output for a (y, x) input; ConnectoError if it does not pool
    evenly. The same arithmetic as the 3D U-Net's: same kernel and convolutions per level."""
    if len(input_shape) != 2 or any(len(f) != 2 for f in downsample_factors):
        raise ConnectoError(
            f"input_shape {list(input_shape)} and downsample_factors "
            f"{[list(f) for f in downsample_factors]} must be (y, x) pairs for a 2D U-Net"
        )
    y, x = output_shape(input_shape, downsample_factors)
    return int(y), int(x)


class SectionModel(nn.Module):
    """raw sections (b, 2k+1, y, x) -> (LSDs (b, 6, 1, y', x'), affinities
    (b, n_offsets, 1, y', x')), both in [0, 1]; `lsds=False` gives no LSD channels."""

    def __init__(
        self, in_channels: int, num_affinities: int, num_fmaps: int = 12,
        fmap_inc_factor: int = 5, downsample_factors: Sequence[Sequence[int]] = ((2, 2), (2, 2)),
        lsds: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet = UNet(in_channels, num_fmaps, fmap_inc_factor, downsample_factors, dims=2)
        self.lsd_head = nn.Conv2d(num_fmaps, LSD_2D_CHANNELS, 1) if lsds else None
        self.aff_head = nn.Conv2d(num_fmaps, num_affinities, 1)

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.unet(raw)
        affs = torch.sigmoid(self.aff_head(features)).unsqueeze(2)
        if self.lsd_head is None:
            return torch.zeros_like(affs[:, :0]), affs
        return torch.sigmoid(self.lsd_head(features)).unsqueeze(2), affs


# weighted MSE of affinities and LSDs: weights 0 where unlabelled (`MaskedMseLoss`)
MaskedMseLoss = MtlsdLoss


def build_model(config: Any) -> SectionModel:
    """The model of a `Segmentation2dTrainConfig` (typed loosely: the config module
    imports this one)."""
    return SectionModel(
        in_channels=2 * config.context_sections + 1,
        num_affinities=len(config.neighborhood),
        num_fmaps=config.fmaps,
        fmap_inc_factor=config.fmap_inc_factor,
        downsample_factors=config.downsample_factors,
        lsds=config.lsds,
    )
