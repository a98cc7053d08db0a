"""Tile-by-tile prediction of a network with valid convolutions over a region of a
multi-channel volume, shared by the volume tasks (barcode enhancement and expression,
pixel embeddings, synapse detection).

The region is tiled by the network's output; each tile reads the input (all channels)
with the network's context around it (zero outside the volume, as in training), the task
turns the network's output into the values it stores, and the part inside the region is
written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from tqdm import tqdm

from connecto import ConnectoError
from connecto.data.volumes import raw_scale


def prediction_roi(roi: Roi | None, raw: Array, what: str) -> Roi:
    """`roi` (default: raw's), refused unless on raw's voxel grid and inside it."""
    voxel_size = Coordinate(raw.voxel_size)
    roi = raw.roi if roi is None else roi
    zero = Coordinate((0,) * voxel_size.dims)
    if (roi.offset - raw.roi.offset) % voxel_size != zero or roi.shape % voxel_size != zero:
        raise ConnectoError(f"{what}: roi {roi} is not on the {tuple(voxel_size)} nm voxel grid")
    if not raw.roi.contains(roi):
        raise ConnectoError(f"{what}: roi {roi} is not inside the raw volume {raw.roi}")
    return roi


@dataclass(frozen=True)
class TilePlan:
    """Where a prediction reads and writes (nm)."""

    roi: Roi
    voxel_size: Coordinate
    out_shape: Coordinate  # the network's output, voxels
    context: Coordinate  # read around each tile on every side, nm

    def tiles(self) -> list[Roi]:
        """The region covered by output tiles (the last ones reach beyond it)."""
        step = self.out_shape * self.voxel_size
        return [
            Roi((z, y, x), step)
            for z in range(self.roi.begin[0], self.roi.end[0], step[0])
            for y in range(self.roi.begin[1], self.roi.end[1], step[1])
            for x in range(self.roi.begin[2], self.roi.end[2], step[2])
        ]

    def inner(self) -> tuple[slice, ...]:
        """The input voxels under the network's output, channels first."""
        return (slice(None), *Roi(self.context / self.voxel_size, self.out_shape).to_slices())


def plan_tiles(
    config: Any, raw: Array, roi: Roi | None, out_path: Path, overwrite: bool, what: str = "raw"
) -> TilePlan:  # fmt: skip
    """Check `raw` (C, z, y, x) against the train `config` (voxel size; `input_shape`,
    `network_output_shape`) and the output (refused when it exists, unless `overwrite`)."""
    if len(raw.shape) != 4:
        raise ConnectoError(f"{what}: shape {tuple(raw.shape)}, expected (C, z, y, x)")
    voxel_size = Coordinate(raw.voxel_size)
    if config.voxel_size is not None and Coordinate(config.voxel_size) != voxel_size:
        raise ConnectoError(
            f"{what}: voxel size {list(voxel_size)} differs from the model's training data "
            f"({list(config.voxel_size)})"
        )
    roi = prediction_roi(roi, raw, str(out_path))
    if out_path.exists() and not overwrite:
        raise ConnectoError(f"{out_path} exists; pass overwrite (--overwrite) to replace it")
    out_shape = Coordinate(config.network_output_shape)
    context = (Coordinate(config.input_shape) - out_shape) * voxel_size / 2
    return TilePlan(roi, voxel_size, out_shape, context)


def predict_tiles(
    plan: TilePlan, raw: Array, out: Array, run: Callable[[np.ndarray], np.ndarray],
    progress: bool = False,
) -> int:  # fmt: skip
    """Write `run(input)` of every tile into `out`: `input` is the tile's (C, z, y, x)
    float32 raw with context, scaled to [0, 1] by its dtype; `run` returns the values to
    store over the tile's output. Returns the number of tiles."""
    scale = np.float32(raw_scale(raw.dtype))
    tiles = plan.tiles()
    for tile in tqdm(tiles, desc="predict", unit="tile", disable=not progress):
        data = raw.to_ndarray(tile.grow(plan.context, plan.context), fill_value=0)
        values = run(data.astype(np.float32) * scale)
        write = tile.intersect(plan.roi)
        crop = (slice(None), *((write - tile.offset) / plan.voxel_size).to_slices())
        out[write] = values[crop]
    return len(tiles)
