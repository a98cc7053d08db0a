"""Tile-by-tile prediction of pixel embeddings into zarr, and `connecto predict --split
validation|test` in a pixel-embedding train setup.

The ROI is tiled by the network's output; each tile reads raw (all channels) with the
U-Net's valid context around it (zero outside the volume, as in training), and the
network's output, scaled to unit length per voxel, is written as float32 (D, z, y, x)
`embedding` with voxel size, offset and axis names: the feature volume `connecto segment`
reads (`features_dataset = "embedding"`, cosine distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from funlib.geometry import Roi
from funlib.persistence import Array

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_weights, read_checkpoint
from connecto.data.volumes import open_raw, prepare_volume
from connecto.experiment import checkpoint_config
from connecto.tasks.barcode_enhancement.pipeline import barcode_channels
from connecto.tasks.barcode_enhancement.predict import setup_predictions
from connecto.tasks.pixel_embedding.config import PixelEmbeddingTrainConfig
from connecto.tasks.pixel_embedding.model import (
    MODEL_KEYS,
    PixelEmbeddingModel,
    build_model,
    unit_embedding,
)
from connecto.tasks.tiles import plan_tiles, predict_tiles

EMBEDDING_DATASET = "embedding"


@dataclass(frozen=True)
class EmbeddingPrediction:
    path: Path
    roi: Roi
    dims: int
    tiles: int


def load_model(
    config: PixelEmbeddingTrainConfig, checkpoint: Path, device: str
) -> PixelEmbeddingModel:  # fmt: skip
    model = build_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def predict_embedding_volume(
    model: torch.nn.Module, config: PixelEmbeddingTrainConfig, raw: Array, out_path: Path,
    roi: Roi | None = None, attrs: dict[str, Any] | None = None, device: str = "cpu",
    overwrite: bool = False, progress: bool = False,
) -> EmbeddingPrediction:  # fmt: skip
    """Unit-norm embeddings of `roi` (default: raw's) of `raw` (C, z, y, x) with `model`
    into `out_path` (float32, (D, z, y, x))."""
    if len(raw.shape) != 4 or raw.shape[0] != config.in_channels:
        raise ConnectoError(
            f"raw: shape {tuple(raw.shape)}, expected ({config.in_channels}, z, y, x) "
            "(in_channels of the model's train config)"
        )
    plan = plan_tiles(config, raw, roi, out_path, overwrite)
    dims = config.embedding_dims
    out = prepare_volume(
        out_path, shape=(dims, *(plan.roi.shape / plan.voxel_size)), offset=plan.roi.offset,
        voxel_size=plan.voxel_size, axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        chunk_shape=(dims, *plan.out_shape), dtype=np.float32, mode="w",
    )  # fmt: skip
    out._source_data.attrs.update(attrs or {})

    def run(data: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            output = unit_embedding(model(torch.from_numpy(data)[None].to(device)))
        return output[0].cpu().numpy()

    tiles = predict_tiles(plan, raw, out, run, progress)
    return EmbeddingPrediction(out_path, plan.roi, dims, tiles)


def predict_embedding(
    checkpoint: str | Path, config: PixelEmbeddingTrainConfig, raw_container: str | Path,
    raw_dataset: str, out_container: str | Path, roi: Roi | None = None, *,
    out_dataset: str = EMBEDDING_DATASET, device: str | None = None, overwrite: bool = False,
    progress: bool = False,
) -> EmbeddingPrediction:  # fmt: skip
    """Embeddings of `roi` (default: the raw volume) into `out_container/out_dataset`."""
    checkpoint = Path(checkpoint)
    device = device or default_device()
    model = load_model(config, checkpoint, device)
    raw = barcode_channels(open_raw(raw_container, raw_dataset), raw_container)
    attrs = {"checkpoint": str(checkpoint), "task": config.task, "unit_norm": True}
    return predict_embedding_volume(model, config, raw, Path(out_container) / out_dataset,
                                    roi, attrs, device, overwrite, progress)  # fmt: skip


def _predict_one(checkpoint: Path, config: Any, roi: Roi | None, out: Path, overwrite: bool) -> str:
    result = predict_embedding(checkpoint, config, config.input_source, config.raw_dataset, out,
                               roi, overwrite=overwrite, progress=True)  # fmt: skip
    return (
        f"{checkpoint.name}: {result.tiles} tiles over {result.roi} -> {result.path} "
        f"({result.dims}-dimensional unit embeddings)"
    )


def predict_in_setup(
    path: Path, split: str | None, iterations: Sequence[int], all_checkpoints: bool,
    overwrite: bool,
) -> list[str]:  # fmt: skip
    """`connecto predict --split validation|test` for pixel-embedding."""
    return setup_predictions(path, split, iterations, all_checkpoints, overwrite, _predict_one)


def train_config_of(checkpoint: Path) -> PixelEmbeddingTrainConfig:
    """The train config of the setup a checkpoint lies in."""
    return checkpoint_config(Path(checkpoint), PixelEmbeddingTrainConfig, "pixel-embedding")
