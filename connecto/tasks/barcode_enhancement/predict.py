"""Tile-by-tile prediction of the channel-agnostic barcode tasks into zarr, and
`connecto predict --split validation|test` in their train setups.

The ROI is tiled by the network's output; each tile reads raw (all channels) with the
U-Net's valid context around it (zero outside the volume, as in training), runs every
channel through the shared network at once and writes the part inside the ROI. Outputs
are uint8 (value * 255) (C, z, y, x) datasets with voxel size, offset and axis names, so
the next model (affinities from enhanced barcodes, barcode expression) reads them as raw.
Enhancement writes `enhanced`: raw + predicted residual (or the predicted average),
clipped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from funlib.geometry import Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_weights, read_checkpoint
from connecto.data.volumes import open_container, open_raw, prepare_channels
from connecto.experiment import PredictSetup, TrainSetup, checkpoint_config, find_setup
from connecto.tasks.barcode_enhancement.config import (
    BarcodeEnhancementTrainConfig,
    ChannelAgnosticSettings,
)
from connecto.tasks.barcode_enhancement.evaluate import barcode_correlation, container_barcodes
from connecto.tasks.barcode_enhancement.model import (
    MODEL_KEYS,
    ChannelAgnosticUNet,
    build_model,
)
from connecto.tasks.barcode_enhancement.pipeline import barcode_channels
from connecto.tasks.tiles import plan_tiles, predict_tiles

ENHANCED_DATASET = "enhanced"
SPLITS = ("validation", "test")
PREDICT_DIR = "03_predict"

# (raw of the tile's output window in [0, 1], network output) -> values in [0, 1]
ToOutput = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ChannelPrediction:
    path: Path
    roi: Roi
    channels: int
    tiles: int


def load_model(
    config: ChannelAgnosticSettings, checkpoint: Path, device: str
) -> ChannelAgnosticUNet:
    model = build_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def predict_channels(
    model: torch.nn.Module, config: ChannelAgnosticSettings, raw: Array, out_path: Path,
    to_output: ToOutput, roi: Roi | None = None, attrs: dict[str, Any] | None = None,
    device: str = "cpu", overwrite: bool = False, progress: bool = False,
) -> ChannelPrediction:  # fmt: skip
    """Predict `roi` of `raw` (C, z, y, x) with `model` into `out_path` (uint8, C channels);
    `to_output` turns the network's output into values in [0, 1]."""
    plan = plan_tiles(config, raw, roi, out_path, overwrite)
    channels = int(raw.shape[0])
    out = prepare_channels(out_path, channels, plan.roi, plan.voxel_size, plan.out_shape,
                           attrs or {}, True)  # fmt: skip
    inner = plan.inner()

    def run(data: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            prediction = model(torch.from_numpy(data)[None].to(device))[0].cpu().numpy()
        values = np.clip(to_output(data[inner], prediction), 0, 1)
        return (values * 255).round().astype(np.uint8)

    tiles = predict_tiles(plan, raw, out, run, progress)
    return ChannelPrediction(out_path, plan.roi, channels, tiles)


def enhance_output(residual: bool) -> ToOutput:
    """Residual models: raw plus the residual; otherwise the predicted average."""
    if residual:
        return lambda raw, prediction: raw + prediction
    return lambda raw, prediction: prediction


def predict_enhanced(
    checkpoint: str | Path, config: BarcodeEnhancementTrainConfig, raw_container: str | Path,
    raw_dataset: str, out_container: str | Path, roi: Roi | None = None, *,
    out_dataset: str = ENHANCED_DATASET, device: str | None = None, overwrite: bool = False,
    progress: bool = False,
) -> ChannelPrediction:  # fmt: skip
    """Enhanced barcodes of `roi` (default: the raw volume) into `out_container/out_dataset`."""
    checkpoint = Path(checkpoint)
    device = device or default_device()
    model = load_model(config, checkpoint, device)
    raw = barcode_channels(open_raw(raw_container, raw_dataset), raw_container)
    attrs = {"checkpoint": str(checkpoint), "residual": config.residual, "task": config.task}
    return predict_channels(
        model, config, raw, Path(out_container) / out_dataset, enhance_output(config.residual),
        roi, attrs, device, overwrite, progress,
    )  # fmt: skip


# ---------------------------------------------------------------- `connecto predict`


def split_roi(config: ChannelAgnosticSettings, split: str | None) -> Roi | None:
    """The ROI of a split part (None: the whole raw volume, when the config sets none)."""
    if split not in SPLITS:
        raise ConnectoError(f"--split {split!r}: expected validation or test")
    value = getattr(config, f"{split}_roi")
    return None if value is None else Roi(value[0], value[1])


def chosen_checkpoints(
    train: TrainSetup, iterations: Sequence[int], all_checkpoints: bool
) -> list[int]:  # fmt: skip
    available = train.checkpoints()
    chosen = available if all_checkpoints else list(dict.fromkeys(iterations)) or available[-1:]
    if not chosen:
        raise ConnectoError(f"{train.path}: no model_checkpoint_<N> yet (run `connecto train`)")
    absent = [it for it in chosen if it not in available]
    if absent:
        raise ConnectoError(
            f"{train.path}: no checkpoint for iteration(s) {absent}; available: "
            f"{available or 'none'}"
        )
    return chosen


def output_container(train: TrainSetup, task: str, split: str, iteration: int) -> Path:
    """`<base>/<experiment>/03_predict/<task>_t<ID>_<split>_<iteration>.zarr`."""
    name = f"{task}_t{train.train_id}_{split}_{iteration}.zarr"
    return train.base / train.experiment / PREDICT_DIR / name


def setup_predictions(
    path: Path, split: str | None, iterations: Sequence[int], all_checkpoints: bool,
    overwrite: bool, predict_one: Callable[[Path, Any, Roi | None, Path, bool], str],
) -> list[str]:  # fmt: skip
    """`connecto predict` in (or below) a train setup of a volume task: `predict_one`
    (checkpoint, config, roi, output container, overwrite) -> a line for the user, for
    each chosen checkpoint."""
    setup = find_setup(path)
    train = setup.train_setup if isinstance(setup, PredictSetup) else setup
    config = train.train_config()
    roi = split_roi(config, split)
    lines = []
    for iteration in chosen_checkpoints(train, iterations, all_checkpoints):
        out = output_container(train, config.task, str(split), iteration)
        lines.append(predict_one(train.checkpoint(iteration), config, roi, out, overwrite))
    return lines


def correlation_scores(
    config: ChannelAgnosticSettings, result: ChannelPrediction
) -> dict[str, Any] | None:  # fmt: skip
    """Mean per-neuron barcode correlation of the prediction and of raw over its ROI,
    when the container holds labels and true barcodes (None otherwise)."""
    barcodes = container_barcodes(config.container)
    if barcodes is None or config.labels_dataset not in open_container(config.container):
        return None
    labels = open_raw(config.container, config.labels_dataset, "labels_dataset")
    raw = barcode_channels(open_raw(config.input_source, config.raw_dataset), config.input_source)
    label_data = labels.to_ndarray(result.roi, fill_value=0)
    enhanced = open_ds(str(result.path), mode="r")
    scores = {
        name: barcode_correlation(volume.to_ndarray(result.roi, fill_value=0), label_data, barcodes)
        for name, volume in (("prediction", enhanced), ("raw", raw))
    }
    return {
        "neurons": int(len(scores["prediction"].neuron_ids)),
        "prediction": scores["prediction"].mean,
        "raw": scores["raw"].mean,
    }


def _predict_one(checkpoint: Path, config: Any, roi: Roi | None, out: Path, overwrite: bool) -> str:
    result = predict_enhanced(checkpoint, config, config.input_source, config.raw_dataset, out,
                              roi, overwrite=overwrite, progress=True)  # fmt: skip
    line = f"{checkpoint.name}: {result.tiles} tiles over {result.roi} -> {result.path}"
    scores = correlation_scores(config, result)
    if scores is not None:
        zarr.open_array(str(result.path), mode="r+").attrs["barcode_correlation"] = scores
        if scores["prediction"] is not None and scores["raw"] is not None:
            line += (
                f"; {scores['neurons']} neurons: mean barcode correlation "
                f"{scores['prediction']:.3f} (raw {scores['raw']:.3f})"
            )
    return line


def predict_in_setup(
    path: Path, split: str | None, iterations: Sequence[int], all_checkpoints: bool,
    overwrite: bool,
) -> list[str]:  # fmt: skip
    """`connecto predict --split validation|test` for barcode-enhancement."""
    return setup_predictions(path, split, iterations, all_checkpoints, overwrite, _predict_one)


def train_config_of(checkpoint: Path) -> BarcodeEnhancementTrainConfig:
    """The train config of the setup a checkpoint lies in."""
    return checkpoint_config(Path(checkpoint), BarcodeEnhancementTrainConfig, "barcode-enhancement")
