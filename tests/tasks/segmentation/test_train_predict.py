"""MTLSD training through the training driver, the pipeline's unlabelled mask, and
blockwise prediction from a checkpoint (with resume), on a NeuroProof crop."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import h5py
import numpy as np
import pytest
import torch
import zarr
from funlib.persistence import open_ds
from pymongo import MongoClient
from scipy.ndimage import binary_dilation

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.ingest import create_volume, ingest
from connecto.data.volumes import open_raw
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks import load_train_config
from connecto.tasks.parts import TaskParts
from connecto.tasks.segmentation.config import SegmentationTrainConfig, load_segment_config
from connecto.tasks.segmentation.model import MtlsdModel, output_shape
from connecto.tasks.segmentation.pipeline import (
    AFFS_WEIGHTS,
    GT_AFFS,
    GT_LSDS,
    PRED_AFFS,
    PRED_LSDS,
    batch_request,
    data_pipeline,
    task_parts,
)
from connecto.tasks.segmentation.steps import open_graph
from tests.conftest import (
    NEUROPROOF,
    REPO,
    SHARED_DATA,
    needs_neuroproof,
    require_shared_data,
    run_connecto,
)

pytestmark = needs_neuroproof
SMALL_NET = [
    "input_shape=[44,44,44]", "downsample_factors=[[2,2,2]]", "fmaps=4", "fmap_inc_factor=2",
    "augment=false", "save_every=2", "snapshot_every=2", "log_every=1",
    "train_roi=[[0,0,0],[400,640,640]]", "validation_roi=[[400,0,0],[120,640,640]]",
    "test_roi=[[520,0,0],[120,640,640]]", "worker.num_cache_workers=1", "seed=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64^3 crop of raw and neuron ids as zarr, with an `unlabelled` mask that marks
    marks stripes of 8 voxels along x as labelled (so every training crop has both)."""
    path = tmp_path_factory.mktemp("np") / "neuroproof.zarr"
    root = zarr.open_group(str(path), mode="w")
    with h5py.File(NEUROPROOF, "r") as source:
        for name in ("volumes/raw", "volumes/labels/neuron_ids"):
            data = source[name][:64, :64, :64]
            create_volume(root, name, data.shape, data.dtype, (10, 10, 10), (0, 0, 0))[:] = data
    mask = np.zeros((64, 64, 64), dtype=np.uint8)
    mask[..., (np.arange(64) // 8) % 2 == 0] = 1
    create_volume(root, "volumes/labels/mask", mask.shape, mask.dtype, (10, 10, 10), (0, 0, 0))[
        :
    ] = mask
    return path


@pytest.fixture(scope="module")
def trained(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainSetup:
    base = tmp_path_factory.mktemp("runs")
    setup, _, _ = prepare_training(
        base, "seg", 0, task="segmentation",
        overrides=[f'raw_container="{volume}"', *SMALL_NET],
    )  # fmt: skip
    # in a subprocess, as users run it: gunpowder's PreCache forks, and a fork of the
    # test process (pymongo and other threads running) is not safe
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    return setup


def test_unet_output_shape_and_errors():
    assert output_shape((44, 44, 44), [(2, 2, 2)]) == (28, 28, 28)
    assert output_shape((76, 76, 76), [(2, 2, 2), (2, 2, 2)]) == (36, 36, 36)
    lsds, affs = MtlsdModel(3, 2, 2, [(2, 2, 2)])(torch.zeros(1, 44, 44, 44))
    assert lsds.shape == (1, 10, 28, 28, 28) and affs.shape == (1, 3, 28, 28, 28)
    with pytest.raises(ConnectoError, match="does not divide"):
        output_shape((45, 44, 44), [(2, 2, 2)])
    with pytest.raises(ValueError, match="output_shape"):
        SegmentationTrainConfig(raw_container="x", output_shape=(1, 2, 3))


def test_template_rois_are_disjoint_and_overlaps_refused():
    template = REPO / "experiments" / "segmentation" / "train_config.toml"
    config = load_train_config(template)
    assert config.train_roi and config.validation_roi and config.test_roi
    with pytest.raises(ValueError, match="train_roi and test_roi overlap"):
        SegmentationTrainConfig(
            raw_container="x", train_roi=[[0, 0, 0], [100, 10, 10]],
            test_roi=[[90, 0, 0], [100, 10, 10]],
        )  # fmt: skip


def test_training_checkpoints_snapshots_and_resume(trained: TrainSetup, mongo_client: MongoClient):
    assert trained.checkpoints() == [2]
    state = torch.load(trained.checkpoint(2), weights_only=False)
    assert state["iteration"] == 2 and "optimizer_state_dict" in state
    snapshot = zarr.open_group(str(trained.snapshot_dir / "batch_2.zarr"), mode="r")
    assert {"raw", "gt_affs", "pred_affs", "gt_lsds", "pred_lsds"} <= set(snapshot.array_keys())
    assert snapshot["pred_affs"].shape == (1, 3, 28, 28, 28)
    assert snapshot["gt_lsds"].shape == (1, 10, 28, 28, 28)
    assert list(trained.log_dir.glob("events.out.tfevents.*"))
    resumed = run_connecto("train", "3", cwd=trained.path)
    assert resumed.returncode == 0 and "from 2" in resumed.stdout, resumed.stderr
    assert trained.checkpoints() == [2, 3]


def test_unlabelled_mask_zeroes_the_loss_weights(volume: Path):
    config = SegmentationTrainConfig(
        raw_container=str(volume), unlabelled_dataset="volumes/labels/mask",
        input_shape=(44, 44, 44), downsample_factors=[(2, 2, 2)], augment=False,
    )  # fmt: skip
    labels = open_raw(str(volume), config.labels_dataset)
    mask = open_raw(str(volume), "volumes/labels/mask")
    raw = open_raw(str(volume), config.raw_dataset)
    pipeline = data_pipeline(config, raw, labels, mask, labels.roi, cache_workers=0)
    request = batch_request(config, with_unlabelled=True)
    for key in (PRED_AFFS, PRED_LSDS):  # the network's outputs come from the Train node
        del request[key]
    with gp.build(pipeline):
        batch = pipeline.request_batch(request)
    weights = batch[AFFS_WEIGHTS]
    unlabelled = batch[gp.ArrayKey("UNLABELLED")].data[0]
    assert batch[GT_AFFS].data.shape == (1, 3, 28, 28, 28)
    assert batch[GT_LSDS].data.shape == (1, 10, 28, 28, 28)
    assert unlabelled.min() == 0 and unlabelled.max() == 1  # the crop straddles the mask
    # gunpowder keeps affinities between a labelled and an unlabelled voxel (the labelled
    # object ends there); only those with no labelled voxel within one step carry no weight.
    # The offsets are +1, so the crop's last slice on each axis pairs with a voxel outside
    # the crop, whose label this batch does not show: judge only the others
    near_labelled = binary_dilation(unlabelled == 1, iterations=1)
    inside = (slice(None, -1),) * 3
    assert np.all(weights.data[0][:, *inside][:, ~near_labelled[inside]] == 0)
    assert np.any(weights.data[0][:, unlabelled == 1] > 0)


def test_blockwise_prediction_resumes(
    trained: TrainSetup, volume: Path, tmp_path: Path, db_name: str, connecto
):
    # through `connecto` subprocesses: daisy's runtime threads must stay out of the test
    # process, whose later forks (gunpowder's PreCache) they would hang
    config_path = tmp_path / "segment_config.toml"
    config_path.write_text(
        f'checkpoint = "{trained.checkpoint(2)}"\nraw_container = "{volume}"\n'
        f'roi = [[0, 0, 0], [280, 560, 280]]\nnum_workers = 1\ndb_name = "{db_name}"\n'
    )
    first = connecto("segment", "predict", "-c", config_path, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "2 blocks" in first.stdout
    config, _ = load_segment_config(config_path)
    affs = open_ds(tmp_path / "segment.zarr" / "affs")
    assert affs.shape == (3, 28, 56, 28) and affs.dtype == np.uint8
    before = affs.to_ndarray(affs.roi)
    assert before.max() > 0
    # an interrupted run: one block's output lost and its completion never recorded
    graph = open_graph(config)
    graph.blocks.delete_one({"task": "predict-affs", "block_id": 0})
    affs_rw = open_ds(tmp_path / "segment.zarr" / "affs", mode="r+")
    affs_rw[affs.roi] = np.zeros_like(before)
    assert connecto("segment", "predict", "-c", config_path, cwd=tmp_path).returncode == 0
    after = open_ds(tmp_path / "segment.zarr" / "affs").to_ndarray(affs.roi)
    lost = after.reshape(3, 28, 2, 28, 28).max(axis=(0, 1, 3, 4))
    assert lost.tolist().count(0) == 1  # the finished block was skipped, not recomputed
    assert np.array_equal(after[after > 0], before[after > 0])

    bad = tmp_path / "bad.toml"
    bad.write_text(f'checkpoint = "{trained.path / "model_checkpoint_99"}"\n')
    failed = connecto("segment", "predict", "-c", bad, cwd=tmp_path)
    assert failed.returncode == 1 and "no such file" in failed.stderr


GALA = SHARED_DATA / "gala_fib_crop"
GALA_ROIS = [
    "train_roi=[[0,0,0],[300,1000,2000]]", "validation_roi=[[300,0,0],[200,1000,1000]]",
    "test_roi=[[300,0,1000],[200,1000,1000]]",
]  # fmt: skip


@pytest.fixture(scope="module")
def gala(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The gala FIB-SEM crop (50 x 100 x 200 voxels) as a user has it: raw and labels in
    separate HDF5 files, each one dataset `stack` without a resolution attribute;
    ingested into separate containers, renamed."""
    image = require_shared_data(GALA / "train-image.h5")
    gt = require_shared_data(GALA / "train-gt.lzf.h5")
    base = tmp_path_factory.mktemp("gala")
    raw, labels = base / "raw.zarr", base / "labels.zarr"
    ingest(image, raw, ["stack:volumes/raw"], (10, 10, 10), progress=False)
    ingest(gt, labels, ["stack:volumes/labels/neuron_ids"], (10, 10, 10), progress=False)
    return raw, labels


def _parts(**values) -> TaskParts:
    config = SegmentationTrainConfig(
        **{"input_shape": (44, 44, 44), "downsample_factors": [(2, 2, 2)], **values}
    )
    return task_parts(config, WorkerConfig(num_cache_workers=1), "train_config.toml")


def test_training_reads_labels_from_their_own_container(
    gala: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, labels = gala
    setup, config, _ = prepare_training(
        tmp_path, "fib", 0, task="segmentation",
        overrides=[
            f'raw_container="{raw}"', f'labels_container="{labels}"',
            *(item for item in SMALL_NET if not item.split("=")[0].endswith("_roi")), *GALA_ROIS,
        ],
    )  # fmt: skip
    assert config.labels_source == str(labels) and config.unlabelled_source == str(labels)
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_2.zarr"), mode="r")
    ids = np.unique(snapshot["labels"][:])
    with h5py.File(GALA / "train-gt.lzf.h5", "r") as f:
        assert set(ids.tolist()) <= set(np.unique(f["stack"][:]).tolist())
    assert len(ids) > 1 and np.asarray(snapshot["gt_affs"]).max() == 1
    # the default (labels in the raw container) names the key that pointed there
    with pytest.raises(ConnectoError, match=r"key 'raw_container' = .*raw.zarr.*"
                       r"no dataset 'volumes/labels/neuron_ids' \(labels_dataset\)"):  # fmt: skip
        _parts(raw_container=str(raw))
    with pytest.raises(ConnectoError, match=r"key 'labels_container' = .*absent.zarr"):
        _parts(raw_container=str(raw), labels_container=str(tmp_path / "absent.zarr"))
    with pytest.raises(ConnectoError, match=r"key 'unlabelled_container'.*\(unlabelled_dataset"):
        _parts(raw_container=str(raw), labels_container=str(labels),
               unlabelled_container=str(raw), unlabelled_dataset="mask")  # fmt: skip


def test_rois_and_input_shape_are_checked_against_the_volume(
    volume: Path, gala: tuple[Path, Path], tmp_path: Path
) -> None:
    """A 64^3 volume at 10 nm (640 nm a side): ROIs outside it, or a network input deeper
    than it, are refused before training, naming the key."""
    inside = {"raw_container": str(volume), "train_roi": [[0, 0, 0], [400, 640, 640]]}
    assert _parts(**inside).request is not None
    for key, value in (
        ("validation_roi", [[400, 0, 0], [500, 640, 640]]),
        ("test_roi", [[400, 0, 0], [240, 640, 700]]),
    ):
        with pytest.raises(ConnectoError, match=rf"key '{key}' = .* is not inside the raw volume"):
            _parts(**inside, **{key: value})
    with pytest.raises(ConnectoError, match="key 'validation_roi' = .* not on the voxel grid"):
        _parts(**inside, validation_roi=[[405, 0, 0], [200, 640, 640]])
    with pytest.raises(ConnectoError, match=r"key 'train_roi' holds \[20, 64, 64\] voxels, "
                       r"fewer than the network's output \[28, 28, 28\]"):  # fmt: skip
        _parts(raw_container=str(volume), train_roi=[[0, 0, 0], [200, 640, 640]])
    with pytest.raises(
        ConnectoError,
        match=r"key 'input_shape' = \[76, 76, 76\] voxels does "
        r"not fit the raw volume of \[64, 64, 64\] voxels \(76 > 64 along z\)",
    ):
        _parts(raw_container=str(volume), input_shape=(76, 76, 76),
               downsample_factors=[(2, 2, 2), (2, 2, 2)])  # fmt: skip
    # the template on the gala crop (50 voxels deep): one line from `connecto train`
    raw, labels = gala
    setup, _, _ = prepare_training(
        tmp_path, "fib", 0, task="segmentation",
        overrides=[f'raw_container="{raw}"', f'labels_container="{labels}"', *GALA_ROIS],
    )  # fmt: skip
    refused = run_connecto("train", "1", cwd=setup.path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"connecto: error: {setup.path / 'train_config'}: key 'input_shape' = [76, 76, 76] "
        "voxels does not fit the raw volume of [50, 100, 200] voxels (76 > 50 along z); "
        "choose at most 50 along z, divisible by downsample_factors"
    ]
    assert not setup.checkpoints()
