"""The chain's threshold chosen against the painting: the in-memory scores of every
candidate equal those of the segmentations `extract` writes, scored on the painted
sections, and the choice is their lowest VOI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from funlib.geometry import Roi
from funlib.persistence import open_ds, prepare_ds

from connecto import ConnectoError
from connecto.bootstrap.painted import choose_threshold, spread
from connecto.tasks.segmentation.config import load_segment_config
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.steps import open_volume
from connecto.tasks.segmentation.workflow import gt_affinities, run_steps, threshold_name
from tests.conftest import NEUROPROOF, needs_neuroproof
from tests.tasks.segmentation.test_workflow import CROP, write_config

CANDIDATES = [0.2, 0.4, 0.6, 0.8]
PAINTED = [3, 30, 61]  # z indices of the painting (the crop's own grid)


def test_spread_keeps_the_ends_and_at_most_so_many() -> None:
    assert spread([1, 2, 3], most=5) == [1, 2, 3]
    picked = spread(list(range(100)), most=5)
    assert picked == [0, 25, 50, 74, 99] and len(picked) == 5


@needs_neuroproof
def test_choice_scores_equal_the_written_segmentations(tmp_path: Path, db_name: str) -> None:
    path = write_config(tmp_path, db_name, thresholds=CANDIDATES)
    config, base = load_segment_config(path)
    gt_affinities(config, degradation="strong", seed=0)
    run_steps(path, ("fragments", "agglomerate", "extract"))
    # a painting of three sections of the crop, as `connecto data sparsify` would make
    truth = open_volume(NEUROPROOF, "volumes/labels/neuron_ids").to_ndarray(Roi(*CROP))
    painting = prepare_ds(tmp_path / "painting.zarr" / "labels", shape=truth.shape,
                          offset=CROP[0], voxel_size=(10, 10, 10), dtype=np.uint64)  # fmt: skip
    painted = np.zeros_like(truth, dtype=np.uint64)
    painted[PAINTED] = truth[PAINTED]
    painting[painting.roi] = painted

    choice = choose_threshold(config, painting, PAINTED, CANDIDATES)

    assert choice.sections == PAINTED
    written = {}
    for threshold in CANDIDATES:
        segmentation = open_ds(base / "segment.zarr" / "segmentation" / threshold_name(threshold))
        data = segmentation.to_ndarray(Roi(*CROP))
        written[threshold] = score_segmentation(data[PAINTED], painted[PAINTED])
    for threshold in CANDIDATES:
        assert choice.scores[threshold].voi == pytest.approx(written[threshold].voi, abs=1e-9)
        assert choice.scores[threshold].arand == pytest.approx(written[threshold].arand)
    vois = [written[t].voi for t in CANDIDATES]
    assert choice.threshold == CANDIDATES[int(np.argmin(vois))]
    assert max(vois) - min(vois) > 0.1  # the candidates differ: the choice means something

    far = {"offset": (10000, 0, 0), "voxel_size": (10, 10, 10), "dtype": np.uint64}
    outside = prepare_ds(tmp_path / "painting.zarr" / "far", shape=truth.shape, **far)
    with pytest.raises(ConnectoError, match="outside the segmented region"):
        choose_threshold(config, outside, PAINTED, CANDIDATES)
