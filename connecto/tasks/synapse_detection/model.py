"""The synapse detection network: connecto's 3D U-Net on the two marker channels with a
two-channel head (synapse mask, synapse contour), and the weighted BCE that trains it.

The head's outputs are logits; the loss applies the sigmoid itself (numerically stable),
and prediction applies it before writing probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from connecto.tasks.segmentation.model import UNet

MODEL_KEYS = "input_shape, fmaps, fmap_inc_factor, downsample_factors"
IN_CHANNELS = 2  # presynaptic marker, postsynaptic marker
OUT_CHANNELS = 2  # synapse mask, synapse contour


class SynapseUNet(nn.Module):
    """(b, 2, z, y, x) markers -> (b, 2, z', y', x') logits of mask and contour."""

    def __init__(
        self, num_fmaps: int = 12, fmap_inc_factor: int = 5,
        downsample_factors: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2)),
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet = UNet(IN_CHANNELS, num_fmaps, fmap_inc_factor, downsample_factors, dims=3)
        self.head = nn.Conv3d(num_fmaps, OUT_CHANNELS, 1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() == 4:  # one volume without a batch axis
            raw = raw.unsqueeze(0)
        return self.head(self.unet(raw))


class WeightedBceLoss(nn.Module):
    """Binary cross-entropy of logits per voxel and channel, weighted by `weights` (the
    class-balancing weight mask) and divided by the weights' sum: voxels of weight 0 add
    neither loss nor gradient; a batch without any weight gives 0."""

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:  # fmt: skip
        bce = functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return (weights * bce).sum() / weights.sum().clamp(min=1e-6)


def build_model(config: Any) -> SynapseUNet:
    """The model of a `SynapseDetectionTrainConfig` (typed loosely: no import cycle)."""
    return SynapseUNet(config.fmaps, config.fmap_inc_factor, config.downsample_factors)
