"""VOI and adapted Rand error on small cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connecto import ConnectoError
from connecto.evaluate.segmentation import score_segmentation


def test_identical_up_to_relabelling_scores_zero():
    gt = np.array([[1, 1, 2], [2, 3, 3]])
    seg = np.array([[7, 7, 4], [4, 9, 9]])
    scores = score_segmentation(seg, gt)
    assert (scores.voi_split, scores.voi_merge, scores.arand) == (0.0, 0.0, 0.0)


def test_one_object_split_in_halves():
    # H(seg | gt) = 1 bit; precision 1, recall (2*2^2)/4^2 = 1/2, F = 2/3
    scores = score_segmentation(np.array([1, 1, 2, 2]), np.array([1, 1, 1, 1]))
    assert scores.voi_split == pytest.approx(1.0)
    assert scores.voi_merge == pytest.approx(0.0)
    assert scores.arand == pytest.approx(1 / 3)


def test_two_objects_merged():
    scores = score_segmentation(np.array([1, 1, 1, 1]), np.array([1, 1, 2, 2]))
    assert (scores.voi_split, scores.voi_merge) == pytest.approx((0.0, 1.0))
    assert scores.arand == pytest.approx(1 / 3)


def test_mixed_split_and_merge():
    # gt 1 -> seg (1, 1, 2), gt 2 -> seg (2, 3, 3)
    # split: each gt object has seg distribution (2/3, 1/3): H = log2(3) - 2/3
    # merge: seg 2 holds one voxel of each gt object (1 bit), weight 1/3
    # Rand: sum n_ij^2 = 10, sum a_i^2 = 18, sum b_j^2 = 12: P = 5/6, R = 5/9, F = 2/3
    scores = score_segmentation(np.array([1, 1, 2, 2, 3, 3]), np.array([1, 1, 1, 2, 2, 2]))
    assert scores.voi_split == pytest.approx(math.log2(3) - 2 / 3)
    assert scores.voi_merge == pytest.approx(1 / 3)
    assert scores.voi == pytest.approx(math.log2(3) - 1 / 3)
    assert scores.arand == pytest.approx(1 / 3)
    assert scores.voxels == 6


def test_unlabelled_ground_truth_is_ignored():
    scores = score_segmentation(np.array([5, 6, 7, 7]), np.array([0, 0, 1, 1]))
    assert (scores.voi, scores.arand, scores.voxels) == (0.0, 0.0, 2)


def test_bad_input_names_the_problem():
    with pytest.raises(ConnectoError, match="shape"):
        score_segmentation(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ConnectoError, match="no labelled voxels"):
        score_segmentation(np.ones(4), np.zeros(4))
