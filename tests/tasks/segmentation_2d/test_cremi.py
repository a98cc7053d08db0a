"""A smoke run on the real sparse painting: CREMI C, one section (z = 4) painted by hand,
ingested from its TIFFs as a user would, trained for a few iterations on a crop and
predicted on sections around the painting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi
from funlib.persistence import open_ds

from connecto.data.ingest import ingest
from connecto.tasks.segmentation_2d.config import Segmentation2dTrainConfig
from connecto.tasks.segmentation_2d.predict import predict_sections
from tests.conftest import SHARED_DATA, require_shared_data, run_connecto
from tests.tasks.segmentation_2d.test_train_predict import write_setup

CREMI = SHARED_DATA / "cremi_c_sparse"
VOXEL_SIZE = (40, 4, 4)


@pytest.fixture(scope="module")
def cremi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = require_shared_data(CREMI / "cremi_image.tif")
    labels = require_shared_data(CREMI / "cremi_labels.tif")
    container = tmp_path_factory.mktemp("cremi") / "cremi.zarr"
    ingest(image, container, ["raw"], VOXEL_SIZE, progress=False)
    ingest(labels, container, ["labels"], VOXEL_SIZE, progress=False)
    return container


def test_training_on_the_painted_section_and_predicting_around_it(cremi: Path, tmp_path: Path):
    config = Segmentation2dTrainConfig(
        raw_container=str(cremi), raw_dataset="raw", labels_dataset="labels",
        voxel_size=VOXEL_SIZE,
        # a crop: all 25 sections (only z = 4 is painted), 400 x 400 voxels in-plane
        train_roi=[[0, 400, 400], [1000, 1600, 1600]],
        input_shape=(108, 108), downsample_factors=[(2, 2), (2, 2)], fmaps=4,
        fmap_inc_factor=2, batch_size=2, save_every=3, snapshot_every=3, log_every=1, seed=0,
    )  # fmt: skip
    assert config.network_output_shape == (68, 68)
    setup = write_setup(tmp_path, config)
    done = run_connecto("train", "3", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    assert setup.checkpoints() == [3]
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_3.zarr"), mode="r")
    labels = np.asarray(snapshot["labels"])
    painted = np.unique(zarr.open_group(str(cremi), mode="r")["labels"][4])
    assert set(np.unique(labels).tolist()) <= set(painted.tolist())  # the painted section
    assert np.asarray(snapshot["labelled"]).max() == 1
    assert np.asarray(snapshot["gt_affs"]).max() == 1

    roi = Roi((80, 400, 400), (200, 400, 400))  # sections 2..6, 100 x 100 voxels
    result = predict_sections(setup.checkpoint(3), config, cremi, "raw", tmp_path / "p.zarr",
                              roi, device="cpu")  # fmt: skip
    affs = open_ds(result.affs)
    assert affs.shape == (6, 5, 100, 100) and affs.roi == roi
    assert tuple(affs.voxel_size) == VOXEL_SIZE
    assert open_ds(result.lsds).shape == (6, 5, 100, 100)
