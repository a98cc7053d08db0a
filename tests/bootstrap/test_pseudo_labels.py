"""Pseudo ground truth: which segments a next round trains on, checked voxel by voxel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds

from connecto import ConnectoError
from connecto.bootstrap.pseudo_labels import (
    SLAB_SECTIONS,
    SegmentFilter,
    make_pseudo_labels,
    painted_merges,
    segment_statistics,
)
from connecto.data.volumes import prepare_volume

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
    array = prepare_volume(
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
                              "merges painted objects": 0, "size outlier": 0}  # fmt: skip
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


def painting(path: Path, voxel_size: Coordinate = VOXEL) -> Array:
    """Painted objects over `segmentation`'s segments: two inside the merge (70) in one
    section; elsewhere each neurite covers most of at most one object per section."""
    paint = np.zeros((20, 64, 64), np.uint64)
    paint[3, 20:30, 20:30] = 1  # both inside segment 70: the painting shows the merge
    paint[3, 40:50, 20:30] = 2
    paint[3, 0:8, 0:8] = 3  # neurite 10 alone
    paint[5, 0:16, 0:8] = 4  # one object split between neurites 10 and 11: not a merge
    paint[10, 8:13, 0:8] = 5  # neurite 11 wholly ...
    paint[10, 13:21, 0:8] = 6  # ... and 3/8 of this one, the rest in neurite 12
    array = prepare_volume(
        path / "painting", shape=paint.shape, offset=(400, 0, 0), voxel_size=voxel_size,
        dtype=np.uint64, mode="w",
    )  # fmt: skip
    array[array.roi] = paint
    return array


def test_segments_covering_two_painted_objects_of_a_section_are_dropped(tmp_path: Path) -> None:
    path, data = segmentation(tmp_path)
    paint = painting(path)
    seg = open_ds(path / "segmentation")
    assert painted_merges(seg, paint, seg.roi, 0.5).tolist() == [70]
    assert painted_merges(seg, paint, seg.roi, 0.3).tolist() == [11, 70]  # 3/8 counts now
    rule = SegmentFilter(outlier_std=None)
    source, painted = (path, "segmentation"), (path, "painting")
    report = make_pseudo_labels(source, (path, "pseudo"), rule, painting=painted)
    np.testing.assert_array_equal(
        open_ds(path / "pseudo").to_ndarray(seg.roi), np.where(data == 70, 0, data)
    )
    assert report.dropped["merges painted objects"] == 1 and report.kept_segments == 8
    off = SegmentFilter(outlier_std=None, drop_painted_merges=False)
    everything = make_pseudo_labels(source, (path, "all"), off, painting=painted)
    assert everything.dropped["merges painted objects"] == 0
    # a painting on another grid cannot be compared voxel by voxel: one line, nothing written
    painting(tmp_path / "other.zarr", Coordinate(40, 8, 8))
    with pytest.raises(ConnectoError, match=r"voxel size \(40, 8, 8\) is not the segmentation's"):
        make_pseudo_labels(
            source, (path, "x"), rule, painting=(tmp_path / "other.zarr", "painting")
        )
    assert not (path / "x").exists()


def test_the_command_drops_painted_merges_and_says_a_missing_painting_in_one_line(
    tmp_path: Path, connecto
) -> None:
    path, data = segmentation(tmp_path)
    painting(path)
    args = ("bootstrap", "pseudo-labels", path, "segmentation", tmp_path / "out.zarr")
    done = connecto(*args, "--painting", path, "--painting-dataset", "painting")
    assert done.returncode == 0, done.stderr
    assert "1 merges painted objects" in done.stdout
    kept = open_ds(tmp_path / "out.zarr" / "labels")
    assert 70 not in np.unique(kept.to_ndarray(kept.roi))
    missing = connecto(*args, "--painting", path, "--painting-dataset", "nope")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "no dataset 'nope' (painting)" in missing.stderr + missing.stdout
