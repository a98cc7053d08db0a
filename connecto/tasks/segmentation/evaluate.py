"""Segmentation scores against ground truth: variation of information (split and merge)
and the adapted Rand error, from one contingency table.

Conventions (as in CREMI and funlib.evaluate):
- VOI split = H(segmentation | ground truth): ground-truth objects cut into pieces;
  VOI merge = H(ground truth | segmentation): objects glued together; in bits.
- adapted Rand error = 1 - F-score of Rand precision and recall over voxel pairs.
- voxels labelled 0 in the ground truth are unlabelled and ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connecto import ConnectoError


@dataclass(frozen=True)
class SegmentationScores:
    voi_split: float
    voi_merge: float
    arand: float
    voxels: int

    @property
    def voi(self) -> float:
        return self.voi_split + self.voi_merge


def _overlaps(
    segmentation: np.ndarray, ground_truth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts n_ij of each (gt i, seg j) pair and the marginals a_i, b_j."""
    if segmentation.shape != ground_truth.shape:
        raise ConnectoError(
            f"segmentation shape {segmentation.shape} differs from the ground truth's "
            f"{ground_truth.shape}"
        )
    labelled = ground_truth != 0
    gt = ground_truth[labelled].ravel()
    seg = segmentation[labelled].ravel()
    if gt.size == 0:
        raise ConnectoError("the ground truth has no labelled voxels (all 0) in this region")
    pairs = np.stack([gt.astype(np.uint64), seg.astype(np.uint64)])
    _, n_ij = np.unique(pairs, axis=1, return_counts=True)
    _, a_i = np.unique(gt, return_counts=True)
    _, b_j = np.unique(seg, return_counts=True)
    return n_ij.astype(np.float64), a_i.astype(np.float64), b_j.astype(np.float64)


def _entropy_sum(counts: np.ndarray, total: float) -> float:
    p = counts / total
    return float(-(p * np.log2(p)).sum())


def score_segmentation(segmentation: np.ndarray, ground_truth: np.ndarray) -> SegmentationScores:
    """VOI split, VOI merge and adapted Rand error of `segmentation` against
    `ground_truth` (same shape; ground-truth 0 ignored)."""
    n_ij, a_i, b_j = _overlaps(segmentation, ground_truth)
    total = float(a_i.sum())
    h_joint = _entropy_sum(n_ij, total)
    h_gt = _entropy_sum(a_i, total)
    h_seg = _entropy_sum(b_j, total)
    voi_split = max(h_joint - h_gt, 0.0)  # H(seg | gt)
    voi_merge = max(h_joint - h_seg, 0.0)  # H(gt | seg)
    sum_ab = float((n_ij**2).sum())
    precision = sum_ab / float((b_j**2).sum())
    recall = sum_ab / float((a_i**2).sum())
    arand = 1.0 - 2.0 * precision * recall / (precision + recall)
    return SegmentationScores(voi_split, voi_merge, max(arand, 0.0), int(total))
