"""The contrastive synapse model (SynapseCLR-style SimCLR): a 3D ResNet-18 encoder
without the initial max-pool, aware of anisotropy, and a projection head.

Anisotropy: EM sections are often ~10x thicker than pixels are wide. Like nnU-Net's plans,
an axis is only downsampled while its current voxel size is less than twice the finest
one, so z is kept at full resolution until y and x have caught up; and a convolution
spans an axis with 3 taps only while that axis is less than 4x coarser than the finest
(else 1 tap: a 40 nm step mixes sections that barely correlate at 4 nm scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from connecto.tasks.synapse_contrastive.config import ContrastiveTrainConfig

STAGES = 4  # ResNet-18: four stages of two BasicBlocks, widths w, 2w, 4w, 8w
BLOCKS_PER_STAGE = (2, 2, 2, 2)


@dataclass(frozen=True)
class Level:
    """One resolution of the encoder: the stride that reaches it and its kernel."""

    stride: tuple[int, int, int]
    kernel: tuple[int, int, int]  # of the 3x3x3 convolutions at this resolution
    voxel_size: tuple[float, float, float]  # after `stride`


def anisotropic_levels(voxel_size: Sequence[float], steps: int = STAGES) -> list[Level]:
    """The stem's and the three stage transitions' strides and kernels for `voxel_size`
    (z, y, x): `steps` levels."""
    current = tuple(float(v) for v in voxel_size)
    levels = []
    for _ in range(steps):
        finest = min(current)
        stride = tuple(2 if v < 2 * finest else 1 for v in current)
        current = tuple(v * s for v, s in zip(current, stride, strict=True))
        finest = min(current)
        kernel = tuple(3 if v < 4 * finest else 1 for v in current)
        levels.append(Level(stride, kernel, current))  # type: ignore[arg-type]
    return levels


def _padding(kernel: Sequence[int]) -> tuple[int, ...]:
    return tuple(k // 2 for k in kernel)


class BasicBlock(nn.Module):
    """Two convolutions with batch norm and a residual connection (ResNet's BasicBlock);
    a strided 1x1x1 projection on the shortcut when shape or width changes."""

    def __init__(
        self, in_channels: int, channels: int, kernel: tuple[int, int, int],
        stride: tuple[int, int, int] = (1, 1, 1),
    ) -> None:  # fmt: skip
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, channels, kernel, stride, _padding(kernel), bias=False)
        self.bn1 = nn.BatchNorm3d(channels)
        self.conv2 = nn.Conv3d(channels, channels, kernel, 1, _padding(kernel), bias=False)
        self.bn2 = nn.BatchNorm3d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != channels or any(s != 1 for s in stride):
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm3d(channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet3dEncoder(nn.Module):
    """3D ResNet-18 (BasicBlocks [2, 2, 2, 2], widths w, 2w, 4w, 8w) without the initial
    max-pool: (N, C, z, y, x) -> (N, 8w) after global average pooling (512 for w=64).
    The stem's kernel is 7 along the axes it downsamples, else the level's kernel."""

    def __init__(self, voxel_size: Sequence[float], in_channels: int = 1, width: int = 64) -> None:
        super().__init__()
        levels = anisotropic_levels(voxel_size)
        stem = levels[0]
        kernel = tuple(7 if s == 2 else k for s, k in zip(stem.stride, stem.kernel, strict=True))
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, kernel, stem.stride, _padding(kernel), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        stages = []
        channels = width
        for index, blocks in enumerate(BLOCKS_PER_STAGE):
            out_channels = width * 2**index
            # stage 1 keeps the stem's resolution; stages 2-4 downsample once each
            level = levels[index]
            stride = (1, 1, 1) if index == 0 else level.stride
            layers = [BasicBlock(channels, out_channels, level.kernel, stride)]
            layers += [
                BasicBlock(out_channels, out_channels, level.kernel) for _ in range(blocks - 1)
            ]
            stages.append(nn.Sequential(*layers))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.feature_dim = channels
        self.levels = levels
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (N, z, y, x): one channel
            x = x.unsqueeze(1)
        return self.pool(self.stages(self.stem(x))).flatten(1)


class ProjectionHead(nn.Module):
    """SimCLR's projection: Linear, BatchNorm, ReLU, Linear (512 -> 512 -> 128)."""

    def __init__(self, in_features: int = 512, hidden: int = 512, out_features: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class ContrastiveModel(nn.Module):
    """Encoder + projection head. `forward(x)` -> the projection (N, projection_dim), what
    the NT-Xent loss compares; `features(x)` -> the encoder's (N, 8*width), what
    embeddings and probes use."""

    def __init__(
        self, voxel_size: Sequence[float], in_channels: int = 1, width: int = 64,
        projection_dim: int = 128,
    ) -> None:  # fmt: skip
        super().__init__()
        self.encoder = ResNet3dEncoder(voxel_size, in_channels, width)
        dim = self.encoder.feature_dim
        self.projection = ProjectionHead(dim, dim, projection_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(x))


def build_contrastive_model(config: ContrastiveTrainConfig) -> ContrastiveModel:
    return ContrastiveModel(
        config.voxel_size, width=config.width, projection_dim=config.projection_dim
    )


MODEL_KEYS = "voxel_size, width, projection_dim"


def load_contrastive_model(
    checkpoint: str | Path, device: str | torch.device = "cpu"
) -> tuple[ContrastiveModel, ContrastiveTrainConfig]:
    """The model of a `model_checkpoint_<N>` of a synapse-contrastive train setup (its
    train_config.toml lies next to it), in eval mode on `device`, and that config."""
    from connecto.checkpoints import load_weights, read_checkpoint
    from connecto.experiment import checkpoint_config
    from connecto.tasks.synapse_contrastive.config import NAME, ContrastiveTrainConfig

    checkpoint = Path(checkpoint)
    config = checkpoint_config(checkpoint, ContrastiveTrainConfig, NAME)
    model = build_contrastive_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval(), config


def load_pretrained_encoder(
    encoder: ResNet3dEncoder, checkpoint: str | Path, voxel_size: Sequence[int], source: str
) -> None:
    """Load the encoder weights of a synapse-contrastive `model_checkpoint_<N>` into
    `encoder` (a classifier's, at `voxel_size`). Anything else (another task's
    checkpoint, an encoder of another width or voxel size) is a ConnectoError naming
    `source`'s key `init_from`."""
    from connecto import ConnectoError
    from connecto.checkpoints import read_checkpoint
    from connecto.experiment import TrainSetup, find_setup
    from connecto.tasks.synapse_contrastive.config import NAME

    checkpoint = Path(checkpoint)
    where = f"{source}: key 'init_from' = '{checkpoint}'"
    advice = "give a model_checkpoint_<N> of a synapse-contrastive train setup"
    weights = read_checkpoint(checkpoint, "cpu", f"{advice} ({where})")["model_state_dict"]
    encoder_weights = {k[8:]: v for k, v in weights.items() if k.startswith("encoder.")}
    if not encoder_weights or not any(k.startswith("projection.") for k in weights):
        raise ConnectoError(f"{where}: not a {NAME} checkpoint (no encoder and projection)")
    try:
        setup = find_setup(checkpoint.parent)
    except ConnectoError:  # a checkpoint copied out of its setup: the weights must fit
        setup = None
    if isinstance(setup, TrainSetup):
        trained = setup.train_config()
        if trained.task != NAME:
            raise ConnectoError(f"{where}: a {trained.task!r} checkpoint, not {NAME}")
        if tuple(trained.voxel_size) != tuple(voxel_size):
            raise ConnectoError(
                f"{where}: trained at voxel_size {list(trained.voxel_size)}, this config has "
                f"{list(voxel_size)} (the encoder's strides follow the voxel size)"
            )
    try:
        encoder.load_state_dict(encoder_weights)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise ConnectoError(
            f"{where}: its encoder does not fit (resnet_width must be the contrastive "
            f"training's width): {detail}"
        ) from None
