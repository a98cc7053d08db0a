"""What the steps of `connecto segment` share: their result, the volumes and the segment
graph they read and write, and where their worker logs go."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
from funlib.geometry import Roi
from funlib.persistence import Array
from volara.logging import get_log_basedir, set_log_basedir

from connecto import ConnectoError
from connecto.data.ingest import HDF5_SUFFIXES
from connecto.data.volumes import open_raw
from connecto.db.graph import MongoDB, MongoDBGraphDataBase
from connecto.postprocess.blockwise import AFFINITY_COUNT, MEAN_AFFINITY, MERGE_SCORE
from connecto.tasks.segmentation.config import SegmentConfig


@dataclass(frozen=True)
class StepResult:
    step: str
    skipped: bool
    detail: str


# ---------------------------------------------------------------- volumes


# what a graph without fragments means: fragments grow inside cells only
NO_FRAGMENTS = (
    "the segment graph has no fragments: nowhere is the mean nearest-neighbour affinity "
    "above boundary_threshold, so the affinities mark every voxel as boundary (an untrained "
    "model predicts about 0.5 everywhere); check the checkpoint and its training"
)


def open_volume(container: str | Path, dataset: str) -> Array:
    """A read-only Array of a zarr/N5 dataset, or of an HDF5 dataset (its `resolution`
    and `offset` attributes give voxel size and offset), read lazily."""
    if Path(container).suffix in HDF5_SUFFIXES:
        if not Path(container).is_file():
            raise ConnectoError(f"{container}: no such HDF5 file")
        handle = h5py.File(container, "r")
        if dataset not in handle:
            raise ConnectoError(f"{container}: no dataset {dataset!r}")
        data = handle[dataset]
        voxel_size = tuple(int(v) for v in data.attrs.get("resolution", (1,) * data.ndim))
        offset = tuple(int(v) for v in data.attrs.get("offset", (0,) * data.ndim))
        return Array(data, offset=offset, voxel_size=voxel_size)
    return open_raw(container, dataset)


def dataset_path(config: SegmentConfig, name: str) -> Path:
    return Path(config.output_container) / name


def dataset_exists(path: Path) -> bool:
    return (path / ".zarray").is_file()


def ensure_group(path: Path) -> None:
    """A zarr (v2) group at `path` unless one is there: its `.zgroup`, so that
    `zarr.open` reads the container (and `segmentation/`) as a group of the datasets."""
    path.mkdir(parents=True, exist_ok=True)
    marker = path / ".zgroup"
    if not marker.exists() and not (path / ".zarray").exists():
        marker.write_text(json.dumps({"zarr_format": 2}, indent=4) + "\n")


def ensure_container(config: SegmentConfig) -> Path:
    """The output container as a zarr group (created when missing; N5 left as it is)."""
    container = Path(config.output_container)
    if container.suffix.lower() != ".n5":
        ensure_group(container)
    return container


def work_roi(config: SegmentConfig, available: Roi, source: str) -> Roi:
    roi = config.total_roi
    if roi is None:
        return available
    if not available.contains(roi):
        what = f"roi {config.roi}"
        if config.validation_roi is not None:
            what += f" with validation_roi {config.validation_roi} ({roi})"
        raise ConnectoError(f"{what} (nm) is not inside {source} ({available})")
    return roi


@contextmanager
def logs_in(directory: Path) -> Iterator[None]:
    """volara and daisy write their worker logs under `directory`, not the cwd; daisy's
    scheduler listens on the loopback unless DAISY_HOST says otherwise."""
    previous = get_log_basedir()
    directory.mkdir(parents=True, exist_ok=True)
    set_log_basedir(directory)
    os.environ.setdefault("DAISY_HOST", "127.0.0.1")
    try:
        yield
    finally:
        set_log_basedir(previous)


def graph_config(config: SegmentConfig) -> MongoDB:
    return MongoDB(
        name=config.db_name,
        prefix=config.prefix,
        edge_attrs={MEAN_AFFINITY: "float", AFFINITY_COUNT: "int", MERGE_SCORE: "float"},
    )


def open_graph(config: SegmentConfig, mode: str = "r") -> MongoDBGraphDataBase:
    try:
        return graph_config(config).open(mode)
    except RuntimeError:
        raise ConnectoError(
            f"no segment graph '{config.graph}' in database {config.db_name}: "
            "run `connecto segment fragments` first"
        ) from None
