"""The pixel-embedding network and PRISM's contrastive objective.

Network: connecto's 3D U-Net (valid convolutions) over all C input channels, then a
per-voxel MLP (1x1x1 convolutions) to D channels. Its output is left unnormalised: the
loss normalises where it compares directions and regularises the norm towards 1;
prediction normalises (`unit_embedding`).

Loss, over the labelled voxels of the whole batch (the same id in two samples of a batch
is the same neuron of the same volume), with mu_k the mean raw output of object k:
- intra: -mean over objects of the mean cosine similarity of its voxels to mu_k;
- uniformity: log(mean over pairs i < j of exp(-t ||m_i - m_j||^2)) / (2t) + 1 with m_k
  = mu_k / |mu_k| (Wang & Isola's Gaussian potential, scaled as PRISM does to [-1, 1]:
  1 when all means coincide, 0 for orthogonal means);
- norm: mean squared difference of each voxel's output and its unit vector.
Background (label 0) and voxels outside the mask are never selected, so they get no
gradient at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from connecto.tasks.segmentation.model import UNet

MODEL_KEYS = (
    "in_channels, fmaps, fmap_inc_factor, downsample_factors, embedding_dims, head_fmaps, "
    "head_layers"
)


class PixelEmbeddingModel(nn.Module):
    """(b, C, z, y, x) -> (b, D, z', y', x'), unnormalised."""

    def __init__(
        self, in_channels: int, embedding_dims: int = 24, num_fmaps: int = 12,
        fmap_inc_factor: int = 5,
        downsample_factors: Sequence[Sequence[int]] = ((1, 2, 2), (2, 2, 2)),
        head_fmaps: int = 64, head_layers: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet = UNet(in_channels, num_fmaps, fmap_inc_factor, downsample_factors, dims=3)
        layers: list[nn.Module] = []
        width = num_fmaps
        for _ in range(head_layers):
            layers += [nn.Conv3d(width, head_fmaps, 1), nn.ReLU(inplace=True)]
            width = head_fmaps
        layers.append(nn.Conv3d(width, embedding_dims, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if raw.dim() == 4:  # one volume without a batch axis
            raw = raw.unsqueeze(0)
        return self.head(self.unet(raw))


def unit_embedding(output: torch.Tensor) -> torch.Tensor:
    """The network's output (b, D, ...) scaled to unit length per voxel."""
    return functional.normalize(output, p=2, dim=1, eps=1e-8)


class ContrastiveEmbeddingLoss(nn.Module):
    """PRISM's uniform-embedding objective (see the module docstring)."""

    def __init__(
        self, temperature: float = 2.0, intra_weight: float = 1.0,
        uniformity_weight: float = 1.0, norm_weight: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.temperature = temperature
        self.intra_weight = intra_weight
        self.uniformity_weight = uniformity_weight
        self.norm_weight = norm_weight

    def terms(
        self, embedding: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """`intra` (mean cosine similarity to the object's mean, higher is better),
        `uniformity` and `norm` of `embedding` (b, D, z, y, x) over the voxels where
        `labels` (b, z, y, x) is not 0 and `mask` (same shape) is not 0; `objects`."""
        dims = embedding.shape[1]
        vectors = embedding.movedim(1, -1).reshape(-1, dims)
        ids = labels.reshape(-1).to(torch.int64)
        keep = ids != 0
        if mask is not None:
            keep &= mask.reshape(-1) != 0
        zero = embedding.sum() * 0.0  # keeps the graph for a batch without objects
        if not bool(keep.any()):
            return {"intra": zero, "uniformity": zero, "norm": zero, "objects": zero.detach()}
        vectors = vectors[keep]
        objects, inverse = torch.unique(ids[keep], return_inverse=True)
        count = objects.numel()
        sizes = torch.bincount(inverse, minlength=count).to(vectors.dtype)
        means = vectors.new_zeros(count, dims).index_add(0, inverse, vectors) / sizes[:, None]
        cosine = functional.cosine_similarity(vectors, means[inverse], dim=1, eps=1e-8)
        intra = (vectors.new_zeros(count).index_add(0, inverse, cosine) / sizes).mean()
        if count > 1:
            unit = functional.normalize(means, p=2, dim=1, eps=1e-8)
            first, second = torch.triu_indices(count, count, 1, device=unit.device)
            squared = (unit[first] - unit[second]).pow(2).sum(dim=1)
            potential = torch.logsumexp(-self.temperature * squared, 0) - math.log(first.numel())
            uniformity = potential / (2 * self.temperature) + 1
        else:
            uniformity = zero
        norm = (vectors - functional.normalize(vectors, p=2, dim=1, eps=1e-8)).pow(2).mean()
        return {"intra": intra, "uniformity": uniformity, "norm": norm,
                "objects": torch.tensor(float(count))}  # fmt: skip

    def forward(
        self, embedding: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:  # fmt: skip
        terms = self.terms(embedding, labels, mask)
        return (
            -self.intra_weight * terms["intra"]
            + self.uniformity_weight * terms["uniformity"]
            + self.norm_weight * terms["norm"]
        )


def build_model(config: Any) -> PixelEmbeddingModel:
    """The model of a pixel-embedding train config."""
    return PixelEmbeddingModel(
        config.in_channels, config.embedding_dims, config.fmaps, config.fmap_inc_factor,
        config.downsample_factors, config.head_fmaps, config.head_layers,
    )  # fmt: skip


def build_loss(config: Any) -> ContrastiveEmbeddingLoss:
    return ContrastiveEmbeddingLoss(
        config.temperature, config.intra_weight, config.uniformity_weight, config.norm_weight
    )
