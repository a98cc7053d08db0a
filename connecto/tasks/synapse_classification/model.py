"""synister's 3D VGG: blocks of (conv3d 3x3x3 + batch norm + ReLU) x n, each followed by
max pooling, then a three-layer fully connected classifier; or the synapse-contrastive
ResNet-18 encoder with a linear classifier (`network = "ResNet18"`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from connecto.tasks.synapse_classification.config import SynapseModelConfig
from connecto.tasks.synapse_contrastive.model import ResNet3dEncoder

CLASSIFIER_WIDTH = 4096  # synister's fully connected width (config: classifier_width)


class Vgg3D(torch.nn.Module):
    def __init__(
        self,
        input_size: Sequence[int],
        fmaps: int,
        downsample_factors: Sequence[Sequence[int]],
        fmap_inc: Sequence[int],
        n_convolutions: Sequence[int],
        output_classes: int,
        input_fmaps: int = 1,
        classifier_width: int = CLASSIFIER_WIDTH,
    ) -> None:
        super().__init__()
        levels = len(downsample_factors)
        if len(fmap_inc) != levels or len(n_convolutions) != levels:
            raise ValueError("fmap_inc and n_convolutions need one entry per downsampling level")
        current_fmaps = input_fmaps
        current_size = tuple(input_size)
        features: list[torch.nn.Module] = []
        for factors, inc, convolutions in zip(
            downsample_factors, fmap_inc, n_convolutions, strict=True
        ):
            for _ in range(convolutions):
                features += [
                    torch.nn.Conv3d(current_fmaps, fmaps, kernel_size=3, padding=1),
                    torch.nn.BatchNorm3d(fmaps),
                    torch.nn.ReLU(inplace=True),
                ]
                current_fmaps = fmaps
            features.append(torch.nn.MaxPool3d(tuple(factors)))
            if any(s % f for s, f in zip(current_size, factors, strict=True)):
                raise ValueError(f"size {current_size} is not divisible by {tuple(factors)}")
            current_size = tuple(s // f for s, f in zip(current_size, factors, strict=True))
            fmaps *= inc
        self.features = torch.nn.Sequential(*features)
        self.feature_size = current_fmaps * math.prod(current_size)
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(self.feature_size, classifier_width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(),
            torch.nn.Linear(classifier_width, classifier_width),
            torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(),
            torch.nn.Linear(classifier_width, output_classes),
        )

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """`raw` (batch, [channel,] z, y, x) -> class logits (batch, classes)."""
        if raw.dim() == 4:
            raw = raw.unsqueeze(1)
        features = self.features(raw)
        return self.classifier(features.view(features.size(0), -1))


def build_vgg3d(config: SynapseModelConfig) -> Vgg3D:
    return Vgg3D(
        input_size=config.input_shape,
        fmaps=config.fmaps,
        downsample_factors=config.downsample_factors,
        fmap_inc=config.fmap_inc,
        n_convolutions=config.n_convolutions,
        output_classes=len(config.class_names),
        classifier_width=config.classifier_width,
    )


class ResNetClassifier(torch.nn.Module):
    """The synapse-contrastive encoder (3D ResNet-18, global average pooling) and one
    linear layer to class logits: what a contrastive checkpoint's encoder initialises."""

    def __init__(self, voxel_size: Sequence[int], width: int, output_classes: int) -> None:
        super().__init__()
        self.encoder = ResNet3dEncoder(voxel_size, in_channels=1, width=width)
        self.classifier = torch.nn.Linear(self.encoder.feature_dim, output_classes)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """`raw` (batch, [channel,] z, y, x) -> class logits (batch, classes)."""
        return self.classifier(self.encoder(raw))


def build_classifier(config: SynapseModelConfig) -> torch.nn.Module:
    """The network `config.network` names."""
    if config.network == "ResNet18":
        return ResNetClassifier(config.voxel_size, config.resnet_width, len(config.class_names))
    return build_vgg3d(config)


def load_model_from_checkpoint(
    config: SynapseModelConfig, checkpoint_path: str | Path, device: str | torch.device
) -> torch.nn.Module:
    """The network of `config` with the weights of a `model_checkpoint_<N>`, in eval mode."""
    from connecto.checkpoints import load_weights, read_checkpoint

    model = build_classifier(config)
    state = read_checkpoint(checkpoint_path, device)
    keys = "network, input_shape, fmaps, fmap_inc, n_convolutions, downsample_factors, "
    keys += "resnet_width, voxel_size, synapse_types"
    load_weights(model, state, checkpoint_path, keys)
    return model.to(device).eval()
