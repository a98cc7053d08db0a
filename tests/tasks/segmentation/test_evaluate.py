"""VOI and adapted Rand error on small cases computed by hand and against scikit-image;
expected run length on hand-built skeletons and on kimimaro skeletons of synthetic tubes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from connecto import ConnectoError
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.run_length import Skeleton, expected_run_length, skeletonize_labels


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voi_and_arand_match_scikit_image(seed):
    from skimage import metrics

    rng = np.random.default_rng(seed)
    n_gt, n_seg = rng.integers(5, 31, size=2)
    gt = rng.integers(0, n_gt, size=(20, 20, 20))  # label 0 (unlabelled) included
    # a segmentation related to gt (so the scores are not all at their maximum), with some
    # noise, splits (gt * 3 + ...) and merges (% n_seg); segment 0 is an ordinary segment
    seg = np.where(rng.random(gt.shape) < 0.7, (gt * 3 + rng.integers(0, 2)) % n_seg, 0)
    seg = np.where(rng.random(gt.shape) < 0.1, rng.integers(0, n_seg, size=gt.shape), seg)
    ours = score_segmentation(seg, gt)
    mask = gt != 0
    gt_m, seg_m = gt[mask], seg[mask]
    n = int(mask.sum())
    assert ours.voxels == n

    # variation_of_information(image0=gt, image1=seg) = [H(seg | gt), H(gt | seg)] in bits;
    # its ignore_labels drops voxels by their image0 (gt) label only, as connecto does
    split, merge = metrics.variation_of_information(gt_m, seg_m)
    assert (ours.voi_split, ours.voi_merge) == pytest.approx((split, merge), abs=1e-9)
    split, merge = metrics.variation_of_information(gt, seg, ignore_labels=(0,))
    assert (ours.voi_split, ours.voi_merge) == pytest.approx((split, merge), abs=1e-9)

    # adapted_rand_error(image_true=gt, image_test=seg), ignore_labels=(0,) on gt by default.
    # scikit-image counts pairs of distinct voxels, sum(n_ij**2) - N, where connecto (like
    # CREMI and funlib.evaluate) counts sum(n_ij**2), so convert: its "precision" is
    # (S - N) / (sum gt_size**2 - N) and its "recall" (S - N) / (sum seg_size**2 - N).
    for error, precision, recall in (
        metrics.adapted_rand_error(gt_m, seg_m, ignore_labels=()),
        metrics.adapted_rand_error(gt, seg),
    ):
        assert 0 < error < 1
        sum_gt2 = float((np.unique(gt_m, return_counts=True)[1].astype(float) ** 2).sum())
        sum_n2 = precision * (sum_gt2 - n) + n
        sum_seg2 = (sum_n2 - n) / recall + n
        assert ours.arand == pytest.approx(1 - 2 * sum_n2 / (sum_gt2 + sum_seg2), abs=1e-9)


# Expected run length. Voxel size 4 nm in z, 1 nm in y and x; the volume is (2, 1, 21):
# skeleton 1 runs along x at z = 0 nm over x = 0..10 nm (10 edges of 1 nm), skeleton 2 at
# z = 4 nm (voxel row z = 1) over x = 0..20 nm. Total length 30 nm.
VOXEL = (4, 1, 1)


def _line(z_nm: float, length: int) -> Skeleton:
    x = np.arange(length + 1, dtype=float)
    vertices = np.stack([np.full_like(x, z_nm), np.zeros_like(x), x], axis=1)
    return Skeleton(vertices, np.stack([np.arange(length), np.arange(1, length + 1)], axis=1))


SKELETONS = {1: _line(0, 10), 2: _line(4, 20)}


def _ground_truth() -> np.ndarray:
    gt = np.zeros((2, 1, 21), np.uint64)
    gt[0, 0, :11] = 1
    gt[1, 0, :] = 2
    return gt


def test_erl_of_the_ground_truth_is_its_maximum():
    scores = expected_run_length(SKELETONS, _ground_truth(), VOXEL)
    assert scores.erl == pytest.approx((10**2 + 20**2) / 30)
    assert scores.max_erl == pytest.approx(scores.erl)
    assert (scores.n_mergers, scores.n_splits, scores.n_omitted) == (0, 0, 0)
    assert (scores.n_skeletons, scores.total_length) == (2, pytest.approx(30))
    # the same with the segmentation's voxel [0, 0, 0] placed at (100, 50, -7) nm
    shifted = {k: Skeleton(s.vertices + (100, 50, -7), s.edges) for k, s in SKELETONS.items()}
    assert expected_run_length(shifted, _ground_truth(), VOXEL, (100, 50, -7)) == scores


def test_erl_split_loses_the_cut_edge():
    seg = _ground_truth()
    seg[0, 0, 5:] = 3  # nodes x = 0..4 in 1, x = 5..10 in 3: edge 4-5 is the split
    scores = expected_run_length(SKELETONS, seg, VOXEL)
    assert scores.erl == pytest.approx((4**2 + 5**2 + 20**2) / 30)
    assert (scores.n_mergers, scores.n_splits, scores.n_omitted) == (0, 1, 0)


def test_erl_merge_zeroes_both_skeletons():
    scores = expected_run_length(SKELETONS, np.ones((2, 1, 21), np.uint64), VOXEL)
    assert scores.erl == 0.0
    assert scores.max_erl == pytest.approx(500 / 30)
    assert (scores.n_mergers, scores.n_splits, scores.n_omitted) == (1, 0, 0)


def test_erl_background_hole_is_omitted_and_a_segment_is_one_run():
    seg = _ground_truth()
    seg[0, 0, 5] = 0  # edges 4-5 and 5-6 are lost, x = 0..4 and 6..10 stay in segment 1
    scores = expected_run_length(SKELETONS, seg, VOXEL)
    # funlib sums the correct edges of one skeleton in one segment: one run of 4 + 4 nm
    assert scores.erl == pytest.approx((8**2 + 20**2) / 30)
    assert (scores.n_mergers, scores.n_splits, scores.n_omitted) == (0, 0, 2)


def test_erl_merge_min_nodes_forgives_a_grazing_segment():
    seg = _ground_truth()
    seg[1, 0, 20] = 1  # the last node of skeleton 2 lies in skeleton 1's segment
    grazing = expected_run_length(SKELETONS, seg, VOXEL)
    assert grazing.erl == pytest.approx(19**2 / 30)  # segment 1 merges: skeleton 1 lost
    assert (grazing.n_mergers, grazing.n_splits) == (1, 1)
    forgiven = expected_run_length(SKELETONS, seg, VOXEL, merge_min_nodes=2)
    assert forgiven.erl == pytest.approx((10**2 + 19**2) / 30)
    assert (forgiven.n_mergers, forgiven.n_splits) == (0, 1)


def test_erl_bad_input_names_the_problem():
    with pytest.raises(ConnectoError, match="outside the segmentation"):
        expected_run_length(SKELETONS, _ground_truth()[:, :, :15], VOXEL)
    with pytest.raises(ConnectoError, match="no edges"):
        expected_run_length({}, _ground_truth(), VOXEL)


def test_kimimaro_skeletons_of_two_tubes():
    # two tubes along x, radius 8 voxels (160 nm wide at 10 nm), 790 and 890 nm between
    # the centres of their end voxels
    z, y, x = np.ogrid[:24, :48, :100]
    labels = np.zeros((24, 48, 100), np.uint32)
    labels[((z - 12) ** 2 + (y - 12) ** 2 <= 64) & (x >= 10) & (x < 90)] = 7
    labels[((z - 12) ** 2 + (y - 36) ** 2 <= 64) & (x >= 5) & (x < 95)] = 9
    skeletons = skeletonize_labels(labels, 10)
    assert sorted(skeletons) == [7, 9]
    # TEASAR ends on the rim of each end cap: at most a radius (80 nm) of extra path per end
    for label, tube in ((7, 790), (9, 890)):
        assert tube * 0.95 <= skeletons[label].length <= tube + 2 * 80
        index = np.rint(skeletons[label].vertices / 10).astype(int)
        assert (labels[tuple(index.T)] == label).all()
    scores = expected_run_length(skeletons, labels, 10)
    assert scores.max_erl == pytest.approx((790**2 + 890**2) / 1680, rel=0.1)
    assert scores.erl == scores.max_erl
    half = labels.copy()
    half[:, :, 50:][half[:, :, 50:] == 7] = 8  # cut tube 7 in the middle
    assert expected_run_length(skeletons, half, 10).n_splits == 1
    assert expected_run_length(skeletons, half, 10).erl < scores.erl
