"""The masked focal loss of barcode expression (the network is barcode-enhancement's
channel-agnostic U-Net, its output read as logits)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


class MaskedFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al. 2017) of logits against 0/1 targets, averaged over
    the voxels with weight: `sum(weights * focal) / sum(weights)`; weight 0 adds no loss
    and no gradient, a batch without weight gives 0. Foreground per channel is rare in
    a barcoded volume; the focal term keeps the many easy background voxels from
    dominating."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0) -> None:
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:  # fmt: skip
        entropy = functional.binary_cross_entropy_with_logits(prediction, target, reduction="none")
        probability = torch.sigmoid(prediction)
        p_true = probability * target + (1 - probability) * (1 - target)
        focal = entropy * (1 - p_true) ** self.gamma
        focal = focal * (self.alpha * target + (1 - self.alpha) * (1 - target))
        return (weights * focal).sum() / weights.sum().clamp(min=1e-6)
