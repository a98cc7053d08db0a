"""`connecto segment` with features (`features_container` in the segment config): each
fragment's mean features stored on its graph node (a vector column of the segment
graph), and the edge scores of the extraction made of affinity and feature distance
(`connecto.postprocess.features`)."""

from __future__ import annotations

import networkx as nx
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence.types import Vec

from connecto import ConnectoError
from connecto.data.volumes import scale_raw
from connecto.db.graph import MongoDBGraphDataBase
from connecto.postprocess.agglomerate import UNMERGED, merge_scores
from connecto.postprocess.blockwise import AFFINITY_COUNT, GLOBAL_MEAN, MEAN_AFFINITY, MERGE_SCORE
from connecto.postprocess.features import (
    combine_feature_sums,
    combined_scores,
    feature_agglomeration_history,
    feature_distance,
    fragment_feature_sums,
)
from connecto.tasks.segmentation.config import SegmentConfig
from connecto.tasks.segmentation.steps import (
    NO_FRAGMENTS,
    dataset_path,
    open_graph,
    open_volume,
    work_roi,
)

FEATURES_ATTRIBUTE = "mean_features"  # the node column: mean features per fragment
FEATURES_TASK = "fragment-features"  # its bookkeeping entry in the graph's `blocks`


def block_rois(roi: Roi, block_shape: Coordinate) -> list[Roi]:
    """`roi` tiled by `block_shape` (nm), the last blocks cut at its end."""
    blocks = []
    for z in range(roi.begin[0], roi.end[0], block_shape[0]):
        for y in range(roi.begin[1], roi.end[1], block_shape[1]):
            for x in range(roi.begin[2], roi.end[2], block_shape[2]):
                blocks.append(Roi((z, y, x), block_shape).intersect(roi))
    return blocks


def mean_fragment_features(
    fragments: object, features: object, roi: Roi, block_shape: Coordinate
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fragment id in `roi`: the mean of `features` (a funlib Array, (C, z, y, x) or
    one channel (z, y, x); integers scaled to [0, 1] by their dtype) over its voxels,
    and its voxel count. Read a block at a time, so memory holds one block and the
    per-fragment sums (fragments: a funlib Array of ids on the same grid)."""
    channels = features.shape[0] if len(features.shape) == 4 else 1  # type: ignore[attr-defined]
    parts = []
    for block in block_rois(roi, block_shape):
        ids = fragments.to_ndarray(block)  # type: ignore[attr-defined]
        values = features.to_ndarray(block)  # type: ignore[attr-defined]
        values = scale_raw(values if values.ndim == 4 else values[None])
        parts.append(fragment_feature_sums(ids, values))
    ids, sums, counts = combine_feature_sums(parts, channels)
    return ids, sums / np.maximum(counts, 1)[:, None], counts


def store_fragment_features(config: SegmentConfig, overwrite: bool = False) -> str:
    """Each fragment's mean of the configured feature volume on its graph node
    (`mean_features`, a vector per node); skipped when this feature volume's means are
    stored already, unless `overwrite`."""
    assert config.features_container is not None
    graph = open_graph(config, "r+")
    where = f"{config.features_container}/{config.features_dataset}"
    done = graph.blocks.find_one({"task": FEATURES_TASK, "block_id": 0})
    if done is not None and done.get("dataset") == where and not overwrite:
        return f"mean features of {where} stored"
    frags_path = dataset_path(config, config.fragments_dataset)
    fragments = open_volume(str(frags_path.parent), frags_path.name)
    features = open_volume(config.features_container, config.features_dataset)
    if len(features.shape) not in (3, 4):
        raise ConnectoError(
            f"features_dataset {where}: shape {list(features.shape)}, expected (c, z, y, x)"
        )
    if tuple(features.voxel_size) != tuple(fragments.voxel_size):
        raise ConnectoError(
            f"features_dataset {where}: voxel size {list(features.voxel_size)} differs from "
            f"the fragments' {list(fragments.voxel_size)}; resample it to their grid"
        )
    roi = work_roi(config, fragments.roi, str(frags_path))
    if not features.roi.contains(roi):
        raise ConnectoError(f"features_dataset {where} ({features.roi}) does not cover {roi}")
    block_shape = Coordinate(config.block_size) * fragments.voxel_size
    ids, means, _ = mean_fragment_features(fragments, features, roi, block_shape)
    channels = means.shape[1]
    graph = MongoDBGraphDataBase(
        graph.db, mode="r+", prefix=graph.prefix,
        node_attrs={FEATURES_ATTRIBUTE: Vec(float, channels)},
    )  # fmt: skip
    write_node_features(graph, ids, means, FEATURES_ATTRIBUTE)
    graph.mark_block_done(FEATURES_TASK, 0, dataset=where, channels=channels)
    return f"mean features ({channels} channels) of {ids.size} fragments stored"


def write_node_features(
    graph: MongoDBGraphDataBase, ids: np.ndarray, values: np.ndarray, attribute: str
) -> None:
    """Set the vector `attribute` of the stored nodes `ids` (values: (n, C))."""
    nodes = nx.Graph()
    nodes.add_nodes_from(
        (int(i), {attribute: row}) for i, row in zip(ids.tolist(), values.tolist(), strict=True)
    )
    graph.write_attrs(nodes, node_attrs=[attribute])


def read_node_features(
    graph: MongoDBGraphDataBase, attribute: str = FEATURES_ATTRIBUTE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node ids (ascending), their feature vectors (n, C; NaN rows where a node has
    none) and sizes (0 where unknown)."""
    nodes = graph.read_node_columns(read_attrs=[attribute, "size"])
    order = np.argsort(nodes["id"], kind="stable")
    ids = nodes["id"][order]
    values = nodes[attribute][order] if attribute in nodes else np.full(ids.size, None)
    if values.dtype == object:
        lengths = {len(v) for v in values.tolist() if v is not None}
        if len(lengths) > 1:
            raise ConnectoError(f"node attribute {attribute!r} has vectors of lengths {lengths}")
        channels = lengths.pop() if lengths else 0
        matrix = np.full((ids.size, channels), np.nan)
        for row, value in enumerate(values.tolist()):
            if value is not None:
                matrix[row] = value
        values = matrix
    sizes = nodes["size"][order] if "size" in nodes else np.zeros(ids.size)
    if sizes.dtype == object:
        sizes = np.array([0 if s is None else s for s in sizes.tolist()], dtype=np.float64)
    return ids, values.astype(np.float64), sizes.astype(np.float64)


def feature_edge_scores(
    graph: MongoDBGraphDataBase, config: SegmentConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The graph's fragment ids and, per edge, the indices of its ends and its score by
    affinity and feature distance: with the `mean` merge function the score at which
    the hierarchical agglomeration (region features updated after every merge) joins
    its ends; otherwise the stored merge score combined with the fragments' distance."""
    ids, features, sizes = read_node_features(graph)
    if ids.size == 0:
        raise ConnectoError(NO_FRAGMENTS)
    if features.shape[1] == 0 or np.isnan(features).all():
        raise ConnectoError(
            "the segment graph's fragments have no features: rerun `connecto segment "
            "agglomerate` with features_container set"
        )
    global_mean = config.merge_function == GLOBAL_MEAN
    attrs = [MEAN_AFFINITY, AFFINITY_COUNT] if global_mean else [MERGE_SCORE]
    edges = graph.read_edge_columns(read_attrs=attrs)
    u, v = edges["u"], edges["v"]
    known = np.isin(u, ids) & np.isin(v, ids)
    iu, iv = np.searchsorted(ids, u[known]), np.searchsorted(ids, v[known])
    weights = (config.affinity_weight, config.feature_weight, config.feature_bias)
    if global_mean:
        if any(edges[a].dtype == object for a in attrs):
            raise ConnectoError(
                "the segment graph's edges have no affinity counts (made by an older "
                "connecto): rerun `connecto segment agglomerate --overwrite`"
            )
        counts = edges[AFFINITY_COUNT][known].astype(np.float64)
        sums = edges[MEAN_AFFINITY][known].astype(np.float64) * counts
        padded = np.vstack([np.full((1, features.shape[1]), np.nan), features])
        history = feature_agglomeration_history(
            ids.size, iu + 1, iv + 1, sums, counts, padded, np.concatenate([[0.0], sizes]),
            config.feature_distance, *weights, stop_at=max(config.thresholds),
        )  # fmt: skip
        score = merge_scores(ids.size, history, iu + 1, iv + 1)
    else:
        stored = edges[MERGE_SCORE][known]
        if stored.dtype == object:  # an edge without a score never merges
            stored = np.array([UNMERGED if s is None else s for s in stored.tolist()])
        distances = feature_distance(features[iu], features[iv], config.feature_distance)
        score = combined_scores(stored.astype(np.float64), distances, *weights)
    return ids, iu, iv, score.astype(np.float64)
