"""Segmentation from pixel embeddings with `connecto segment`.

The embedding task writes float32 unit vectors (D, z, y, x); `connecto segment` reads
any such volume as fragment features (`connecto.tasks.segmentation.feature_agglomeration`):
each fragment's mean embedding is stored on its graph node and edges are scored by
`affinity_weight * (1 - affinity) + feature_weight * cosine distance + feature_bias`.
The mean of unit vectors points along the object's direction (only its length shrinks
where the embedding varies), so the cosine distance of two fragments' means is the
distance of their objects' embeddings. A segment config for it:

    features_container = "<predict output>.zarr"
    features_dataset = "embedding"
    feature_distance = "cosine"
    merge_function = "mean"          # region embeddings updated after every merge
    affinity_weight = 0.5
    feature_weight = 0.5

Without an affinity network, `embedding_affinities` makes nearest-neighbour affinities
from the embeddings themselves (the cosine similarity of neighbouring voxels, clipped to
[0, 1]): fragments then follow the embedding's edges. `segment_from_embeddings` runs
fragments, agglomeration, extraction and (with labels) evaluation for either.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate

from connecto import ConnectoError
from connecto.data.volumes import prepare_volume
from connecto.tasks.segmentation.config import SegmentConfig, load_segment_config
from connecto.tasks.segmentation.feature_agglomeration import block_rois
from connecto.tasks.segmentation.steps import (
    StepResult,
    dataset_exists,
    dataset_path,
    ensure_container,
    open_volume,
    work_roi,
)
from connecto.tasks.segmentation.workflow import SegmentReport, run_steps

SEGMENT_STEPS = ("fragments", "agglomerate", "extract", "evaluate")
EPSILON = 1e-8


def embedding_affinities(
    embedding: np.ndarray, neighborhood: Sequence[Sequence[int]], reach: Sequence[int]
) -> np.ndarray:  # fmt: skip
    """Affinities (len(neighborhood), z, y, x) float32 in [0, 1] of the inner region of
    `embedding` (D, z, y, x) that lies `reach` voxels inside its border on every side:
    channel i at voxel v is the cosine similarity of the embeddings at v and at
    v + neighborhood[i] (the offset convention of connecto's affinities), clipped at 0
    (a zero vector, outside the volume, is similar to nothing)."""
    data = embedding.astype(np.float32)
    unit = data / np.maximum(np.linalg.norm(data, axis=0), EPSILON)
    shape = [s - 2 * r for s, r in zip(data.shape[1:], reach, strict=True)]
    if any(s <= 0 for s in shape):
        raise ValueError(f"embedding {data.shape} is smaller than twice the reach {reach}")
    inner = tuple(slice(r, r + s) for r, s in zip(reach, shape, strict=True))
    out = np.empty((len(neighborhood), *shape), dtype=np.float32)
    for channel, offset in enumerate(neighborhood):
        moved = tuple(slice(r + o, r + o + s) for r, o, s in zip(reach, offset, shape, strict=True))
        cosine = (unit[(slice(None), *inner)] * unit[(slice(None), *moved)]).sum(axis=0)
        out[channel] = np.clip(cosine, 0.0, 1.0)
    return out


def write_embedding_affinities(config: SegmentConfig, overwrite: bool = False) -> StepResult:
    """The segment config's affinities (`affs_dataset` in `output_container`, uint8) made
    from its feature volume (the embeddings) over its ROI, a block at a time; kept if
    they exist unless `overwrite`."""
    if config.features_container is None:
        raise ConnectoError("features_container is not set in the segment config")
    path = dataset_path(config, config.affs_dataset)
    if dataset_exists(path) and not overwrite:
        return StepResult("embedding-affinities", True, f"{path} exists")
    where = f"{config.features_container}/{config.features_dataset}"
    features = open_volume(config.features_container, config.features_dataset)
    if len(features.shape) != 4:
        raise ConnectoError(
            f"features_dataset {where}: shape {list(features.shape)}, expected (D, z, y, x)"
        )
    voxel_size = Coordinate(features.voxel_size)
    roi = work_roi(config, features.roi, where)
    reach = Coordinate(max(abs(o[d]) for o in config.neighborhood) for d in range(3))
    affs = prepare_volume(
        path, shape=(len(config.neighborhood), *(roi.shape / voxel_size)), offset=roi.offset,
        voxel_size=voxel_size, axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        chunk_shape=(len(config.neighborhood), *config.block_size), dtype=np.uint8, mode="w",
    )  # fmt: skip
    affs._source_data.attrs["neighborhood"] = [list(o) for o in config.neighborhood]
    affs._source_data.attrs["source"] = f"cosine similarity of {where}"
    context = reach * voxel_size
    block_shape = Coordinate(config.block_size) * voxel_size
    for block in block_rois(roi, block_shape):
        data = features.to_ndarray(block.grow(context, context), fill_value=0)
        values = embedding_affinities(data, config.neighborhood, reach)
        affs[block] = np.round(values * 255).astype(np.uint8)
    return StepResult(
        "embedding-affinities", False,
        f"{path}: {len(config.neighborhood)} channels from {where} over {roi}",
    )  # fmt: skip


def make_embedding_affinities(config_path: Path, overwrite: bool = False) -> SegmentReport:
    """Affinities from the segment config's embeddings, as a report of `connecto segment`
    (for a `connecto segment embedding-affinities` command, as `gt-affinities` is)."""
    config, _ = load_segment_config(Path(config_path))
    report = SegmentReport([write_embedding_affinities(config, overwrite)])
    ensure_container(config)
    return report


def segment_from_embeddings(
    config_path: Path, affinities_from_embeddings: bool = False, overwrite: bool = False
) -> SegmentReport:  # fmt: skip
    """`connecto segment` with the config's `features_container`/`features_dataset` (the
    embeddings) as fragment features: fragments, agglomeration (mean embedding per
    fragment on the graph nodes, edges by affinity and cosine distance), extraction and,
    when the config names labels, evaluation. `affinities_from_embeddings`: the
    affinities are first made from the embeddings (no affinity network needed)."""
    config, _ = load_segment_config(Path(config_path))
    if config.features_container is None:
        raise ConnectoError(
            f"{config_path}: key 'features_container' is not set: expected the container "
            'of the predicted embeddings (features_dataset = "embedding")'
        )
    first = []
    if affinities_from_embeddings:
        first.append(write_embedding_affinities(config, overwrite))
    report = run_steps(Path(config_path), list(SEGMENT_STEPS), overwrite)
    report.steps[:0] = first
    return report
