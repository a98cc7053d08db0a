"""3D affinities from stacked 2D predictions with a trained 2D->3D checkpoint.

The input is what `connecto.tasks.segmentation_2d.predict.predict_sections` writes: uint8
in-plane affinities (and 2D LSDs) per section. The output is uint8 3D affinities with
their `neighborhood` attribute, the form `connecto segment` post-processes. The volume is
tiled by the network's output shape; each tile reads its valid context (zeros outside).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from tqdm import tqdm

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_weights, read_checkpoint
from connecto.data.volumes import prepare_channels
from connecto.tasks.affinities_from_2d.config import LSD_2D_CHANNELS, AffinitiesFrom2dTrainConfig
from connecto.tasks.affinities_from_2d.model import AffinitiesFrom2dModel, build_model
from connecto.tasks.section_contrast import stored_section_levels, stretch

MODEL_KEYS = "input_offsets, input_lsds, neighborhood, fmaps, fmap_inc_factor, downsample_factors"


@dataclass(frozen=True)
class AffinitiesPrediction:
    path: Path
    roi: Roi
    tiles: int


def load_model(
    config: AffinitiesFrom2dTrainConfig, checkpoint: Path, device: str
) -> AffinitiesFrom2dModel:  # fmt: skip
    model = build_model(config)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def _open_channels(path: Path, channels: int, what: str) -> Array:
    try:
        array = open_ds(path, mode="r")
    except Exception as error:  # funlib raises several kinds for a missing dataset
        raise ConnectoError(f"{path}: cannot open the 2D {what} ({error})") from None
    if array.shape[0] != channels or len(array.shape) != 4:
        raise ConnectoError(
            f"{path}: shape {tuple(array.shape)}, expected ({channels}, z, y, x): the 2D "
            f"model's {what} must match the 2D->3D model's input ({channels} channels)"
        )
    return array


def _inputs(config: AffinitiesFrom2dTrainConfig, stack: Path, affs: str, lsds: str) -> list[Array]:
    arrays = [_open_channels(stack / affs, len(config.input_offsets), "affinities")]
    offsets = arrays[0]._source_data.attrs.get("neighborhood")
    if offsets is not None and [list(o) for o in offsets] != [
        list(o) for o in config.input_offsets
    ]:
        raise ConnectoError(
            f"{stack / affs}: in-plane offsets {offsets} differ from the 2D->3D model's "
            f"input_offsets {[list(o) for o in config.input_offsets]}"
        )
    if config.input_lsds:
        arrays.append(_open_channels(stack / lsds, LSD_2D_CHANNELS, "LSDs"))
    voxel_size = Coordinate(arrays[0].voxel_size)
    if voxel_size != Coordinate(config.voxel_size):
        raise ConnectoError(
            f"{stack / affs}: voxel size {list(voxel_size)} differs from the 2D->3D model's "
            f"voxel_size {list(config.voxel_size)}"
        )
    return arrays


def _levels(config: AffinitiesFrom2dTrainConfig, inputs: list[Array], roi: Roi) -> (
    np.ndarray | None
):  # fmt: skip
    """(2, C, z) percentiles of every section of `roi` (whole sections: per-tile levels
    would show the tiles' seams), or None when the model takes inputs as they are."""
    if config.section_percentiles is None:
        return None
    levels = []
    for array in inputs:  # section by section, strided: a stack need not fit in memory
        first = (roi.begin[0] - array.roi.begin[0]) // array.voxel_size[0]
        sections = range(first, first + roi.shape[0] // array.voxel_size[0])
        levels.append(stored_section_levels(array.data, sections, config.section_percentiles))
    return np.concatenate(levels, axis=1)


def _scaled(stack: np.ndarray, levels: np.ndarray | None, first: int) -> np.ndarray:
    """uint8 `stack` (C, z, y, x) whose section 0 is section `first` of `levels` as the
    network's float input; sections outside `levels` are padding and stay 0."""
    if levels is None:
        return stack.astype(np.float32) / 255.0
    out = np.zeros(stack.shape, dtype=np.float32)
    inside = slice(max(0, -first), min(stack.shape[1], levels.shape[2] - first))
    part = levels[:, :, first + inside.start : first + inside.stop]
    out[:, inside] = stretch(stack[:, inside], part, 255.0)
    return out


def _tiles(roi: Roi, step: Coordinate) -> list[Roi]:
    tiles = []
    for z in range(roi.begin[0], roi.end[0], step[0]):
        for y in range(roi.begin[1], roi.end[1], step[1]):
            for x in range(roi.begin[2], roi.end[2], step[2]):
                tiles.append(Roi((z, y, x), step).intersect(roi))
    return tiles


def predict_affinities(
    checkpoint: str | Path, config: AffinitiesFrom2dTrainConfig, stack_container: str | Path,
    out_container: str | Path, roi: Roi | None = None, *, affs_2d: str = "affs_2d",
    lsds_2d: str = "lsds_2d", out_dataset: str = "affs", device: str | None = None,
    progress: bool = False,
) -> AffinitiesPrediction:  # fmt: skip
    """Predict 3D affinities over `roi` (default: the whole stack) into
    `out_container/out_dataset`."""
    checkpoint = Path(checkpoint)
    device = device or default_device()
    model = load_model(config, checkpoint, device)
    inputs = _inputs(config, Path(stack_container), affs_2d, lsds_2d)
    voxel_size = Coordinate(inputs[0].voxel_size)
    roi = inputs[0].roi if roi is None else roi.intersect(inputs[0].roi)
    out_shape = Coordinate(config.network_output_shape)
    context = (Coordinate(config.input_shape) - out_shape) * voxel_size / 2
    path = Path(out_container) / out_dataset
    neighborhood = {"neighborhood": [list(o) for o in config.neighborhood]}
    out = prepare_channels(path, len(config.neighborhood), roi, voxel_size, out_shape, neighborhood)
    tiles = _tiles(roi, out_shape * voxel_size)
    levels = _levels(config, inputs, roi)
    for tile in tqdm(tiles, desc="3D affinities", unit="tile", disable=not progress):
        full = Roi(tile.offset, out_shape * voxel_size)  # the network's whole output
        read = full.grow(context, context)
        stack = np.concatenate([a.to_ndarray(read, fill_value=0) for a in inputs])
        stack = _scaled(stack, levels, (read.begin[0] - roi.begin[0]) // voxel_size[0])
        with torch.no_grad():
            tensor = torch.from_numpy(stack)[None].to(device)
            affs = model(tensor)[0].cpu().numpy()
        inside = (tile - full.offset) / voxel_size
        out[tile] = (affs[(slice(None), *inside.to_slices())] * 255).round().astype(np.uint8)
    return AffinitiesPrediction(path, roi, len(tiles))


def predict_with_checkpoint(
    checkpoint: Path, stack_container: Path, out_container: Path
) -> AffinitiesPrediction:  # fmt: skip
    """`connecto bootstrap predict-3d`: 3D affinities of a whole stack with the model of
    `checkpoint` (its setup's train config)."""
    from connecto.experiment import checkpoint_config

    config = checkpoint_config(checkpoint, AffinitiesFrom2dTrainConfig, "affinities-from-2d")
    return predict_affinities(checkpoint, config, stack_container, out_container, progress=True)
