"""A compact 3D U-Net (valid convolutions) and the multi-task LSD model (MTLSD) on top:
one head for the 10 local shape descriptors, one for the affinities.

Valid convolutions make the output smaller than the input by a fixed context, so
blockwise prediction tiles seamlessly; `output_shape` computes it (and refuses input
shapes that do not pool evenly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from connecto import ConnectoError

LSD_CHANNELS = 10
KERNEL = 3
CONVS_PER_LEVEL = 2


def output_shape(input_shape: Sequence[int], downsample_factors: Sequence[Sequence[int]]) -> tuple:
    """The U-Net's output shape for `input_shape` (voxels); ConnectoError if a level's
    feature map does not divide by its downsampling factor."""
    shrink = CONVS_PER_LEVEL * (KERNEL - 1)
    shape = list(input_shape)
    for level, factors in enumerate(downsample_factors):
        shape = [s - shrink for s in shape]
        if any(s <= 0 or s % f for s, f in zip(shape, factors, strict=True)):
            raise ConnectoError(
                f"input_shape {tuple(input_shape)}: the feature map {tuple(shape)} at level "
                f"{level} does not divide by the downsampling {tuple(factors)}"
            )
        shape = [s // f for s, f in zip(shape, factors, strict=True)]
    shape = [s - shrink for s in shape]
    for factors in reversed(downsample_factors):
        shape = [s * f - shrink for s, f in zip(shape, factors, strict=True)]
    if any(s <= 0 for s in shape):
        raise ConnectoError(f"input_shape {tuple(input_shape)} is too small for this U-Net")
    return tuple(shape)


def raw_channels(raw: Any) -> int:
    """The channels of a raw volume: 1 for (z, y, x), C for (C, z, y, x)."""
    extra = len(raw.shape) - raw.voxel_size.dims
    if extra == 0:
        return 1
    if extra == 1:
        return int(raw.shape[0])
    raise ConnectoError(f"raw of shape {tuple(raw.shape)}: expected (z, y, x) or (c, z, y, x)")


def check_raw_channels(raw: Any, in_channels: int, source: str) -> None:
    """The model's `in_channels` must be the raw's channel count."""
    channels = raw_channels(raw)
    if channels != in_channels:
        raise ConnectoError(
            f"{source}: key 'in_channels' = {in_channels}: the raw dataset has {channels} "
            f"channel(s) (shape {list(raw.shape)}); set in_channels = {channels}"
        )


# per number of spatial dimensions: convolution, pooling, transposed convolution
LAYERS = {
    2: (nn.Conv2d, nn.MaxPool2d, nn.ConvTranspose2d),
    3: (nn.Conv3d, nn.MaxPool3d, nn.ConvTranspose3d),
}


def check_output_shape(
    input_shape: Sequence[int],
    downsample_factors: Sequence[Sequence[int]],
    given: Sequence[int] | None,
) -> tuple:
    """`output_shape` for a config validator: ValueError (pydantic's) when the input does
    not fit the U-Net or a `given` output_shape differs from the network's."""
    try:
        computed = output_shape(input_shape, downsample_factors)
    except ConnectoError as error:
        raise ValueError(str(error)) from None
    if given is not None and tuple(given) != computed:
        raise ValueError(
            f"output_shape {list(given)} differs from the network's {list(computed)} for "
            f"input_shape {list(input_shape)}"
        )
    return computed


def _conv_pass(in_channels: int, out_channels: int, dims: int = 3) -> nn.Sequential:
    conv = LAYERS[dims][0]
    layers: list[nn.Module] = []
    for i in range(CONVS_PER_LEVEL):
        layers += [conv(in_channels if i == 0 else out_channels, out_channels, KERNEL),
                   nn.ReLU(inplace=True)]  # fmt: skip
    return nn.Sequential(*layers)


def _center_crop(tensor: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    offsets = [(s - t) // 2 for s, t in zip(tensor.shape[2:], shape, strict=True)]
    index = tuple(slice(o, o + t) for o, t in zip(offsets, shape, strict=True))
    return tensor[(slice(None), slice(None), *index)]


class UNet(nn.Module):
    """(b, in_channels, *spatial) -> (b, num_fmaps, *smaller), `dims` spatial dimensions
    (3, or 2 for sections)."""

    def __init__(
        self, in_channels: int, num_fmaps: int, fmap_inc_factor: int,
        downsample_factors: Sequence[Sequence[int]], dims: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        _, pool, transposed = LAYERS[dims]
        levels = len(downsample_factors)
        fmaps = [num_fmaps * fmap_inc_factor**level for level in range(levels + 1)]
        self.down = nn.ModuleList(
            _conv_pass(in_channels if level == 0 else fmaps[level - 1], fmaps[level], dims)
            for level in range(levels)
        )
        self.pool = nn.ModuleList(pool(tuple(f)) for f in downsample_factors)
        self.bottom = _conv_pass(fmaps[levels - 1] if levels else in_channels, fmaps[levels], dims)
        self.up = nn.ModuleList(
            transposed(fmaps[level + 1], fmaps[level + 1], tuple(f), stride=tuple(f))
            for level, f in enumerate(downsample_factors)
        )
        self.up_conv = nn.ModuleList(
            _conv_pass(fmaps[level] + fmaps[level + 1], fmaps[level], dims)
            for level in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for conv, pool in zip(self.down, self.pool, strict=True):
            x = conv(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for level in reversed(range(len(self.down))):
            x = self.up[level](x)
            x = torch.cat([_center_crop(skips[level], x.shape[2:]), x], dim=1)
            x = self.up_conv[level](x)
        return x


class MtlsdModel(nn.Module):
    """raw (b, in_channels, z, y, x) -> (LSDs (b, 10, ...), affinities (b, n_offsets, ...)),
    both in [0, 1]; `lsds=False` drops the LSD head (affinities only)."""

    def __init__(
        self, num_affinities: int, num_fmaps: int = 12, fmap_inc_factor: int = 5,
        downsample_factors: Sequence[Sequence[int]] = ((2, 2, 2), (2, 2, 2)),
        lsds: bool = True, in_channels: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.in_channels = in_channels
        self.unet = UNet(in_channels, num_fmaps, fmap_inc_factor, downsample_factors)
        self.lsd_head = nn.Conv3d(num_fmaps, LSD_CHANNELS, 1) if lsds else None
        self.aff_head = nn.Conv3d(num_fmaps, num_affinities, 1)

    def forward(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if raw.dim() == 4 and self.in_channels == 1:  # single-channel batches have no channel axis
            raw = raw.unsqueeze(1)
        features = self.unet(raw)
        affs = torch.sigmoid(self.aff_head(features))
        if self.lsd_head is None:
            return torch.zeros_like(affs[:, :0]), affs
        return torch.sigmoid(self.lsd_head(features)), affs


class MtlsdLoss(nn.Module):
    """Weighted MSE of affinities (weights: class balance and labelled mask) plus, when
    given, of the LSDs (weights: where labels are known)."""

    def forward(
        self, affs: torch.Tensor, gt_affs: torch.Tensor, affs_weights: torch.Tensor,
        lsds: torch.Tensor | None = None, gt_lsds: torch.Tensor | None = None,
        lsds_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        loss = (affs_weights * (affs - gt_affs) ** 2).mean()
        if lsds is not None and gt_lsds is not None and lsds_weights is not None:
            loss = loss + (lsds_weights * (lsds - gt_lsds) ** 2).mean()
        return loss


def build_mtlsd(config: object) -> MtlsdModel:
    """The model of a `SegmentationTrainConfig`."""
    return MtlsdModel(
        num_affinities=len(config.neighborhood),  # type: ignore[attr-defined]
        num_fmaps=config.fmaps,  # type: ignore[attr-defined]
        fmap_inc_factor=config.fmap_inc_factor,  # type: ignore[attr-defined]
        downsample_factors=config.downsample_factors,  # type: ignore[attr-defined]
        lsds=config.lsds,  # type: ignore[attr-defined]
        in_channels=getattr(config, "in_channels", 1),
    )
