"""synister's VGG: output shapes and parameter counts from the architecture formula."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from connecto import ConnectoError
from connecto.tasks.synapse_classification.config import SynapseModelConfig
from connecto.tasks.synapse_classification.model import (
    CLASSIFIER_WIDTH,
    Vgg3D,
    build_vgg3d,
    load_model_from_checkpoint,
)


def model_config(**changes: object) -> SynapseModelConfig:
    values = {
        "synapse_types": ["gaba", "acetylcholine", "glutamate"],
        "input_shape": (8, 32, 32),
        "fmaps": 4,
        "fmap_inc": [2, 2],
        "n_convolutions": [2, 1],
        "downsample_factors": [(1, 2, 2), (2, 2, 2)],
        "db_name_data": "unused",
        "split_name": "unused",
        "raw_container": "unused.zarr",
        "raw_dataset": "raw",
        **changes,
    }
    return SynapseModelConfig.model_validate(values)


def expected_parameters(config: SynapseModelConfig) -> int:
    """Conv3d 3x3x3 (weights + bias) and batch norm (scale + shift) per convolution,
    then three linear layers on the flattened features."""
    total, channels, fmaps = 0, 1, config.fmaps
    size = list(config.input_shape)
    for factors, inc, convolutions in zip(
        config.downsample_factors, config.fmap_inc, config.n_convolutions, strict=True
    ):
        for _ in range(convolutions):
            total += 27 * channels * fmaps + fmaps + 2 * fmaps
            channels = fmaps
        size = [s // f for s, f in zip(size, factors, strict=True)]
        fmaps *= inc
    features = channels * math.prod(size)
    width = config.classifier_width
    classes = len(config.class_names)
    return total + (features + 1) * width + (width + 1) * width + (width + 1) * classes


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"neither_class": True},
        {"fmaps": 6, "fmap_inc": [3, 2], "n_convolutions": [1, 3]},
        {"input_shape": (16, 64, 48), "downsample_factors": [(2, 2, 2), (1, 2, 2)]},
        {"classifier_width": 64},
    ],
)
def test_shapes_and_parameter_counts(changes: dict) -> None:
    config = model_config(**changes)
    model = build_vgg3d(config)
    assert count(model) == expected_parameters(config)
    logits = model(torch.zeros(3, *config.input_shape))  # (batch, z, y, x) gets a channel
    assert logits.shape == (3, len(config.class_names))
    assert model(torch.zeros(2, 1, *config.input_shape)).shape == (2, len(config.class_names))


def test_synister_default_parameter_count() -> None:
    """synister's default net: 16x160x160 input, fmaps 12, four levels."""
    config = model_config(
        input_shape=(16, 160, 160), fmaps=12, fmap_inc=[2, 2, 2, 2],
        n_convolutions=[2, 2, 2, 2],
        downsample_factors=[(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)],
        synapse_types=["gaba", "acetylcholine", "glutamate", "serotonin", "octopamine", "dopamine"],
    )  # fmt: skip
    with torch.device("meta"):  # 314 M parameters: count them without allocating
        model = build_vgg3d(config)
    assert model.feature_size == 96 * 8 * 10 * 10
    assert config.classifier_width == CLASSIFIER_WIDTH
    assert count(model) == expected_parameters(config)


def test_indivisible_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        Vgg3D((8, 30, 32), 4, [(1, 2, 2), (2, 2, 2)], [2, 2], [1, 1], output_classes=2)


def test_checkpoint_round_trip_in_eval_mode(tmp_path: Path) -> None:
    config = model_config()
    model = build_vgg3d(config)
    path = tmp_path / "model_checkpoint_7"
    torch.save({"model_state_dict": model.state_dict(), "iteration": 7}, path)
    loaded = load_model_from_checkpoint(config, path, "cpu")
    assert not loaded.training
    x = torch.randn(2, *config.input_shape)
    model.eval()
    assert torch.allclose(loaded(x), model(x))
    with pytest.raises(ConnectoError, match="does not fit"):
        load_model_from_checkpoint(model_config(fmaps=5), path, "cpu")
    with pytest.raises(ConnectoError, match="no such checkpoint"):
        load_model_from_checkpoint(config, tmp_path / "model_checkpoint_8", "cpu")
