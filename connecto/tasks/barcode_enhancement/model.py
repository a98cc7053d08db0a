"""The channel-agnostic U-Net of PRISM's barcode tasks and the masked MSE of enhancement.

One network for every channel: (b, C, z, y, x) is folded to (b * C, 1, z, y, x), run
through connecto's 3D U-Net (valid convolutions) and a 1x1x1 head, and unfolded to
(b, C, z', y', x'). The channels never mix, so the order of the input channels only
reorders the output's, and a model trained on 18 channels predicts any number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from connecto.tasks.segmentation.model import UNet

MODEL_KEYS = "input_shape, fmaps, fmap_inc_factor, downsample_factors"


class ChannelAgnosticUNet(nn.Module):
    """(b, C, z, y, x) -> (b, C, z', y', x'): the same U-Net for each channel alone; the
    head's output is left linear (a residual, or logits for the tasks that want them)."""

    def __init__(
        self, num_fmaps: int = 12, fmap_inc_factor: int = 5,
        downsample_factors: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2)),
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet = UNet(1, num_fmaps, fmap_inc_factor, downsample_factors, dims=3)
        self.head = nn.Conv3d(num_fmaps, 1, 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() == 4:  # one volume without a batch axis
            raw = raw.unsqueeze(0)
        batch, channels, *spatial = raw.shape
        out = self.head(self.unet(raw.reshape(batch * channels, 1, *spatial)))
        return out.reshape(batch, channels, *out.shape[2:])


class MaskedMseLoss(nn.Module):
    """Weighted MSE averaged over the voxels whose weight is not 0 (PRISM's weighted MSE):
    weight 0 (unlabelled, or a channel zeroed by augmentation) adds no loss and no
    gradient; a batch without any weight gives 0."""

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:  # fmt: skip
        squared = weights * (prediction - target) ** 2
        return squared.sum() / (weights > 0).sum().clamp(min=1)


def build_model(config: Any) -> ChannelAgnosticUNet:
    """The model of a channel-agnostic train config (typed loosely: configs import this
    module's package)."""
    return ChannelAgnosticUNet(config.fmaps, config.fmap_inc_factor, config.downsample_factors)
