"""Centred raw crops around synapses of the synapse database: which synapses (any, a
split part, or given ids) and their un-augmented crops, as training reads them before
augmentation and as embedding reads them.

A crop of `input_shape` voxels holds the voxel the synapse lies in at `input_shape // 2`
(`connecto.data.volumes.crop_roi`), raw outside the volume reads as zero, and values are
float32 in [-1, 1] (`normalize_raw`), exactly what the training pipeline feeds the model
without augmentation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from funlib.persistence import Array
from pymongo.database import Database

from connecto import ConnectoError
from connecto.data.volumes import open_raw, read_crop
from connecto.tasks.synapse_contrastive.config import ContrastiveModelConfig


def select_synapses(
    db: Database, split_name: str | None = None, split_part: str | None = None,
    synapse_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(synapse ids (n,) int64, positions (n, 3) float64 z, y, x nm) sorted by id: those
    of `synapse_ids` if given, else of `split_part` of `split_name` (every part if no
    part), else every synapse of `db`. Labels are not read."""
    from connecto.db.schema import SYNAPSES, require_current_layout
    from connecto.db.synapses import split_names

    require_current_layout(db)
    query: dict = {}
    if synapse_ids is not None:
        query["synapse_id"] = {"$in": [int(i) for i in synapse_ids]}
    elif split_name is not None:
        key = f"splits.{split_name}"
        if db[SYNAPSES].find_one({key: {"$exists": True}}, {"_id": 1}) is None:
            known = ", ".join(split_names(db)) or "none"
            raise ConnectoError(f"database {db.name} has no split {split_name!r} (splits: {known})")
        query[key] = split_part if split_part is not None else {"$exists": True}
    projection = {"_id": 0, "synapse_id": 1, "z": 1, "y": 1, "x": 1}
    docs = sorted(db[SYNAPSES].find(query, projection), key=lambda d: d["synapse_id"])
    if synapse_ids is not None:
        missing = sorted(set(int(i) for i in synapse_ids) - {d["synapse_id"] for d in docs})
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConnectoError(f"database {db.name}: no synapse {missing[:5]}{more}")
    ids = np.array([d["synapse_id"] for d in docs], dtype=np.int64)
    positions = np.array([(d["z"], d["y"], d["x"]) for d in docs], dtype=np.float64)
    return ids, positions.reshape(-1, 3)


@dataclass
class SynapseCrops:
    """Un-augmented crops of `shape` voxels centred on each synapse of `synapse_ids`."""

    raw: Array
    shape: tuple[int, int, int]
    synapse_ids: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64, z, y, x nm

    def __len__(self) -> int:
        return len(self.synapse_ids)

    def crop(self, index: int) -> np.ndarray:
        """(z, y, x) float32 in [-1, 1] around synapse number `index`."""
        return read_crop(self.raw, self.positions[index], self.shape)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(synapse ids (b,), crops (b, z, y, x) float32) in id order; the last batch
        may be smaller."""
        for start in range(0, len(self), batch_size):
            indices = range(start, min(start + batch_size, len(self)))
            crops = np.stack([self.crop(i) for i in indices])
            yield self.synapse_ids[start : start + len(indices)], crops


def check_voxel_size(raw: Array, config: ContrastiveModelConfig, source: str) -> None:
    if tuple(raw.voxel_size) != tuple(config.voxel_size):
        raise ConnectoError(
            f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the "
            f"voxel size {list(raw.voxel_size)} of {config.raw_container}/{config.raw_dataset}"
        )


def crop_source(
    config: ContrastiveModelConfig, synapse_ids: Sequence[int] | None = None,
    source: str = "train_config",
) -> SynapseCrops:  # fmt: skip
    """The crops of `config` (its raw, `input_shape`, voxel size) around `synapse_ids`,
    or, if None, around the synapses the config selects (`split_name`/`split_part`, else
    all). `source` names the config in errors."""
    from connecto.db.client import get_database

    raw = open_raw(config.raw_container, config.raw_dataset)
    check_voxel_size(raw, config, source)
    ids, positions = select_synapses(
        get_database(config.db_name_data), config.split_name, config.split_part, synapse_ids
    )
    if not len(ids):
        where = f"split {config.split_name!r}" if config.split_name else "the database"
        part = f" part {config.split_part!r}" if config.split_part else ""
        raise ConnectoError(
            f"{source}: key 'db_name_data' = {config.db_name_data!r}: no synapses in {where}{part}"
        )
    return SynapseCrops(raw, tuple(config.input_shape), ids, positions)  # type: ignore[arg-type]
