"""Raw EM volumes in zarr or N5, read through funlib.persistence.

Coordinates are world units (nanometres), z-y-x. One normalisation maps raw intensities
to float32 in [-1, 1]; training (gunpowder) and prediction (`read_crop`) both use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError

# Raw values are scaled to [0, 1] by `raw_scale(dtype)`, then mapped to [-1, 1] with
# `value * RAW_SCALE + RAW_SHIFT` (after intensity augmentation, which needs [0, 1]).
RAW_SCALE = 2.0
RAW_SHIFT = -1.0


def raw_scale(dtype: np.dtype | type) -> float:
    """The factor mapping raw values of `dtype` to [0, 1] (integers: by their maximum)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


def normalize_raw(data: np.ndarray) -> np.ndarray:
    """Raw intensities as float32 in [-1, 1], exactly as the training pipeline sees them."""
    scaled = data.astype(np.float32) * np.float32(raw_scale(data.dtype))
    return scaled * np.float32(RAW_SCALE) + np.float32(RAW_SHIFT)


def is_n5(container: str | Path) -> bool:
    return str(container).rstrip("/").endswith(".n5")


def open_container(container: str | Path, mode: str = "r") -> zarr.hierarchy.Group:
    path = Path(container)
    if not path.exists():
        raise ConnectoError(f"{container}: no such zarr/N5 container")
    store = zarr.N5FSStore(str(path)) if is_n5(path) else zarr.DirectoryStore(str(path))
    try:
        return zarr.open_group(store, mode=mode)
    except (zarr.errors.GroupNotFoundError, ValueError) as error:
        raise ConnectoError(f"{container}: not a zarr/N5 container ({error})") from None


def list_datasets(container: str | Path) -> list[str]:
    """Every array in the container, as slash-separated paths, sorted."""
    group = open_container(container)
    found: list[str] = []
    group.visit(lambda name: found.append(name) if isinstance(group[name], zarr.Array) else None)
    return sorted(found)


def metadata_override(attrs: Mapping[str, Any], n5: bool) -> dict[str, Any]:
    """gunpowder/synister containers carry `resolution` (N5: in x-y-x order) instead of
    funlib's `voxel_size`; read them as voxel size and offset."""
    if "voxel_size" in attrs or "resolution" not in attrs:
        return {}
    order = -1 if n5 else 1
    override = {"voxel_size": tuple(int(v) for v in attrs["resolution"][::order])}
    if "offset" in attrs:
        override["offset"] = tuple(int(v) for v in attrs["offset"][::order])
    return override


def open_raw(container: str | Path, dataset: str) -> Array:
    """A read-only funlib Array of `container/dataset` (zarr or N5), with the voxel size
    and offset from its metadata (`voxel_size`/`offset`, or gunpowder's `resolution`)."""
    group = open_container(container)
    if dataset not in group or not isinstance(group[dataset], zarr.Array):
        available = ", ".join(list_datasets(container)) or "none"
        raise ConnectoError(
            f"{container}: no dataset {dataset!r} (raw_dataset); available: {available}"
        )
    store = zarr.N5FSStore(str(container)) if is_n5(container) else str(container)
    override = metadata_override(group[dataset].attrs.asdict(), is_n5(container))
    return open_ds(store, mode="r", path=dataset, **override)


def crop_roi(array: Array, center_nm: Sequence[float], shape_voxels: Sequence[int]) -> Roi:
    """The ROI of `shape_voxels` voxels centred on `center_nm`, on the voxel grid: voxel
    index `center // voxel_size` is at `shape // 2` inside the crop (as gunpowder's
    `SpecifiedLocation` places it)."""
    voxel_size = Coordinate(array.voxel_size)
    shape = Coordinate(shape_voxels)
    center_voxel = Coordinate(
        int(np.floor(c / v)) for c, v in zip(center_nm, voxel_size, strict=True)
    )
    begin = (center_voxel - shape // 2) * voxel_size
    return Roi(begin, shape * voxel_size)


def read_crop(array: Array, center_nm: Sequence[float], shape_voxels: Sequence[int]) -> np.ndarray:
    """`shape_voxels` of raw around `center_nm`, normalised like training (float32 in
    [-1, 1]); parts outside the volume read as zero raw, as training's padding does."""
    roi = crop_roi(array, center_nm, shape_voxels)
    return normalize_raw(array.to_ndarray(roi, fill_value=0))
