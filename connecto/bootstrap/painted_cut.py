"""A segmentation cut from the merge hierarchy where the painting allows: pseudo labels
with neither the splits of a low threshold nor the merges of a high one.

One threshold for the whole volume is a poor compromise for pseudo ground truth. On
NeuroProof's round 0, the painting chose 0.15, whose segments were pieces of neurites
(VOI split 3.1 over the kept voxels): each kept piece taught the next round a false
boundary at its rim. At 0.30 the segments were whole, but the giant merges the filter had
to drop took 36 of the 38 points of coverage with them.

The agglomeration is a hierarchy: a segment at one threshold is a union of segments at
every lower one. So each segment is taken at the highest candidate threshold at which
it merges no two painted objects of a section (`merge_claimants`) and is no larger
than `max_size`: from the highest threshold down, a segment is taken when it passes and
none of its fragments was taken higher. A fragment that passes nowhere stays alone, for
the filter to judge. Merges the painting cannot see (between unpainted objects) remain,
so the usual filter (sizes, outliers, sections spanned) still runs on the cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError
from connecto.bootstrap.pseudo_labels import (
    merge_claimants,
    painted_overlaps,
    segment_statistics,
    slabs,
)
from connecto.data.volumes import prepare_volume
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks.segmentation.config import SegmentConfig
from connecto.tasks.segmentation.steps import dataset_path, open_graph
from connecto.tasks.segmentation.workflow import EdgeScores, edge_scores, lookup_table


@dataclass(frozen=True)
class PaintedCut:
    lut: np.ndarray  # fragment -> segment (2 x N), over the fragments of the region
    taken: dict[float, int]  # threshold -> segments taken at it
    alone: int  # fragments that passed at no threshold

    def summary(self) -> dict[str, int]:
        figures = {f"{t:g}": n for t, n in sorted(self.taken.items()) if n}
        return {**figures, "alone": self.alone}


def cut_hierarchy(
    ids: np.ndarray, sizes: np.ndarray, overlaps: tuple[np.ndarray, ...], edges: EdgeScores,
    thresholds: Sequence[float], method: str, overlap: float, max_size: int | None = None,
) -> PaintedCut:  # fmt: skip
    """The cut of fragments `ids` (voxel counts `sizes`; `overlaps`: their
    `painted_overlaps` rows) through the segmentations of `edges` at `thresholds`."""
    sections, objects, fragments, voxels = overlaps
    label = ids.copy()
    free = np.ones(len(ids), bool)
    taken = {}
    for threshold in sorted(thresholds, reverse=True):
        lut = lookup_table(edges, threshold, method)
        segment = apply_lut(ids, lut)
        merges = merge_claimants(sections, objects, apply_lut(fragments, lut), voxels, overlap)
        names, inverse = np.unique(segment, return_inverse=True)
        whole = np.bincount(inverse, weights=free) == np.bincount(inverse)
        passes = whole & ~np.isin(names, merges)
        if max_size is not None:
            passes &= np.bincount(inverse, weights=sizes) <= max_size
        take = passes[inverse]
        label[take] = segment[take]
        free &= ~take
        taken[float(threshold)] = int(passes.sum())
    return PaintedCut(np.stack([ids, label]), taken, int(free.sum()))


def write_painted_cut(
    config: SegmentConfig, painting: Array, thresholds: Sequence[float],
    output: tuple[str | Path, str], overlap: float, max_size: int | None = None,
    roi: Roi | None = None,
) -> PaintedCut:  # fmt: skip
    """The painted cut of `config`'s fragments and graph (see the module docstring),
    written to `output` (container, dataset) over `roi` (None: the fragments')."""
    path = dataset_path(config, config.fragments_dataset)
    try:
        fragments = open_ds(path, mode="r")
    except Exception as error:  # funlib raises several kinds for a missing dataset
        raise ConnectoError(f"{path}: cannot open the fragments ({error})") from None
    roi = fragments.roi if roi is None else roi.intersect(fragments.roi)
    ids, sizes, _ = segment_statistics(fragments, roi)
    overlaps = painted_overlaps(fragments, painting, roi)
    edges = edge_scores(config, open_graph(config))
    cut = cut_hierarchy(ids, sizes, overlaps, edges, thresholds, config.agglomeration,
                        overlap, max_size)  # fmt: skip
    voxel_size = Coordinate(fragments.voxel_size)
    target = prepare_volume(
        Path(output[0]) / output[1], shape=roi.shape / voxel_size, offset=roi.offset,
        voxel_size=voxel_size, axis_names=["z", "y", "x"], units=["nm"] * 3,
        dtype=fragments.dtype, mode="w",
    )  # fmt: skip
    for slab in slabs(fragments, roi):
        target[slab] = apply_lut(fragments.to_ndarray(slab), cut.lut)
    target._source_data.attrs["painted_cut"] = {
        "fragments": str(path), "thresholds": sorted(float(t) for t in thresholds),
        "overlap": overlap, "max_size": max_size, "taken": cut.summary(),
    }  # fmt: skip
    return cut
