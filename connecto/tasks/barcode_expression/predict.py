"""Expression probabilities (uint8, probability * 255, C channels) tile by tile into
zarr, and `connecto predict --split validation|test` in a barcode-expression setup, which
also calls each neuron's barcode and scores the calls when the container holds labels and
true barcodes (stored in the prediction's attributes as `barcode_calls`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Roi
from scipy.special import expit

from connecto.checkpoints import default_device
from connecto.data.volumes import open_container, open_raw
from connecto.experiment import checkpoint_config
from connecto.tasks.barcode_enhancement.evaluate import container_barcodes
from connecto.tasks.barcode_enhancement.pipeline import barcode_channels
from connecto.tasks.barcode_enhancement.predict import (
    ChannelPrediction,
    load_model,
    predict_channels,
    setup_predictions,
)
from connecto.tasks.barcode_expression.config import BarcodeExpressionTrainConfig
from connecto.tasks.barcode_expression.evaluate import evaluate_prediction

EXPRESSION_DATASET = "predicted_expression"


def _probability(raw: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return expit(logits)


def predict_expression(
    checkpoint: str | Path, config: BarcodeExpressionTrainConfig, raw_container: str | Path,
    raw_dataset: str, out_container: str | Path, roi: Roi | None = None, *,
    out_dataset: str = EXPRESSION_DATASET, device: str | None = None, overwrite: bool = False,
    progress: bool = False,
) -> ChannelPrediction:  # fmt: skip
    """Per-channel expression probabilities of `roi` (default: the raw volume)."""
    checkpoint = Path(checkpoint)
    device = device or default_device()
    model = load_model(config, checkpoint, device)
    raw = barcode_channels(open_raw(raw_container, raw_dataset), raw_container)
    attrs = {"checkpoint": str(checkpoint), "task": config.task}
    return predict_channels(model, config, raw, Path(out_container) / out_dataset, _probability,
                            roi, attrs, device, overwrite, progress)  # fmt: skip


def _predict_one(checkpoint: Path, config: Any, roi: Roi | None, out: Path, overwrite: bool) -> str:
    result = predict_expression(checkpoint, config, config.input_source, config.raw_dataset, out,
                                roi, overwrite=overwrite, progress=True)  # fmt: skip
    line = f"{checkpoint.name}: {result.tiles} tiles over {result.roi} -> {result.path}"
    has_labels = config.labels_dataset in open_container(config.container)
    if has_labels and container_barcodes(config.container) is not None:
        calls = evaluate_prediction(result.path, config.container, config.labels_dataset,
                                    config.call_threshold)  # fmt: skip
        summary = calls.summary()
        zarr.open_array(str(result.path), mode="r+").attrs["barcode_calls"] = summary
        if calls.bit_accuracy is not None and calls.exact_accuracy is not None:
            line += (
                f"; {summary['scored_neurons']} neurons: per-bit accuracy "
                f"{calls.bit_accuracy:.3f}, exact barcodes {calls.exact_accuracy:.3f}"
            )
    return line


def predict_in_setup(
    path: Path, split: str | None, iterations: Sequence[int], all_checkpoints: bool,
    overwrite: bool,
) -> list[str]:  # fmt: skip
    """`connecto predict --split validation|test` for barcode-expression."""
    return setup_predictions(path, split, iterations, all_checkpoints, overwrite, _predict_one)


def train_config_of(checkpoint: Path) -> BarcodeExpressionTrainConfig:
    """The train config of the setup a checkpoint lies in."""
    return checkpoint_config(Path(checkpoint), BarcodeExpressionTrainConfig, "barcode-expression")
