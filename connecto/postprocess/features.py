"""Feature-aware agglomeration: fragments carry the mean of a multi-channel volume (the
enhanced barcodes of barcoded light microscopy, or any per-voxel embedding) and edges
are scored by affinity and by how different their two sides' features are.

An edge's score (low scores merge first, as everywhere in connecto) is

    affinity_weight * affinity_score + feature_weight * distance + feature_bias

where `affinity_score` is 1 - mean boundary affinity (or the stored waterz merge score)
and `distance` the cosine distance (1 - cosine similarity) or euclidean distance of the
two sides' mean features. This is volara's `DistanceAgglom` similarity fed into an
edge weight `w * attr + b` per attribute as its `GraphMWS` does; here the weights make
one score, so connecto's thresholds and extraction stay as they are.

With the global `mean` merge function the agglomeration is hierarchical: after every
merge the region's features become the size-weighted mean of its fragments', so a
region's barcode sharpens as it grows (`feature_agglomeration_history`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Literal

import numpy as np

from connecto.postprocess.agglomerate import UNMERGED, boundary_statistics

FeatureDistance = Literal["cosine", "euclidean"]
FEATURE_DISTANCES: tuple[str, ...] = ("cosine", "euclidean")
EPSILON = 1e-8  # cosine of a zero vector: distance 1 (nothing in common)


def fragment_feature_sums(
    fragments: np.ndarray, features: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fragment id (ascending, 0 excluded) of `fragments` (z, y, x): the sum of
    `features` (C, z, y, x) over its voxels (n, C) and its voxel count (n)."""
    if features.shape[1:] != fragments.shape:
        raise ValueError(f"features {features.shape} do not cover the fragments {fragments.shape}")
    ids, inverse = np.unique(fragments, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=ids.size)
    flat = features.reshape(features.shape[0], -1)
    sums = np.stack(
        [np.bincount(inverse, weights=channel, minlength=ids.size) for channel in flat], axis=1
    ) if flat.shape[0] else np.zeros((ids.size, 0))  # fmt: skip
    keep = ids != 0
    return ids[keep], sums[keep], counts[keep]


def combine_feature_sums(
    parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], channels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sums and counts of several blocks added up per fragment id (a fragment cut by a
    block border counts once, whole)."""
    parts = list(parts)
    if not parts:
        return np.zeros(0, np.uint64), np.zeros((0, channels)), np.zeros(0, np.int64)
    ids = np.concatenate([p[0] for p in parts]).astype(np.uint64)
    sums = np.concatenate([p[1] for p in parts])
    counts = np.concatenate([p[2] for p in parts])
    unique, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    total = np.zeros((unique.size, channels))
    np.add.at(total, inverse, sums)
    return (
        unique,
        total,
        np.bincount(inverse, weights=counts, minlength=unique.size).astype(np.int64),
    )


def feature_distance(a: np.ndarray, b: np.ndarray, metric: FeatureDistance) -> np.ndarray:
    """Row-wise distance of feature vectors (n, C): `cosine` 1 - cosine similarity (0
    for parallel, 1 for orthogonal; non-negative barcodes stay in [0, 1]), `euclidean`
    the L2 distance."""
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return 1.0 - (a * b).sum(axis=1) / np.maximum(norms, EPSILON)
    if metric == "euclidean":
        return np.linalg.norm(a - b, axis=1)
    raise ValueError(f"feature distance {metric!r} is not one of {', '.join(FEATURE_DISTANCES)}")


def combined_scores(
    affinity_scores: np.ndarray, distances: np.ndarray, affinity_weight: float,
    feature_weight: float, bias: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """`affinity_weight * affinity_scores + feature_weight * distances + bias`; a NaN
    distance (a side without features) counts as 0: the affinity alone decides."""
    distances = np.nan_to_num(np.asarray(distances, dtype=np.float64), nan=0.0)
    return affinity_weight * np.asarray(affinity_scores, np.float64) + (
        feature_weight * distances + bias
    )


def feature_agglomeration_history(
    n_fragments: int, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray,
    features: np.ndarray, sizes: np.ndarray, metric: FeatureDistance,
    affinity_weight: float, feature_weight: float, bias: float = 0.0,
    stop_at: float = UNMERGED,
) -> list[dict]:  # fmt: skip
    """Hierarchical agglomeration of fragments 1..n (the mean-affinity agglomeration of
    `connecto.postprocess.agglomerate.mean_affinity_history`, with features): edge i
    joins u[i] and v[i] along `counts[i]` voxel pairs whose affinities sum to `sums[i]`;
    `features` (n + 1, C; row 0 unused, NaN rows: unknown) and `sizes` (n + 1) are the
    fragments' mean features and voxel counts. Regions merge in order of the combined
    score of their whole boundary and their size-weighted mean features, recomputed
    after every merge, until every remaining score is at least `stop_at` (at most
    `UNMERGED`; the highest threshold is enough: later merges change no segmentation
    below it, and the last merges into huge regions are the costly ones). Returns the
    merge history in waterz's form ({a, b, c, score}).

    A merge changes the features of the surviving region, so every edge of it gets a new
    score: they are computed at once (vectorised), and queued only where they dropped;
    an entry whose edge scores higher now is requeued when it comes up (lazily), so the
    order is exact."""
    features = np.array(features, dtype=np.float64)
    known = ~np.isnan(features).any(axis=1)
    features[~known] = 0.0
    weight = np.asarray(sizes, dtype=np.float64).copy()
    neighbours = boundary_statistics(n_fragments, u, v, sums, counts)

    def scores(a: int, others: list[int]) -> np.ndarray:
        """The current scores of the edges from region a to `others`."""
        stats = np.array([neighbours[a][x] for x in others], dtype=np.float64).reshape(-1, 2)
        value = affinity_weight * (1.0 - stats[:, 0] / stats[:, 1]) + bias
        if known[a]:
            index = np.array(others, dtype=np.int64)
            distance = feature_distance(features[index], features[a][None], metric)
            value += feature_weight * np.where(known[index], distance, 0.0)
        return value

    current: dict[tuple[int, int], float] = {}  # every live edge's score now
    queue = []
    for a in range(n_fragments + 1):
        others = [b for b in neighbours[a] if b > a]
        if others:
            for b, value in zip(others, scores(a, others).tolist(), strict=True):
                current[(a, b)] = value
                queue.append((value, a, b))
    heapq.heapify(queue)
    history = []
    while queue:
        value, a, b = heapq.heappop(queue)
        if value >= min(stop_at, UNMERGED):
            break
        now = current.get((a, b))
        if now is None or b not in neighbours[a]:
            continue  # a side merged away since this entry was queued
        if now > value + 1e-12:
            heapq.heappush(queue, (now, a, b))  # scores higher since: wait its turn
            continue
        del current[(a, b)]
        if len(neighbours[a]) < len(neighbours[b]):
            a, b = b, a  # b, the region with fewer neighbours, joins a
        del neighbours[a][b]
        for x, other in neighbours[b].items():
            if x == a:
                continue
            del neighbours[x][b]
            current.pop((min(b, x), max(b, x)), None)
            joined = neighbours[a].get(x)
            if joined is None:
                neighbours[a][x] = neighbours[x][a] = other
            else:
                joined[0] += other[0]
                joined[1] += other[1]
        neighbours[b] = {}
        if known[a] and known[b]:
            total = weight[a] + weight[b]
            if total > 0:
                features[a] = (features[a] * weight[a] + features[b] * weight[b]) / total
        elif known[b]:
            features[a], known[a] = features[b], True
        weight[a] += weight[b]
        others = list(neighbours[a])
        if others:  # a's features (and some boundaries) changed: rescore its edges
            for x, new in zip(others, scores(a, others).tolist(), strict=True):
                key = (min(a, x), max(a, x))
                old = current.get(key)
                current[key] = new
                if old is None or new < old:
                    heapq.heappush(queue, (new, *key))
        history.append({"a": a, "b": b, "c": a, "score": value})
    return history
