"""Section-by-section prediction of a 2D model into stacked 3D zarr datasets.

Every section z of the ROI is predicted from the raw sections z-k..z+k (zero beyond the
volume, as in training), in (y, x) tiles of the network's output with its valid context
read around them. Sections go through the network `sections_per_batch` at a time (one
raw read per slab and tile). The outputs are uint8 (value * 255) datasets `affs_2d`
(offsets, z, y, x) and `lsds_2d` (6, z, y, x) with the voxel size, offset and axis names
the segmentation task writes, so its post-processing can read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from tqdm import tqdm

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_weights, read_checkpoint
from connecto.data.volumes import (
    RAW_SCALE,
    RAW_SHIFT,
    normalize_raw,
    open_raw,
    prepare_channels,
    read_roi,
    scale_raw,
)
from connecto.experiment import checkpoint_config
from connecto.tasks.section_contrast import stretch_sections, volume_section_levels
from connecto.tasks.segmentation_2d.config import Segmentation2dTrainConfig
from connecto.tasks.segmentation_2d.model import (
    LSD_2D_CHANNELS,
    MODEL_KEYS,
    SectionModel,
    build_model,
)

AFFS_DATASET = "affs_2d"
LSDS_DATASET = "lsds_2d"


@dataclass(frozen=True)
class SectionPrediction:
    affs: Path
    lsds: Path | None
    roi: Roi
    sections: int


def load_model(config: Segmentation2dTrainConfig, checkpoint: Path, device: str) -> SectionModel:
    model = build_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def train_config_of(checkpoint: Path) -> Segmentation2dTrainConfig:
    """The train config of the setup a checkpoint lies in (what a CLI command needs)."""
    return checkpoint_config(Path(checkpoint), Segmentation2dTrainConfig, "segmentation-2d")


def _on_grid(roi: Roi, raw: Array) -> bool:
    voxel_size = Coordinate(raw.voxel_size)
    zero = Coordinate((0,) * voxel_size.dims)
    return (roi.offset - raw.roi.offset) % voxel_size == zero and roi.shape % voxel_size == zero


def _tiles(roi: Roi, voxel_size: Coordinate, depth: int, plane: tuple[int, int]) -> Iterator[Roi]:
    """Output tiles: `depth` sections by the network's (y, x) output, covering `roi`; the
    last ones overhang it (their outputs are cropped)."""
    step = Coordinate((depth, *plane)) * voxel_size
    for z in range(roi.begin[0], roi.end[0], step[0]):
        for y in range(roi.begin[1], roi.end[1], step[1]):
            for x in range(roi.begin[2], roi.end[2], step[2]):
                yield Roi((z, y, x), step)


def _windows(raw: np.ndarray, sections: int, k: int) -> np.ndarray:
    """(sections, 2k+1, y, x): for each output section, itself and its k neighbours each
    side, from a slab read with k extra sections above and below."""
    return np.stack([raw[i : i + 2 * k + 1] for i in range(sections)])


def _network_input(data: np.ndarray, levels: np.ndarray | None, read: Roi, raw: Array) -> (
    np.ndarray
):  # fmt: skip
    """Raw (z, y, x) read at `read` as the network takes it: each section stretched as in
    training (when the model was trained so), then to [-1, 1]; beyond the volume, zero."""
    if levels is None:
        return normalize_raw(data)
    first = (read.begin[0] - raw.roi.begin[0]) // raw.voxel_size[0]
    sections = stretch_sections(scale_raw(data), levels, first)
    return sections * np.float32(RAW_SCALE) + np.float32(RAW_SHIFT)


def _to_uint8(prediction: torch.Tensor) -> np.ndarray:
    """(b, C, 1, y, x) in [0, 1] -> (C, b, y, x) uint8."""
    data = prediction[:, :, 0].cpu().numpy().transpose(1, 0, 2, 3)
    return (data * 255).round().astype(np.uint8)


def predict_sections(
    checkpoint: str | Path, train_config: Segmentation2dTrainConfig, raw_container: str | Path,
    raw_dataset: str, out_container: str | Path, roi: Roi | None = None, *,
    affs_dataset: str = AFFS_DATASET, lsds_dataset: str = LSDS_DATASET,
    sections_per_batch: int = 8, device: str | None = None, overwrite: bool = False,
    progress: bool = False,
) -> SectionPrediction:  # fmt: skip
    """Predict every section of `roi` (default: the raw volume) with the model of
    `train_config` at `checkpoint`, into `out_container`/{affs_dataset, lsds_dataset}."""
    if sections_per_batch < 1:
        raise ConnectoError(f"sections_per_batch {sections_per_batch}: must be at least 1")
    checkpoint = Path(checkpoint)
    device = device or default_device()
    model = load_model(train_config, checkpoint, device)
    raw = open_raw(raw_container, raw_dataset)
    voxel_size = Coordinate(raw.voxel_size)
    roi = roi or raw.roi
    if not _on_grid(roi, raw):
        raise ConnectoError(f"roi {roi} is not on the {tuple(voxel_size)} nm voxel grid of raw")
    if train_config.voxel_size and Coordinate(train_config.voxel_size) != voxel_size:
        raise ConnectoError(
            f"{raw_container}/{raw_dataset}: voxel size {list(voxel_size)} differs from the "
            f"model's training data ({list(train_config.voxel_size)})"
        )
    plane = train_config.network_output_shape
    k = train_config.context_sections
    context = (Coordinate(train_config.input_shape) - Coordinate(plane)) // 2
    grow = Coordinate((k, *context)) * voxel_size
    chunk = Coordinate((1, *plane))
    attrs = {"neighborhood": [list(o) for o in train_config.neighborhood],
             "context_sections": k, "checkpoint": str(checkpoint)}  # fmt: skip
    out = Path(out_container)
    channels = len(train_config.neighborhood)
    affs = prepare_channels(out / affs_dataset, channels, roi, voxel_size, chunk, attrs, overwrite)
    lsds = None
    if train_config.lsds:
        lsds_attrs = {**attrs, "lsds": True}
        lsds = prepare_channels(
            out / lsds_dataset, LSD_2D_CHANNELS, roi, voxel_size, chunk, lsds_attrs, overwrite
        )
    tiles = list(_tiles(roi, voxel_size, sections_per_batch, plane))
    levels = (
        None if train_config.section_percentiles is None
        else volume_section_levels(raw, train_config.section_percentiles)
    )  # fmt: skip
    for tile in tqdm(tiles, desc="predict", unit="tile", disable=not progress):
        write = tile.intersect(roi)
        sections = write.shape[0] // voxel_size[0]
        # only the sections this tile writes, with k neighbours each side
        read = Roi(tile.offset, (write.shape[0], *tile.shape[1:])).grow(grow, grow)
        batch = _windows(_network_input(read_roi(raw, read), levels, read, raw), sections, k)
        with torch.no_grad():
            pred_lsds, pred_affs = model(torch.from_numpy(batch).to(device))
        crop = (slice(None), slice(None), *((write - tile.offset) / voxel_size).to_slices()[1:])
        affs[write] = _to_uint8(pred_affs)[crop]
        if lsds is not None:
            lsds[write] = _to_uint8(pred_lsds)[crop]
    return SectionPrediction(
        out / affs_dataset,
        out / lsds_dataset if lsds is not None else None,
        roi,
        roi.shape[0] // voxel_size[0],
    )


def predict_with_checkpoint(
    checkpoint: Path, raw_container: Path, raw_dataset: str, out_container: Path,
    overwrite: bool = False,
) -> SectionPrediction:  # fmt: skip
    """`connecto bootstrap predict-2d`: every section with the model of `checkpoint` (its
    setup's train config)."""
    config = train_config_of(checkpoint)
    return predict_sections(checkpoint, config, raw_container, raw_dataset, out_container,
                            overwrite=overwrite, progress=True)  # fmt: skip
