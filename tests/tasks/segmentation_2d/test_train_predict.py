"""2D training through the real driver (checkpoints, snapshots, resume) and
section-by-section prediction into stacked zarr datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Roi
from funlib.persistence import open_ds

from connecto import ConnectoError
from connecto.config import WorkerConfig, write_config
from connecto.experiment import TrainSetup
from connecto.tasks import load_train_config
from connecto.tasks.segmentation_2d.config import Segmentation2dTrainConfig
from connecto.tasks.segmentation_2d.model import build_model
from connecto.tasks.segmentation_2d.predict import predict_sections, train_config_of
from tests.conftest import run_connecto
from tests.tasks.segmentation_2d.test_pipeline import (
    NEIGHBORHOOD,
    SHAPE,
    VOXEL_SIZE,
    small_config,
    synthetic_stack,
)


def write_setup(base: Path, config: Segmentation2dTrainConfig) -> TrainSetup:
    """A train setup as `connecto prepare-training` writes one (no template ships yet)."""
    setup = TrainSetup(base, "sections", 0)
    setup.path.mkdir(parents=True)
    write_config(setup.path / "train_config.toml", config)
    write_config(setup.path / "worker_config.toml", WorkerConfig(num_cpus=2, num_cache_workers=1))
    return setup


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_stack(tmp_path_factory.mktemp("s2d") / "stack.zarr")


@pytest.fixture(scope="module")
def trained(stack: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainSetup:
    config = small_config(
        stack, augment=True, batch_size=2, save_every=2, snapshot_every=2, log_every=1, seed=1,
        min_labelled_fraction=0.1, grow_boundary=1,
    )  # fmt: skip
    setup = write_setup(tmp_path_factory.mktemp("runs"), config)
    # in a subprocess, as users run it: gunpowder's PreCache forks, and a fork of the
    # test process (pymongo and other threads running) is not safe
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    return setup


def test_training_checkpoints_snapshots_and_resumes(trained: TrainSetup):
    assert load_train_config(trained.path / "train_config.toml").task == "segmentation-2d"
    assert trained.checkpoints() == [2]
    state = torch.load(trained.checkpoint(2), weights_only=False)
    assert state["iteration"] == 2 and "optimizer_state_dict" in state
    snapshot = zarr.open_group(str(trained.snapshot_dir / "batch_2.zarr"), mode="r")
    assert snapshot["raw"].shape == (2, 3, 44, 44)
    assert snapshot["pred_affs"].shape == (2, 4, 1, 28, 28)
    assert snapshot["gt_lsds"].shape == snapshot["pred_lsds"].shape == (2, 6, 1, 28, 28)
    assert snapshot["gt_affs"].attrs["voxel_size"] == list(VOXEL_SIZE)
    # every snapshot section is the painted one: labels there, none elsewhere
    assert np.asarray(snapshot["labels"]).max() > 0
    assert list(trained.log_dir.glob("events.out.tfevents.*"))
    resumed = run_connecto("train", "3", cwd=trained.path)
    assert resumed.returncode == 0 and "from 2" in resumed.stdout, resumed.stderr
    assert trained.checkpoints() == [2, 3]


def test_a_trained_checkpoint_predicts_every_section(trained: TrainSetup, stack: Path,
                                                     tmp_path: Path):  # fmt: skip
    checkpoint = trained.checkpoint(2)
    config = train_config_of(checkpoint)
    result = predict_sections(checkpoint, config, stack, "volumes/raw", tmp_path / "out.zarr",
                              device="cpu")  # fmt: skip
    affs = open_ds(result.affs)
    assert affs.shape == (len(NEIGHBORHOOD), *SHAPE) and result.sections == SHAPE[0]
    assert affs.to_ndarray(affs.roi).max() > 0
    with pytest.raises(ConnectoError, match="no such file"):
        train_config_of(trained.path / "model_checkpoint_99")


def _random_checkpoint(path: Path, config: Segmentation2dTrainConfig) -> Path:
    """A random network whose heads are scaled up, so its outputs vary over [0, 1] (at
    initialisation they stay near 0.5, where uint8 hides changes of the input)."""
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for head in (model.aff_head, model.lsd_head):
            if head is not None:
                head.weight *= 100
    torch.save({"model_state_dict": model.state_dict()}, path)
    return path


def test_predictions_stack_sections_and_read_only_the_neighbours(stack: Path, tmp_path: Path):
    config = small_config(stack, context_sections=1, fmaps=4)
    checkpoint = _random_checkpoint(tmp_path / "model_checkpoint_1", config)

    def predict(raw: Path, out: str, **options: object) -> tuple[np.ndarray, np.ndarray]:
        result = predict_sections(checkpoint, config, raw, "volumes/raw", tmp_path / out,
                                  device="cpu", **options)  # fmt: skip
        assert result.lsds is not None
        affs, lsds = open_ds(result.affs), open_ds(result.lsds)
        return affs.to_ndarray(affs.roi), lsds.to_ndarray(lsds.roi)

    affs, lsds = predict(stack, "whole.zarr", sections_per_batch=4)
    whole = open_ds(tmp_path / "whole.zarr" / "affs_2d")
    assert affs.shape == (4, *SHAPE) and lsds.shape == (6, *SHAPE)
    assert affs.dtype == np.uint8 and len(np.unique(affs)) > 10
    assert tuple(whole.voxel_size) == VOXEL_SIZE and tuple(whole.roi.offset) == (0, 0, 0)
    assert whole.axis_names == ["c^", "z", "y", "x"]
    attrs = zarr.open_array(str(tmp_path / "whole.zarr" / "affs_2d"), mode="r").attrs
    assert attrs["neighborhood"] == [list(o) for o in NEIGHBORHOOD]
    # the sections batched differently: the same predictions
    one_by_one, _ = predict(stack, "single.zarr", sections_per_batch=1)
    assert np.abs(one_by_one.astype(int) - affs).max() <= 1

    # a section far away changed: only its own and its neighbours' outputs change
    changed = synthetic_stack(tmp_path / "changed.zarr")
    root = zarr.open_group(str(changed), mode="r+")
    root["volumes/raw"][7] = 255 - root["volumes/raw"][7]
    after, after_lsds = predict(changed, "changed_out.zarr", sections_per_batch=4)
    assert np.array_equal(after[:, :6], affs[:, :6])
    assert np.array_equal(after_lsds[:, :6], lsds[:, :6])
    for z in (6, 7, 8):
        assert not np.array_equal(after[:, z], affs[:, z])

    # a ROI: its own offset and shape, the same values (its tiles start an even number
    # of voxels from the whole volume's, on the same pooling grid: the same computation)
    roi = Roi((80, 8, 16), (200, 40, 48))
    part = predict_sections(checkpoint, config, stack, "volumes/raw", tmp_path / "part.zarr",
                            roi, device="cpu")  # fmt: skip
    cropped = open_ds(part.affs)
    assert cropped.shape == (4, 5, 10, 12) and cropped.roi == roi
    values = cropped.to_ndarray(roi)
    assert np.abs(values.astype(int) - affs[:, 2:7, 2:12, 4:16]).max() <= 1
    with pytest.raises(ConnectoError, match="not on the .* voxel grid"):
        predict_sections(checkpoint, config, stack, "volumes/raw", tmp_path / "bad.zarr",
                         Roi((10, 0, 0), (40, 40, 40)), device="cpu")  # fmt: skip
