"""The agglomeration threshold of a chain's segmentation, chosen against the painting.

Without dense ground truth the painted voxels are the only truth a user has. Each
candidate threshold's segmentation (the fragments through that threshold's lookup table,
in memory: nothing is written) is scored over the painted voxels of the painted sections,
and the lowest VOI wins (then ARAND): a painted object cut in two counts as a split, two
painted objects in one 3D segment as a merge, in whichever painted section they meet.
The painted sections are those the 2D model learned from, so the scores flatter; the
choice between thresholds is what matters. A fixed threshold was no good default: on
NeuroProof with 5 % of the sections painted, 0.5 merged the round-0 segmentation into 220
segments, of which the pseudo ground truth kept 10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks.segmentation.config import SegmentConfig
from connecto.tasks.segmentation.evaluate import SegmentationScores, score_segmentation
from connecto.tasks.segmentation.steps import dataset_path, open_graph
from connecto.tasks.segmentation.workflow import edge_scores, lookup_table

# sections scored at most (evenly spread): disks paint every section of a large volume
MOST_SECTIONS = 32
CANDIDATES = [round(0.05 * i, 2) for i in range(1, 20)]


@dataclass(frozen=True)
class PaintedChoice:
    threshold: float
    scores: dict[float, SegmentationScores]  # every candidate's, over the painted voxels
    sections: list[int]  # the painting's sections scored (its own z indices)

    @property
    def chosen(self) -> SegmentationScores:
        return self.scores[self.threshold]


def spread(sections: Sequence[int], most: int = MOST_SECTIONS) -> list[int]:
    """At most `most` of `sections`, evenly spread, first and last included."""
    if len(sections) <= most:
        return list(sections)
    picks = np.unique(np.linspace(0, len(sections) - 1, most).round().astype(int))
    return [sections[i] for i in picks]


def _section_rois(painting: Array, sections: Sequence[int], within: Roi) -> list[Roi]:
    voxel = Coordinate(painting.voxel_size)
    rois = []
    for z in sections:
        offset = painting.roi.offset + Coordinate((z * voxel[0], 0, 0))
        section = Roi(offset, (voxel[0], *painting.roi.shape[1:])).intersect(within)
        if not section.empty:
            rois.append(section)
    return rois


def choose_threshold(
    config: SegmentConfig, painting: Array, sections: Sequence[int],
    candidates: Sequence[float] = CANDIDATES,
) -> PaintedChoice:  # fmt: skip
    """The candidate whose segmentation of `config`'s fragments and graph scores the
    lowest VOI (then ARAND) over `painting`'s labelled voxels in `sections` (z indices of
    the painting; at most MOST_SECTIONS of them, spread)."""
    fragments = open_ds(dataset_path(config, config.fragments_dataset), mode="r")
    if Coordinate(fragments.voxel_size) != Coordinate(painting.voxel_size):
        raise ConnectoError(
            f"the painting's voxel size {tuple(painting.voxel_size)} differs from the "
            f"fragments' {tuple(fragments.voxel_size)}: paint on the raw data's grid"
        )
    within = fragments.roi if config.total_roi is None else fragments.roi.intersect(
        config.total_roi
    )  # fmt: skip
    scored = spread(sorted(sections))
    rois = _section_rois(painting, scored, within)
    if not rois:
        raise ConnectoError(
            f"painted sections {list(sections)} lie outside the segmented region {within}: "
            "no painted voxel to choose the threshold on; set a number for `threshold`"
        )
    truth = np.concatenate([painting.to_ndarray(roi).ravel() for roi in rois])
    frags = np.concatenate([fragments.to_ndarray(roi).ravel() for roi in rois])
    if not truth.any():
        raise ConnectoError("the painted sections hold no labelled voxel in the segmented region")
    scores_of_edges = edge_scores(config, open_graph(config))
    scores = {
        float(t): score_segmentation(
            apply_lut(frags, lookup_table(scores_of_edges, t, config.agglomeration)), truth
        )
        for t in candidates
    }
    best = min(scores, key=lambda t: (scores[t].voi, scores[t].arand))
    return PaintedChoice(best, scores, scored)
