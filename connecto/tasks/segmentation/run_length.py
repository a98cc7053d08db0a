"""Expected run length (ERL) of a segmentation along ground-truth skeletons.

ERL is the main metric of the LSD paper (Sheridan et al., Nature Methods 2023), defined in
Januszewski et al. (Nature Methods 2018) and implemented there with funlib.evaluate's
`expected_run_length`, whose conventions this module follows. It reads as "how far can one
walk along a neuron, from a random point, before hitting an error", so unlike VOI and ARAND
it is in nm and weighs errors by the skeleton length they cut off.

Each skeleton node takes the segment id of the voxel it lies in. An edge is
- omitted when either end lies in segment 0 (unsegmented),
- a split when its ends lie in two different non-zero segments,
- merged when both ends lie in one merging segment: a non-zero segment that holds at least
  `merge_min_nodes` nodes of each of two or more skeletons,
- correct otherwise.
A run is the total length of the correct edges of one skeleton within one segment (as in
funlib: a segment that a skeleton leaves and re-enters still makes one run, and the length of
every edge that is not correct is lost). Then

    ERL = sum over runs of run_length**2 / sum over skeletons of skeleton_length

and the ground truth itself scores max_erl = sum L_skeleton**2 / sum L_skeleton.

Positions are in nm in array axis order (z, y, x); a voxel with index i lies at
offset + i * voxel_size (its centre, kimimaro's convention).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from connecto import ConnectoError

# kimimaro's TEASAR parameters other than scale and const, at kimimaro's defaults. Soma
# handling only starts on objects more than 750 nm from their boundary, i.e. cell bodies.
_TEASAR_FIXED = {
    "pdrf_scale": 100000,
    "pdrf_exponent": 4,
    "soma_acceptance_threshold": 3500,
    "soma_detection_threshold": 750,
    "soma_invalidation_const": 300,
    "soma_invalidation_scale": 2,
}


@dataclass(frozen=True, eq=False)
class Skeleton:
    """One neuron: `vertices` (N, 3) positions in nm (z, y, x), `edges` (M, 2) vertex
    indices."""

    vertices: np.ndarray
    edges: np.ndarray

    @property
    def edge_lengths(self) -> np.ndarray:
        return np.linalg.norm(
            self.vertices[self.edges[:, 0]] - self.vertices[self.edges[:, 1]], axis=1
        )

    @property
    def length(self) -> float:
        return float(self.edge_lengths.sum())


@dataclass(frozen=True)
class RunLengthScores:
    """ERL in nm and the error counts behind it.

    n_mergers: merging segments (one segment gluing three neurons counts once).
    n_splits: skeleton edges whose ends lie in two different non-zero segments.
    n_omitted: skeleton edges with an end in segment 0; they cut runs like splits but are
    not counted as splits (funlib's convention).
    """

    erl: float
    max_erl: float
    n_mergers: int
    n_splits: int
    n_omitted: int
    n_skeletons: int
    total_length: float


def _triple(value: float | Sequence[float], name: str, positive: bool = False) -> np.ndarray:
    out = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()
    if positive and not (out > 0).all():
        raise ConnectoError(f"{name} must be positive, got {tuple(out.tolist())}")
    return out


def skeletonize_labels(
    labels: np.ndarray,
    voxel_size: float | Sequence[float],
    offset: float | Sequence[float] = (0, 0, 0),
    *,
    scale: float = 1.5,
    const: float = 300.0,
    dust_threshold: int = 1000,
    skeleton_voxel_nm: float = 20.0,
    parallel: int = 1,
) -> dict[int, Skeleton]:
    """Skeletonize every non-zero label of a 3D ground-truth volume with kimimaro (TEASAR).

    scale, const: TEASAR's rolling-ball invalidation radius, scale * distance-to-boundary +
    const (nm). A branch shorter than about that radius is not traced, so const ~300 nm keeps
    the twigs of neurites a few hundred nm wide from adding spurious length at 10 nm voxels.
    dust_threshold: connected components under this many (full-resolution) voxels are skipped.
    skeleton_voxel_nm: the labels are subsampled by an integer stride per axis so that the
    voxels kimimaro traces are at least this size (0 for full resolution). Tracing time grows
    fast with voxel count: on NeuroProof (250^3 at 10 nm) stride 2 is ~15x faster and total
    skeleton length within ~5%. Subsampling keeps every stride-th voxel, so each vertex still
    lies on a full-resolution voxel with its label.
    parallel: kimimaro worker processes (it spawns them; callers' scripts need a __main__ guard).
    """
    import kimimaro  # heavy (multiprocessing stack); only needed here

    if labels.ndim != 3:
        raise ConnectoError(f"labels must be 3D, got shape {labels.shape}")
    size = _triple(voxel_size, "voxel_size", positive=True)
    stride = np.maximum(1, np.floor(skeleton_voxel_nm / size)).astype(int)
    coarse = np.ascontiguousarray(labels[:: stride[0], :: stride[1], :: stride[2]])
    raw = kimimaro.skeletonize(
        coarse,
        teasar_params={"scale": scale, "const": const, **_TEASAR_FIXED},
        anisotropy=tuple(float(s) for s in size * stride),
        dust_threshold=int(np.ceil(dust_threshold / stride.prod())),
        progress=False,
        parallel=parallel,
    )
    shift = _triple(offset, "offset")
    return {
        int(label): Skeleton(
            vertices=np.asarray(skel.vertices, dtype=np.float64) + shift,
            edges=np.asarray(skel.edges, dtype=np.int64).reshape(-1, 2),
        )
        for label, skel in raw.items()
    }


def _segments_at(
    positions: np.ndarray, segmentation: np.ndarray, voxel_size: np.ndarray, offset: np.ndarray
) -> np.ndarray:
    """Segment id of the voxel each position lies in."""
    index = np.rint((positions - offset) / voxel_size).astype(np.int64)
    inside = ((index >= 0) & (index < np.asarray(segmentation.shape))).all(axis=1)
    if not inside.all():
        raise ConnectoError(
            f"{int((~inside).sum())} of {len(index)} skeleton nodes lie outside the "
            f"segmentation (shape {segmentation.shape}, voxel size {tuple(voxel_size)}, "
            f"offset {tuple(offset)}); crop the skeletons to the evaluated region"
        )
    # uint64 keeps ids exact when stacked with skeleton indices below
    return segmentation[tuple(index.T)].astype(np.uint64)


def expected_run_length(
    skeletons: Mapping[int, Skeleton],
    segmentation: np.ndarray,
    voxel_size: float | Sequence[float],
    offset: float | Sequence[float] = (0, 0, 0),
    *,
    merge_min_nodes: int = 1,
) -> RunLengthScores:
    """ERL of `segmentation` (3D, voxel [0, 0, 0] at `offset` nm) along `skeletons`, as
    defined in the module docstring. merge_min_nodes: a segment merges two skeletons only
    when it holds at least this many nodes of each (1 as in funlib; raise it to forgive
    segments that graze a neighbour by a voxel)."""
    if segmentation.ndim != 3:
        raise ConnectoError(f"segmentation must be 3D, got shape {segmentation.shape}")
    ids = list(skeletons)
    n_vertices = np.array([len(skeletons[i].vertices) for i in ids], dtype=np.int64)
    n_edges = np.array([len(skeletons[i].edges) for i in ids], dtype=np.int64)
    if n_edges.sum() == 0:
        raise ConnectoError("the skeletons have no edges")
    first = np.concatenate([[0], np.cumsum(n_vertices)[:-1]])
    vertices = np.concatenate([np.asarray(skeletons[i].vertices, np.float64) for i in ids])
    edges = np.concatenate(
        [np.asarray(skeletons[i].edges, np.int64) + f for i, f in zip(ids, first, strict=True)]
    )
    node_skeleton = np.repeat(np.arange(len(ids), dtype=np.uint64), n_vertices)
    edge_skeleton = np.repeat(np.arange(len(ids), dtype=np.uint64), n_edges)

    lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
    skeleton_lengths = np.bincount(edge_skeleton.astype(np.int64), lengths, minlength=len(ids))
    total = float(skeleton_lengths.sum())
    if total <= 0:
        raise ConnectoError("the skeletons have zero length")

    node_segment = _segments_at(
        vertices,
        segmentation,
        _triple(voxel_size, "voxel_size", positive=True),
        _triple(offset, "offset"),
    )
    labelled = node_segment != 0
    pairs, counts = np.unique(
        np.stack([node_segment[labelled], node_skeleton[labelled]], axis=1),
        axis=0,
        return_counts=True,
    )
    segments, n_touched = np.unique(pairs[counts >= merge_min_nodes, 0], return_counts=True)
    merging = segments[n_touched > 1]

    seg_u, seg_v = node_segment[edges[:, 0]], node_segment[edges[:, 1]]
    omitted = (seg_u == 0) | (seg_v == 0)
    split = ~omitted & (seg_u != seg_v)
    correct = ~omitted & ~split & ~np.isin(seg_u, merging)

    _, run = np.unique(
        np.stack([edge_skeleton[correct], seg_u[correct]], axis=1), axis=0, return_inverse=True
    )
    runs = np.bincount(run.reshape(-1), weights=lengths[correct])
    return RunLengthScores(
        erl=float((runs**2).sum() / total),
        max_erl=float((skeleton_lengths**2).sum() / total),
        n_mergers=len(merging),
        n_splits=int(split.sum()),
        n_omitted=int(omitted.sum()),
        n_skeletons=len(ids),
        total_length=total,
    )
