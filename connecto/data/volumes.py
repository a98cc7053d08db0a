"""Raw EM volumes in zarr or N5, read through funlib.persistence.

Coordinates are world units (nanometres), z-y-x. One normalisation maps raw intensities
to float32 in [-1, 1]; training (gunpowder) and prediction (`read_crop`) both use it, and
both read crops through `read_roi`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds, prepare_ds

from connecto import ConnectoError

# Raw values are scaled to [0, 1] by `raw_scale(dtype)`, then mapped to [-1, 1] with
# `value * RAW_SCALE + RAW_SHIFT` (after intensity augmentation, which needs [0, 1]).
RAW_SCALE = 2.0
RAW_SHIFT = -1.0
NETWORK_RANGE = (RAW_SHIFT, RAW_SHIFT + RAW_SCALE)


def raw_scale(dtype: np.dtype | type) -> float:
    """The factor mapping raw values of `dtype` to [0, 1] (integers: by their maximum)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


def scale_raw(
    data: np.ndarray, value_range: tuple[float, float] = (0.0, 1.0), out: np.ndarray | None = None
) -> np.ndarray:
    """Raw intensities as float32, mapped linearly from [0, 1] after `raw_scale` to
    `value_range` ([0, 1]: what intensity augmentation expects); into `out` if given."""
    low, high = value_range
    if out is None:
        out = data.astype(np.float32)
    else:
        out[...] = data
    out *= np.float32(raw_scale(data.dtype) * (high - low))  # in place: one pass each
    if low:
        out += np.float32(low)
    return out


def normalize_raw(data: np.ndarray) -> np.ndarray:
    """Raw intensities as float32 in [-1, 1], exactly as the training pipeline sees them."""
    return scale_raw(data, NETWORK_RANGE)


def is_n5(container: str | Path) -> bool:
    return str(container).rstrip("/").endswith(".n5")


def _store(container: Path) -> zarr.storage.BaseStore:
    path = str(container)
    return zarr.N5FSStore(path) if is_n5(path) else zarr.DirectoryStore(path)


def open_container(container: str | Path, mode: str = "r") -> zarr.hierarchy.Group:
    path = Path(container)
    if not path.exists():
        raise ConnectoError(f"{container}: no such zarr/N5 container")
    try:
        return zarr.open_group(_store(path), mode=mode)
    except (zarr.errors.GroupNotFoundError, ValueError) as error:
        raise ConnectoError(f"{container}: not a zarr/N5 container ({error})") from None


def list_datasets(container: str | Path) -> list[str]:
    """Every array in the container, as slash-separated paths, sorted."""
    group = open_container(container)
    found: list[str] = []
    group.visit(lambda name: found.append(name) if isinstance(group[name], zarr.Array) else None)
    return sorted(found)


def whole_numbers(values: Sequence[Any], what: str) -> tuple[int, ...]:
    """`values` as ints when each is a whole number (10.0 -> 10); a fractional one (4.6)
    is refused, never truncated: funlib's Coordinates are integers."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ConnectoError(f"{what} {list(values)}: expected numbers") from None
    if not all(math.isfinite(v) and v == int(v) for v in numbers):
        text = ",".join(f"{v:g}" for v in numbers)
        raise ConnectoError(
            f"{what} {text} is not whole nm, and coordinates are integers (never truncated); "
            "re-ingest with `connecto data ingest --voxel-size` (rounded nm, or a finer unit)"
        )
    return tuple(int(v) for v in numbers)


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


def check_whole_metadata(attrs: Mapping[str, Any], where: str) -> None:
    """Refuse a fractional voxel size or offset (e.g. 4.6 nm): funlib's Coordinates are
    integers and would truncate it, shifting every crop against positions in nm."""
    for key in ("voxel_size", "resolution", "offset"):
        values = attrs.get(key)
        if isinstance(values, list | tuple):
            whole_numbers(values, f"{where}: {key}")


def open_raw(container: str | Path, dataset: str, key: str = "raw_dataset") -> Array:
    """A read-only funlib Array of `container/dataset` (zarr or N5), with the voxel size
    and offset from its metadata (`voxel_size`/`offset`, or gunpowder's `resolution`);
    `key` is the config key that named the dataset, for the message when it is missing."""
    group = open_container(container)
    if dataset not in group or not isinstance(group[dataset], zarr.Array):
        available = ", ".join(list_datasets(container)) or "none"
        raise ConnectoError(f"{container}: no dataset {dataset!r} ({key}); available: {available}")
    store = zarr.N5FSStore(str(container)) if is_n5(container) else str(container)
    attrs = group[dataset].attrs.asdict()
    check_whole_metadata(attrs, f"{container}/{dataset}")
    override = metadata_override(attrs, is_n5(container))
    return open_ds(store, mode="r", path=dataset, **override)


def open_configured(container: str, dataset: str, keys: tuple[str, str], source: str) -> Array:
    """`container/dataset` named by the config keys `keys` (container key, dataset key) of
    `source`, or one message naming them."""
    try:
        return open_raw(container, dataset, keys[1])
    except ConnectoError as error:
        raise ConnectoError(f"{source}: key '{keys[0]}' = {container!r}: {error}") from None


def prepare_volume(path: str | Path, **kwargs: Any) -> Array:
    """funlib's `prepare_ds` at `path` (container/dataset), with the zarr/N5 groups from the
    container down to the dataset made first: `prepare_ds` writes the array alone, and a
    container without its root group can be neither opened nor listed."""
    parts = Path(path).parts
    for index, part in enumerate(parts[:-1]):
        if part.endswith((".zarr", ".n5")):
            container = Path(*parts[: index + 1])
            container.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(_store(container), mode="a")
            if parts[index + 1 : -1]:
                group.require_group("/".join(parts[index + 1 : -1]))
            break
    return prepare_ds(str(path), **kwargs)


def prepare_channels(
    path: Path, channels: int, roi: Roi, voxel_size: Coordinate, chunk: Sequence[int],
    attrs: Mapping[str, Any], overwrite: bool = True,
) -> Array:  # fmt: skip
    """A uint8 (channels, z, y, x) prediction dataset over `roi` (chunks: all channels by
    `chunk`), with `attrs` (e.g. the affinities' `neighborhood`); kept if it exists
    unless `overwrite`."""
    array = prepare_volume(
        path, shape=(channels, *(roi.shape / voxel_size)), offset=roi.offset,
        voxel_size=voxel_size, axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        chunk_shape=(channels, *chunk), dtype=np.uint8, mode="w" if overwrite else "a",
    )  # fmt: skip
    array._source_data.attrs.update(attrs)
    return array


def voxel_origin(voxel_size: Sequence[int], point_nm: Sequence[float]) -> Coordinate:
    """The world position (nm) of the voxel grid's voxel that `point_nm` lies in."""
    return Coordinate(int(np.floor(c / v)) * v for c, v in zip(point_nm, voxel_size, strict=True))


def crop_roi(array: Array, center_nm: Sequence[float], shape_voxels: Sequence[int]) -> Roi:
    """The ROI of `shape_voxels` voxels centred on `center_nm`, on the voxel grid: the
    voxel `center_nm` lies in is at `shape // 2` inside the crop (as training's
    `SynapseBatchSource` and `batch_request` place it)."""
    voxel_size = Coordinate(array.voxel_size)
    shape = Coordinate(shape_voxels)
    begin = voxel_origin(voxel_size, center_nm) - (shape // 2) * voxel_size
    return Roi(begin, shape * voxel_size)


def read_roi(array: Array, roi: Roi) -> np.ndarray:
    """`roi` (on the voxel grid) of `array` in its dtype, zero outside the volume: as
    `array.to_ndarray(roi, fill_value=0)`, but straight from the zarr/N5 array underneath.
    funlib reads through dask, whose graph building and scheduling cost about as much as
    decoding a training crop's chunks; arrays with lazy ops or channels still go that way."""
    source = array._source_data  # funlib.persistence 0.6: the array `open_ds` opened
    if array.lazy_ops or array.channel_dims or not isinstance(source, zarr.Array | np.ndarray):
        return array.to_ndarray(roi, fill_value=0)
    voxel_size = Coordinate(array.voxel_size)
    wanted = (roi - array.offset) / voxel_size  # in voxels of `source`
    if wanted * voxel_size + array.offset != roi:
        raise ValueError(f"ROI {roi} is not on the voxel grid of {array.roi} ({voxel_size})")
    inside = wanted.intersect(Roi((0,) * wanted.dims, source.shape))
    if inside == wanted:
        data = source[wanted.to_slices()]
        return data.copy() if isinstance(source, np.ndarray) else data  # a view otherwise
    data = np.zeros(wanted.shape, dtype=source.dtype)
    if not inside.empty:
        data[(inside - wanted.offset).to_slices()] = source[inside.to_slices()]
    return data


def read_crop(array: Array, center_nm: Sequence[float], shape_voxels: Sequence[int]) -> np.ndarray:
    """`shape_voxels` of raw around `center_nm`, normalised like training (float32 in
    [-1, 1]); parts outside the volume read as zero raw, as training's do."""
    return normalize_raw(read_roi(array, crop_roi(array, center_nm, shape_voxels)))
