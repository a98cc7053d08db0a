"""Tile-by-tile synapse prediction into zarr, detections into MongoDB, and
`connecto predict --split validation|test` in a synapse-detection train setup.

The ROI is tiled by the network's output; each tile reads the two marker channels with
the U-Net's valid context (zero outside the volume, as in training) and writes the sigmoid
of both outputs as uint8 (value * 255) `synapse_probability` (2, z, y, x: mask, contour).
Then the mask's connected components above `detection_threshold` become detections,
assigned to neurons from the configured segmentation, and are written to the collection
`detections_<experiment>_t<ID>_<split>_<iteration>` of the detections database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_weights, read_checkpoint
from connecto.data.volumes import open_raw, prepare_channels
from connecto.experiment import TrainSetup, find_setup
from connecto.tasks.barcode_enhancement.predict import setup_predictions
from connecto.tasks.synapse_detection.config import SynapseDetectionTrainConfig
from connecto.tasks.synapse_detection.detect import (
    DETECTION_PREFIX,
    Detections,
    assign_neurons,
    find_detections,
    probabilities,
    write_detections,
)
from connecto.tasks.synapse_detection.model import MODEL_KEYS, OUT_CHANNELS, build_model
from connecto.tasks.synapse_detection.pipeline import marker_array, marker_channels
from connecto.tasks.tiles import plan_tiles, predict_tiles

PROBABILITY_DATASET = "synapse_probability"


@dataclass(frozen=True)
class SynapsePrediction:
    path: Path
    roi: Roi
    tiles: int


def load_model(
    config: SynapseDetectionTrainConfig, checkpoint: Path, device: str
) -> torch.nn.Module:
    model = build_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def open_config_markers(config: SynapseDetectionTrainConfig) -> Array:
    """The marker channels of the config's container."""
    raw = open_raw(config.container, config.raw_dataset)
    if len(raw.shape) != 4:
        raise ConnectoError(f"{config.container}/{config.raw_dataset}: expected (C, z, y, x)")
    channels = marker_channels(config.container, config.marker_channels, raw.shape[0],
                               config.container)  # fmt: skip
    return marker_array(raw, channels)


def predict_probability(
    model: torch.nn.Module, config: SynapseDetectionTrainConfig, markers: Array, out_path: Path,
    roi: Roi | None = None, attrs: dict[str, Any] | None = None, device: str = "cpu",
    overwrite: bool = False, progress: bool = False,
) -> SynapsePrediction:  # fmt: skip
    """Mask and contour probabilities of `roi` of `markers` (2, z, y, x) into `out_path`."""
    plan = plan_tiles(config, markers, roi, out_path, overwrite, "markers")
    out = prepare_channels(out_path, OUT_CHANNELS, plan.roi, plan.voxel_size, plan.out_shape,
                           attrs or {}, True)  # fmt: skip

    def run(data: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.from_numpy(data)[None].to(device))[0]
            values = torch.sigmoid(logits).cpu().numpy()
        return (values * 255).round().astype(np.uint8)

    tiles = predict_tiles(plan, markers, out, run, progress)
    return SynapsePrediction(out_path, plan.roi, tiles)


def assignment_arrays(config: SynapseDetectionTrainConfig, roi: Roi) -> tuple[Array, Array]:
    """The configured segmentation and the marker channels around `roi` (grown by the
    assignment radius), read once into memory: assignment reads a neighbourhood per
    detection."""
    segmentation = open_raw(config.segmentation_source, config.segmentation_dataset,
                            "segmentation_dataset")  # fmt: skip
    markers = open_config_markers(config)
    voxel_size = Coordinate(segmentation.voxel_size)
    reach = Coordinate(int(np.ceil(config.assign_radius_nm / v)) + 1 for v in voxel_size)
    around = roi.grow(reach * voxel_size, reach * voxel_size)
    return tuple(  # type: ignore[return-value]
        Array(
            array.to_ndarray(around, fill_value=0),
            offset=around.offset,
            voxel_size=array.voxel_size,
        )  # fmt: skip
        for array in (segmentation, markers)
    )


def detect_in_prediction(
    config: SynapseDetectionTrainConfig, probability: Array, roi: Roi | None = None,
    threshold: float | None = None,
) -> Detections:  # fmt: skip
    """Detections of the mask channel of `probability` (uint8 or float) over `roi`,
    assigned to neurons of the configured segmentation."""
    roi = probability.roi if roi is None else roi
    mask, contour = probabilities(probability, roi)
    detections = find_detections(
        mask, probability.voxel_size, roi.offset,
        config.detection_threshold if threshold is None else threshold,
        config.min_detection_voxels, config.detection_score,
        contour if config.split_by_contour else None, config.contour_threshold,
    )  # fmt: skip
    segmentation, markers = assignment_arrays(config, roi)
    return assign_neurons(detections, segmentation, markers, config.assign_radius_nm)


# ---------------------------------------------------------------- `connecto predict`


def collection_prefix(train: TrainSetup) -> str:
    return f"{DETECTION_PREFIX}{train.experiment}_t{train.train_id}_"


def _predict_one(checkpoint: Path, config: Any, roi: Roi | None, out: Path, overwrite: bool) -> str:
    from connecto.db.client import get_database

    train = find_setup(checkpoint.parent)
    assert isinstance(train, TrainSetup)
    device = default_device()
    model = load_model(config, checkpoint, device)
    markers = open_config_markers(config)
    attrs = {"checkpoint": str(checkpoint), "task": config.task,
             "channels": ["synapse_mask", "synapse_contour"]}  # fmt: skip
    result = predict_probability(model, config, markers, out / PROBABILITY_DATASET, roi, attrs,
                                 device, overwrite, progress=True)  # fmt: skip
    detections = detect_in_prediction(config, open_ds(str(result.path), mode="r"), result.roi)
    # `<task>_t<ID>_<split>_<iteration>.zarr` -> `detections_<exp>_t<ID>_<split>_<iteration>`
    split_iteration = out.stem.split(f"_t{train.train_id}_", 1)[-1]
    collection = collection_prefix(train) + split_iteration
    source = {
        "setup": str(train.path), "experiment": train.experiment, "train_id": train.train_id,
        "checkpoint": str(checkpoint), "iteration": int(checkpoint.name.rsplit("_", 1)[-1]),
        "prediction": str(result.path), "roi": [list(result.roi.offset), list(result.roi.shape)],
        "detection_threshold": config.detection_threshold, "score": config.detection_score,
        "segmentation": f"{config.segmentation_source}/{config.segmentation_dataset}",
    }  # fmt: skip
    db = get_database(config.detections_database)
    count = write_detections(db, collection, detections, source)
    return (
        f"{checkpoint.name}: {result.tiles} tiles over {result.roi} -> {result.path}; "
        f"{count} detections -> {db.name}.{collection}"
    )


def predict_in_setup(
    path: Path, split: str | None, iterations: Sequence[int], all_checkpoints: bool,
    overwrite: bool,
) -> list[str]:  # fmt: skip
    """`connecto predict --split validation|test` for synapse-detection."""
    return setup_predictions(path, split, iterations, all_checkpoints, overwrite, _predict_one)
