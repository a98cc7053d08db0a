"""Convert HDF5 datasets and TIFF stacks into chunked, compressed zarr.

Data is copied in slabs of whole chunk rows along z, so volumes larger than memory work.
A dataset records how many sections are done (`ingested_sections`), so an interrupted
ingest continues where it stopped; a finished one is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import tifffile
import zarr
from numcodecs import Blosc
from tqdm import tqdm

from connecto import ConnectoError

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
DEFAULT_CHUNKS = (32, 128, 128)
DONE_ATTR = "ingested_sections"


@dataclass(frozen=True)
class IngestedDataset:
    name: str
    shape: tuple[int, ...]
    dtype: str
    voxel_size: tuple[int, ...]
    offset: tuple[int, ...]
    skipped: bool  # already complete before this call


@dataclass
class _Source:
    """One volume to copy: its shape, dtype, metadata and a reader of z-slabs."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]
    voxel_size: tuple[float, ...] | None  # as stored (HDF5 `resolution`), maybe not whole
    offset: tuple[float, ...] | None
    where: str = ""  # file:dataset, for messages
    is_hdf5: bool = False


def _int_tuple(values: Sequence[float] | np.ndarray | None) -> tuple[int, ...] | None:
    """Whole numbers as ints (10.0 -> 10); None when any value is not whole (4.6)."""
    if values is None:
        return None
    numbers = [float(v) for v in np.ravel(values)]
    if not all(math.isfinite(v) and v == int(v) for v in numbers):
        return None
    return tuple(int(v) for v in numbers)


def _text(values: Sequence[float] | np.ndarray) -> str:
    return ",".join(f"{float(v):g}" for v in np.ravel(values))


def _stored(values: Sequence[float] | np.ndarray | None) -> tuple[float, ...] | None:
    """An HDF5 attribute's values as they are (not truncated)."""
    return None if values is None else tuple(float(v) for v in np.ravel(values))


def _dataset_map(path: Path, specs: list[str] | None, found: list[str]) -> list[tuple[str, str]]:
    """(source dataset, zarr name) pairs from `--dataset` values `NAME` or `SRC:DST`."""
    if not specs:
        return [(name, name) for name in found]
    pairs = []
    for spec in specs:
        src, sep, dst = spec.partition(":")
        if spec in found or not sep:
            src, dst = spec, spec
        if not src or not dst:
            raise ConnectoError(f"--dataset {spec!r}: expected NAME or SOURCE:DESTINATION")
        pairs.append((src, dst))
    names = [dst for _, dst in pairs]
    if len(set(names)) != len(names):
        raise ConnectoError(f"{path}: --dataset names {names} repeat a destination")
    return pairs


def _hdf5_sources(path: Path, names: list[str] | None) -> Iterator[_Source]:
    handle = h5py.File(path, "r")
    found: list[str] = []
    handle.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
    for name, out_name in _dataset_map(path, names, found):
        if name not in found:
            raise ConnectoError(
                f"{path}: no dataset {name!r} (--dataset); available: {', '.join(found) or 'none'}"
            )
        data = handle[name]
        if data.ndim != 3:
            if names:
                raise ConnectoError(
                    f"{path}:{name}: has {data.ndim} dimensions, expected 3 (z-y-x)"
                )
            continue  # defaulting to all datasets: only volumes

        def read(z0: int, z1: int, data: h5py.Dataset = data) -> np.ndarray:
            return data[z0:z1]

        yield _Source(
            out_name, data.shape, data.dtype, read,
            _stored(data.attrs.get("resolution")), _stored(data.attrs.get("offset")),
            where=f"{path}:{name}", is_hdf5=True,
        )  # fmt: skip


def _tiff_source(path: Path, name: str) -> _Source:
    """A multi-page TIFF, or a directory of single-section TIFFs sorted by name."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise ConnectoError(f"{path}: no .tif/.tiff files in this directory")
        first = tifffile.imread(files[0])
        if first.ndim != 2:
            raise ConnectoError(f"{files[0]}: expected one 2D section, got shape {first.shape}")

        def read(z0: int, z1: int) -> np.ndarray:
            return np.stack([tifffile.imread(f) for f in files[z0:z1]])

        shape, dtype = (len(files), *first.shape), first.dtype
    else:
        pages = tifffile.TiffFile(path).pages
        first = pages[0].asarray()
        if len(pages) == 1 and first.ndim == 3:
            # one page holding a short stack (tifffile stores up to 4 sections as samples)
            def read(z0: int, z1: int) -> np.ndarray:
                return first[z0:z1]

            shape, dtype = first.shape, first.dtype
        elif first.ndim != 2:
            raise ConnectoError(f"{path}: pages have shape {first.shape}, expected 2D sections")
        else:

            def read(z0: int, z1: int) -> np.ndarray:
                return np.stack([pages[i].asarray() for i in range(z0, z1)])

            shape, dtype = (len(pages), *first.shape), first.dtype
    return _Source(name, shape, dtype, read, None, None, where=str(path))


def _sources(source: Path, datasets: list[str] | None) -> list[_Source]:
    if not source.exists():
        raise ConnectoError(f"{source}: no such file or directory")
    suffix = source.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        try:
            return list(_hdf5_sources(source, datasets))
        except OSError as error:
            raise ConnectoError(f"{source}: cannot be read as HDF5: {error}") from None
    if suffix in TIFF_SUFFIXES or source.is_dir():
        if datasets and len(datasets) > 1:
            raise ConnectoError(f"{source}: a TIFF stack is one volume; give one --dataset")
        if datasets and ":" in datasets[0]:
            raise ConnectoError(
                f"--dataset {datasets[0]!r}: a TIFF stack has no dataset names; "
                "give only the name to write (e.g. --dataset raw)"
            )
        return [_tiff_source(source, (datasets or ["raw"])[0])]
    raise ConnectoError(
        f"{source}: unknown format (expected HDF5 {'/'.join(HDF5_SUFFIXES)}, "
        f"TIFF {'/'.join(TIFF_SUFFIXES)} or a directory of TIFF sections)"
    )


def _fractional_resolution(src: _Source) -> str:
    """Why a resolution such as 50 x 4.6 x 4.6 nm is refused, and what to pass instead."""
    assert src.voxel_size is not None
    rounded = ",".join(str(max(1, round(v))) for v in src.voxel_size)
    finer = ""
    for factor, unit in ((10, "Å"), (1000, "pm")):
        scaled = [round(v * factor, 6) for v in src.voxel_size]
        if all(v == int(v) for v in scaled):
            values = ",".join(str(int(v)) for v in scaled)
            finer = f"--voxel-size {values} ({unit}: every ROI and position then in {unit})"
            break
    finer = finer or "--voxel-size in a finer unit (every ROI and position then in it)"
    return (
        f"{src.where}: resolution {_text(src.voxel_size)} nm is not whole nm, and coordinates "
        f"are integers (never truncated); pass --voxel-size {rounded} (rounded nm) or {finer}"
    )


def _metadata(
    src: _Source, voxel_size: Sequence[int] | None, offset: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Voxel size and offset in whole nm: given, else stored; never truncated."""
    for key, given in (("--voxel-size", voxel_size), ("--offset", offset)):
        if given is not None and _int_tuple(given) is None:
            raise ConnectoError(
                f"{key} {_text(given)}: values must be whole nm (coordinates are integers); "
                "give a finer unit for every coordinate instead (e.g. 46 for 4.6 nm in Å)"
            )
    if voxel_size is not None:
        size = _int_tuple(voxel_size)
    elif src.voxel_size is None:
        hdf5 = " (the HDF5 dataset has no resolution attribute)" if src.is_hdf5 else ""
        raise ConnectoError(f"{src.where}: voxel size unknown{hdf5}; pass --voxel-size Z,Y,X (nm)")
    else:
        size = _int_tuple(src.voxel_size)
        if size is None:
            raise ConnectoError(_fractional_resolution(src))
    if offset is not None:
        off = _int_tuple(offset)
    elif src.offset is None:
        off = (0,) * len(src.shape)
    else:
        off = _int_tuple(src.offset)
        if off is None:
            raise ConnectoError(
                f"{src.where}: offset {_text(src.offset)} nm is not whole nm "
                "(it is never truncated); pass --offset Z,Y,X in the unit of --voxel-size"
            )
    for key, value in (("--voxel-size", size), ("--offset", off)):
        if len(value) != len(src.shape):
            raise ConnectoError(f"{key} {value}: expected {len(src.shape)} values (z, y, x)")
    if any(v <= 0 for v in size):
        raise ConnectoError(f"--voxel-size {size}: values must be positive")
    if any(o % v for o, v in zip(off, size, strict=True)):
        raise ConnectoError(f"--offset {off}: must be a multiple of the voxel size {size}")
    return size, off


def write_volume_attrs(array: zarr.Array, voxel_size: Sequence[int], offset: Sequence[int]) -> None:
    """funlib's `voxel_size`/`offset`/axis names and gunpowder's `resolution`."""
    array.attrs.update(
        voxel_size=list(voxel_size), offset=list(offset), resolution=list(voxel_size),
        axis_names=["z", "y", "x"], units=["nm", "nm", "nm"],
    )  # fmt: skip


def create_volume(
    root: zarr.hierarchy.Group, name: str, shape: Sequence[int], dtype: np.dtype,
    voxel_size: Sequence[int], offset: Sequence[int], chunks: Sequence[int] = DEFAULT_CHUNKS,
    overwrite: bool = False,
) -> zarr.Array:  # fmt: skip
    """A chunked, compressed 3D dataset with full metadata in a zarr group."""
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    array = root.create_dataset(
        name, shape=tuple(shape), chunks=chunks, dtype=dtype, overwrite=overwrite,
        compressor=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
    )  # fmt: skip
    write_volume_attrs(array, voxel_size, offset)
    return array


def ingest(
    source: Path, out: Path, datasets: list[str] | None = None,
    voxel_size: Sequence[int] | None = None, offset: Sequence[int] | None = None,
    chunks: Sequence[int] = DEFAULT_CHUNKS, overwrite: bool = False, progress: bool = True,
) -> list[IngestedDataset]:  # fmt: skip
    """Copy the volumes of `source` (HDF5 file, TIFF file or TIFF directory) into the zarr
    container `out`; datasets default to every 3D dataset of an HDF5 file (or `raw`)."""
    sources = _sources(Path(source), datasets)
    if not sources:
        raise ConnectoError(f"{source}: no 3D datasets to ingest")
    plans = [(src, *_metadata(src, voxel_size, offset)) for src in sources]  # validate all first
    root = zarr.open_group(str(out), mode="a")  # writes the root .zgroup
    results = []
    for src, size, off in plans:
        existing = root.get(src.name)
        resumable = (
            isinstance(existing, zarr.Array) and existing.shape == src.shape
            and existing.dtype == src.dtype and not overwrite
        )  # fmt: skip
        if existing is not None and not resumable and not overwrite:
            raise ConnectoError(
                f"{out}/{src.name} exists with shape {existing.shape}; "
                "use --overwrite to replace it"
            )
        array = existing if resumable else create_volume(
            root, src.name, src.shape, src.dtype, size, off, chunks, overwrite=True
        )  # fmt: skip
        write_volume_attrs(array, size, off)
        done = int(array.attrs.get(DONE_ATTR, 0)) if resumable else 0
        step = array.chunks[0]
        with tqdm(
            total=src.shape[0], initial=done, unit="section", desc=src.name,
            disable=not progress, dynamic_ncols=True,
        ) as bar:  # fmt: skip
            for z0 in range(done, src.shape[0], step):
                z1 = min(z0 + step, src.shape[0])
                array[z0:z1] = src.read(z0, z1)
                array.attrs[DONE_ATTR] = z1
                bar.update(z1 - z0)
        results.append(IngestedDataset(
            src.name, tuple(src.shape), str(src.dtype), size, off, skipped=done >= src.shape[0]
        ))  # fmt: skip
    return results
