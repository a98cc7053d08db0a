"""MTLSD on multi-channel raw (C, z, y, x), as barcoded light microscopy gives: the
pipeline's batches keep the channels through the augmentations, the model takes
`in_channels`, training runs through the driver and blockwise prediction writes the
affinities of a long-range neighbourhood."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Coordinate
from funlib.persistence import open_ds, prepare_ds

from connecto import ConnectoError
from connecto.data.ingest import create_volume
from connecto.data.volumes import open_raw
from connecto.experiment import prepare_training
from connecto.tasks.segmentation.config import SegmentationTrainConfig
from connecto.tasks.segmentation.model import MtlsdModel, check_raw_channels
from connecto.tasks.segmentation.pipeline import GT_AFFS, RAW, batch_request, data_pipeline
from tests.conftest import run_connecto

CHANNELS = 3
SHAPE = (40, 40, 40)
NEIGHBORHOOD = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 0], [0, 6, 0], [0, 0, 6]]
SMALL_NET = {
    "input_shape": (28, 28, 28), "downsample_factors": [(2, 2, 2)], "fmaps": 3,
    "fmap_inc_factor": 2, "lsd_sigma": 40.0,
}  # fmt: skip


def write_barcoded(path: Path) -> None:
    """Labels of 8 boxes, each neuron bright in the channels of its barcode, as uint8
    (C, z, y, x) raw with the agreed metadata (channel axis `c^`)."""
    rng = np.random.default_rng(0)
    labels = np.zeros(SHAPE, dtype=np.uint64)
    half = [s // 2 for s in SHAPE]
    for i in range(8):
        z, y, x = (i >> 2) & 1, (i >> 1) & 1, i & 1
        labels[z * half[0] : (z + 1) * half[0], y * half[1] : (y + 1) * half[1],
               x * half[2] : (x + 1) * half[2]] = i + 1  # fmt: skip
    barcodes = rng.integers(0, 2, size=(9, CHANNELS))
    barcodes[0] = 0
    raw = barcodes[labels].transpose(3, 0, 1, 2) * 180.0 + rng.normal(30, 10, (CHANNELS, *SHAPE))
    root = zarr.open_group(str(path), mode="w")
    create_volume(root, "labels", SHAPE, np.uint64, (10, 10, 10), (0, 0, 0))[:] = labels
    create_volume(root, "unlabelled", SHAPE, np.uint8, (10, 10, 10), (0, 0, 0))[:] = 1
    array = prepare_ds(
        path / "raw", shape=(CHANNELS, *SHAPE), offset=(0, 0, 0), voxel_size=(10, 10, 10),
        axis_names=["c^", "z", "y", "x"], units=["nm"] * 3, dtype=np.uint8, mode="w",
    )  # fmt: skip
    array[array.roi] = np.clip(raw, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def barcoded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("barcoded") / "barcoded.zarr"
    write_barcoded(path)
    return path


def targets_request(config: SegmentationTrainConfig) -> gp.BatchRequest:
    """A training batch's request without the network's outputs (no model runs here)."""
    request = batch_request(config, with_unlabelled=False)
    for key in list(request.array_specs):
        if str(key).startswith("PRED"):
            del request[key]
    return request


def test_model_takes_channels_and_channel_count_is_checked(barcoded: Path):
    model = MtlsdModel(6, 3, 2, [(2, 2, 2)], in_channels=CHANNELS)
    lsds, affs = model(torch.zeros(2, CHANNELS, 28, 28, 28))
    assert lsds.shape == (2, 10, 12, 12, 12) and affs.shape == (2, 6, 12, 12, 12)
    raw = open_raw(barcoded, "raw")
    check_raw_channels(raw, CHANNELS, "cfg")
    with pytest.raises(ConnectoError, match="key 'in_channels' = 1: the raw dataset has 3"):
        check_raw_channels(raw, 1, "cfg")


def test_pipeline_keeps_channels_through_augmentations(barcoded: Path):
    config = SegmentationTrainConfig(
        raw_container=str(barcoded), raw_dataset="raw", labels_dataset="labels",
        in_channels=CHANNELS, neighborhood=NEIGHBORHOOD, augment=True, voxel_size=(10, 10, 10),
        channel_augment={"shuffle": True, "zero_probability": 0, "duplicate_probability": 0},
        **SMALL_NET,
    )  # fmt: skip
    raw, labels = open_raw(barcoded, "raw"), open_raw(barcoded, "labels")
    pipeline = data_pipeline(config, raw, labels, None, labels.roi)
    request = targets_request(config)
    with gp.build(pipeline):
        batch = pipeline.request_batch(request)
    data = batch[RAW].data
    assert data.shape == (1, CHANNELS, 28, 28, 28)
    assert data.min() >= -1 and data.max() <= 1
    # per-channel content survives: the channels are not mixed or collapsed
    assert len({round(float(c.std()), 3) for c in data[0]}) == CHANNELS
    assert batch[GT_AFFS].data.shape == (1, len(NEIGHBORHOOD), 12, 12, 12)
    with pytest.raises(ValueError, match="channel_augment.zero_probability"):
        SegmentationTrainConfig(raw_container="x", channel_augment={"zero_probability": 2})


def test_train_and_predict_multichannel(barcoded: Path, tmp_path: Path, db_name: str):
    overrides = [
        f'raw_container="{barcoded}"', 'raw_dataset="raw"', 'labels_dataset="labels"',
        f"in_channels={CHANNELS}", f"neighborhood={NEIGHBORHOOD}",
        "input_shape=[28,28,28]", "downsample_factors=[[2,2,2]]", "fmaps=3",
        "fmap_inc_factor=2", "lsd_sigma=40.0", "augment=true", "save_every=2",
        "snapshot_every=2", "log_every=1", "train_roi=[[0,0,0],[400,400,200]]",
        "validation_roi=[[0,0,200],[400,400,100]]", "test_roi=[[0,0,300],[400,400,100]]",
        "unlabelled_dataset='unlabelled'", "worker.num_cache_workers=1", "seed=1",
    ]  # fmt: skip
    setup, _, _ = prepare_training(
        tmp_path, "barcodes", 0, template="segmentation-barcodes", overrides=overrides
    )
    trained = run_connecto("train", "2", cwd=setup.path)
    assert trained.returncode == 0, trained.stderr
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_2.zarr"), mode="r")
    assert snapshot["raw"].shape == (1, CHANNELS, 28, 28, 28)
    assert setup.path.joinpath("train_config.toml").read_text().count("[channel_augment]") == 1

    config = tmp_path / "segment_config.toml"
    config.write_text(
        f'checkpoint = "{setup.checkpoint(2)}"\nraw_container = "{barcoded}"\n'
        f'raw_dataset = "raw"\nroi = [[0, 0, 0], [240, 240, 120]]\nnum_workers = 1\n'
        f'neighborhood = {NEIGHBORHOOD}\ndb_name = "{db_name}"\n'
    )
    predicted = run_connecto("segment", "predict", "-c", config, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    affs = open_ds(tmp_path / "segment.zarr" / "affs")
    assert affs.shape == (len(NEIGHBORHOOD), 24, 24, 12) and affs.dtype == np.uint8
    assert tuple(affs.voxel_size) == Coordinate(10, 10, 10)
    assert affs.to_ndarray(affs.roi).max() > 0


def test_long_range_offsets_never_place_a_batch_outside_a_small_volume(barcoded: Path):
    """Offsets of 27 voxels on a 40-voxel volume: the labels' padding once let a random
    output lie wholly beyond the volume, and gunpowder's Pad of the raw failed there
    (training on a 64-voxel-wide barcoded crop crashed within a few batches)."""
    far = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 27, 0], [0, 0, 27], [12, 0, 0]]
    config = SegmentationTrainConfig(
        raw_container=str(barcoded), raw_dataset="raw", labels_dataset="labels",
        in_channels=CHANNELS, neighborhood=far, voxel_size=(10, 10, 10), **SMALL_NET,
    )  # fmt: skip
    raw, labels = open_raw(barcoded, "raw"), open_raw(barcoded, "labels")
    pipeline = data_pipeline(config, raw, labels, None, labels.roi)
    request = targets_request(config)
    np.random.seed(0)
    with gp.build(pipeline):
        for _ in range(60):
            batch = pipeline.request_batch(request)
            assert batch[GT_AFFS].spec.roi.intersects(labels.roi)
