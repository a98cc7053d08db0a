"""Convert HDF5 datasets and TIFF stacks into chunked, compressed zarr.

Data is copied in slabs of whole chunk rows along z, so volumes larger than memory work.
A dataset records how many sections are done (`ingested_sections`), so an interrupted
ingest continues where it stopped; a finished one is left alone.
"""

from __future__ import annotations

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
    voxel_size: tuple[int, ...] | None
    offset: tuple[int, ...] | None


def _int_tuple(values: Sequence[float] | np.ndarray | None) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _hdf5_sources(path: Path, names: list[str] | None) -> Iterator[_Source]:
    handle = h5py.File(path, "r")
    found: list[str] = []
    handle.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
    for name in names or found:
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
            name, data.shape, data.dtype, read,
            _int_tuple(data.attrs.get("resolution")), _int_tuple(data.attrs.get("offset")),
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
    return _Source(name, shape, dtype, read, None, None)


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
        return [_tiff_source(source, (datasets or ["raw"])[0])]
    raise ConnectoError(
        f"{source}: unknown format (expected HDF5 {'/'.join(HDF5_SUFFIXES)}, "
        f"TIFF {'/'.join(TIFF_SUFFIXES)} or a directory of TIFF sections)"
    )


def _metadata(
    src: _Source, voxel_size: Sequence[int] | None, offset: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    size = _int_tuple(voxel_size) or src.voxel_size
    if size is None:
        raise ConnectoError(f"{src.name}: voxel size unknown; pass --voxel-size Z,Y,X (nm)")
    off = _int_tuple(offset) or src.offset or (0,) * len(src.shape)
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
