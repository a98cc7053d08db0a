"""The segmentation-over-raw PNG the bootstrap chain writes per round."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

from connecto import ConnectoError
from connecto.data.ingest import create_volume
from connecto.tasks.segmentation.overlay import overlay_section, segment_colours, write_overlay


def test_segments_tinted_background_grey_boundaries_dark() -> None:
    raw = np.full((6, 8), 128, dtype=np.uint8)
    raw[0, 0] = 0  # spreads the grey range
    segmentation = np.zeros((6, 8), dtype=np.uint64)
    segmentation[:, 4:] = 7
    segmentation[:, 6:] = 9
    image = overlay_section(raw, segmentation).astype(int)
    grey = image[3, 1]
    assert grey[0] == grey[1] == grey[2]  # background untinted
    seven, nine = image[3, 5], image[3, 7]
    assert not (seven[0] == seven[1] == seven[2]) and not np.array_equal(seven, nine)
    assert (image[3, 4] < image[3, 5]).all() and (image[3, 6] < image[3, 7]).all()  # edges
    assert np.array_equal(segment_colours(np.array([7])), segment_colours(np.array([7])))


def test_write_overlay_picks_sections_side_by_side(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    raw = create_volume(root, "raw", (10, 20, 30), np.uint8, (40, 4, 4), (0, 0, 0))
    raw[:] = np.random.default_rng(0).integers(0, 255, (10, 20, 30), dtype=np.uint8)
    labels = create_volume(root, "seg", (10, 20, 30), np.uint64, (40, 4, 4), (0, 0, 0))
    labels[:] = np.broadcast_to(np.arange(1, 11, dtype=np.uint64)[:, None, None], (10, 20, 30))
    out = write_overlay((tmp_path / "v.zarr", "raw"), (tmp_path / "v.zarr", "seg"),
                        tmp_path / "round_0" / "segmentation.png")  # fmt: skip
    picture = plt.imread(out)
    assert picture.shape[:2] == (20, 3 * 30 + 2 * 8)
    # sections 0, 5 (rounded from 4.5) and 9: three different tints
    middles = [tuple(picture[10, 15 + 38 * i, :3]) for i in range(3)]
    assert len(set(middles)) == 3
    two = Roi((80, 0, 0), (80, 40, 40))
    inside = write_overlay((tmp_path / "v.zarr", "raw"), (tmp_path / "v.zarr", "seg"),
                           tmp_path / "roi.png", sections=5, roi=two)  # fmt: skip
    assert plt.imread(inside).shape[:2] == (10, 2 * 10 + 8)  # 2 sections in the roi
    with pytest.raises(ConnectoError, match="no overlap"):
        write_overlay((tmp_path / "v.zarr", "raw"), (tmp_path / "v.zarr", "seg"),
                      tmp_path / "none.png", roi=Roi((800, 0, 0), (40, 40, 40)))  # fmt: skip
