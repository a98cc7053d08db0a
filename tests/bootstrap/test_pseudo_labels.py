"""Pseudo ground truth: which segments a next round trains on, checked voxel by voxel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds, prepare_ds

from connecto import ConnectoError
from connecto.bootstrap.pseudo_labels import (
    SLAB_SECTIONS,
    SegmentFilter,
    make_pseudo_labels,
    segment_statistics,
)

VOXEL = Coordinate(40, 4, 4)


def segmentation(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """20 sections (more than one slab): neurites through all sections, a one-section
    fragment, dust, and one huge merge."""
    data = np.zeros((20, 64, 64), np.uint64)
    for i in range(6):  # neurites, 8x8 in-plane, all sections
        data[:, 8 * i : 8 * i + 8, 0:8] = 10 + i
    data[5, 40:48, 40:48] = 50  # a fragment in one section only
    data[7, 60, 60] = 60  # dust: one voxel
    data[:, 20:64, 20:40] = 70  # a giant merge
    path = tmp_path / "seg.zarr"
    array = prepare_ds(
        path / "segmentation", shape=data.shape, offset=(400, 0, 0), voxel_size=VOXEL,
        dtype=np.uint64, mode="w",
    )  # fmt: skip
    array[array.roi] = data
    return path, data


def test_statistics_match_numpy(tmp_path: Path) -> None:
    path, data = segmentation(tmp_path)
    array = open_ds(path / "segmentation")
    assert data.shape[0] > SLAB_SECTIONS  # segments cross slabs
    ids, sizes, spans = segment_statistics(array, array.roi)
    expected_ids, expected_sizes = np.unique(data[data > 0], return_counts=True)
    assert ids.tolist() == expected_ids.tolist()
    assert sizes.tolist() == expected_sizes.tolist()
    assert spans.tolist() == [int((data == i).any(axis=(1, 2)).sum()) for i in expected_ids]


def test_filters_drop_dust_fragments_and_merges(tmp_path: Path) -> None:
    path, data = segmentation(tmp_path)
    rule = SegmentFilter(min_size=2, min_sections=3, max_size=10_000, outlier_std=None)
    report = make_pseudo_labels((path, "segmentation"), (path, "pseudo"), rule)
    out = open_ds(path / "pseudo")
    assert out.roi == open_ds(path / "segmentation").roi
    kept = out.to_ndarray(out.roi)
    expected = np.where(np.isin(data, [50, 60, 70]), 0, data)
    np.testing.assert_array_equal(kept, expected)
    assert report.segments == 9 and report.kept_segments == 6
    assert report.dropped == {"too small": 1, "too large": 1, "too few sections": 1,
                              "size outlier": 0}  # fmt: skip
    assert report.kept_voxels == int((expected > 0).sum())
    assert report.kept_fraction == pytest.approx((expected > 0).sum() / (data > 0).sum())
    assert "kept 6 of 9 segments" in report.summary()


def test_outlier_cut_is_two_sided_over_sizes_above_min_size(tmp_path: Path) -> None:
    path, data = segmentation(tmp_path)
    report = make_pseudo_labels(
        (path, "segmentation"), (path, "pseudo"), SegmentFilter(min_size=2, outlier_std=1.5)
    )
    kept = open_ds(path / "pseudo").to_ndarray(Roi((400, 0, 0), (800, 256, 256)))
    ids = set(np.unique(kept).tolist()) - {0}
    assert 70 not in ids  # the merge is far above the others
    assert report.dropped["too small"] == 1 and report.dropped["size outlier"] >= 1


def test_a_roi_limits_the_output_and_bad_input_is_one_line(tmp_path: Path) -> None:
    path, data = segmentation(tmp_path)
    roi = Roi((400 + 40 * 4, 0, 0), (40 * 8, 32, 32))
    make_pseudo_labels((path, "segmentation"), (path, "crop"), SegmentFilter(outlier_std=None), roi)
    crop = open_ds(path / "crop")
    assert crop.roi == roi
    np.testing.assert_array_equal(crop.to_ndarray(roi), data[4:12, :8, :8])
    with pytest.raises(ConnectoError, match="missing: cannot open"):
        make_pseudo_labels((path, "missing"), (path, "x"), SegmentFilter())
