"""The 2D->3D task: the synthetic gunpowder source and target, its config, and short
trainings through the real driver and the `connecto train` command."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from connecto.config import WorkerConfig, write_config
from connecto.experiment import TrainSetup
from connecto.tasks import load_train_config
from connecto.tasks.affinities_from_2d.config import TrainConfig
from connecto.tasks.affinities_from_2d.pipeline import (
    AFFS_WEIGHTS,
    GT_AFFS,
    LABELS,
    STACK,
    batch_request,
    data_pipeline,
)
from connecto.train import train
from tests.conftest import run_connecto
from tests.tasks.affinities_from_2d.test_synthetic import exact_affinities

# a tiny network (16 x 36 x 36 voxels in, 4 x 20 x 20 out) on small neurites, with
# short-range input channels that such a small crop can use
TINY = {
    "input_shape": (16, 36, 36), "downsample_factors": [(1, 2, 2)], "fmaps": 4,
    "fmap_inc_factor": 2, "neurite_diameter": (80.0, 160.0), "seed": 1,
    "input_offsets": [(0, 1, 0), (0, 0, 1), (0, 4, 0), (0, 0, 4)], "lsd_sigma": 40.0,
}  # fmt: skip
EXACT = {
    "split_rate": 0, "merge_rate": 0, "shift_rate": 0, "boundary_width": (0, 0),
    "blur_sigma": 0, "noise_std": 0, "contrast": 0, "brightness": 0, "blob_strength": 0,
    "missing_rate": 0, "section_percentiles": None,
}  # fmt: skip


def _batch(config: TrainConfig, request: gp.BatchRequest) -> gp.Batch:
    pipeline = data_pipeline(config)
    with gp.build(pipeline):
        return pipeline.request_batch(request)


def test_batches_hold_the_stack_and_3d_affinities_of_one_label_volume():
    config = TrainConfig(**{**TINY, **EXACT, "input_offsets": [(0, 1, 0), (0, 0, 2)]},
                         grow_boundary=0)  # fmt: skip
    assert config.in_channels == 2 + 6 and config.network_output_shape == (4, 20, 20)
    request = batch_request(config, predictions=False)
    request[LABELS].roi = request[STACK].roi  # the labels under the whole stack
    batch = _batch(config, request)
    stack, volume = batch[STACK].data[0], batch[LABELS].data[0]
    assert stack.shape == (8, 16, 36, 36) and stack.dtype == np.float32
    assert 0 <= stack.min() and stack.max() <= 1
    inner = exact_affinities(volume, [(0, 1, 0), (0, 0, 2)])
    # the source simulates beyond the stack: its last rows hold true affinities too
    edge_free = (slice(None), slice(None), slice(0, -1), slice(0, -2))
    np.testing.assert_array_equal(stack[:2][edge_free], inner[edge_free])
    assert stack[0, :, -1].mean() > 0.5  # not the volume's edge (all 0)
    # the target: 3D affinities of the same labels in the output region
    affs = batch[GT_AFFS].data[0]
    assert affs.shape == (3, 4, 20, 20)
    full = exact_affinities(volume, [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    output = request[GT_AFFS].roi.offset / gp.Coordinate(config.voxel_size)
    crop = tuple(slice(o, o + s) for o, s in zip(output, (4, 20, 20), strict=True))
    np.testing.assert_array_equal(affs, full[(slice(None), *crop)])
    weights = batch[AFFS_WEIGHTS].data[0]
    # BalanceLabels: both classes weigh the same in total
    assert np.sum(weights[affs == 1]) == pytest.approx(np.sum(weights[affs == 0]), rel=1e-4)


def test_seeded_requests_repeat_and_unseeded_ones_differ():
    config = TrainConfig(**TINY)
    seeded = []
    for _ in range(2):
        request = gp.BatchRequest(random_seed=5)
        for key, spec in batch_request(config, predictions=False).items():
            request[key] = spec
        seeded.append(_batch(config, request))
    assert np.array_equal(seeded[0][STACK].data, seeded[1][STACK].data)
    pipeline = data_pipeline(config)
    with gp.build(pipeline):
        first, second = (pipeline.request_batch(batch_request(config, predictions=False))
                         for _ in range(2))  # fmt: skip
    assert not np.array_equal(first[STACK].data, second[STACK].data)


def test_config_refuses_offsets_across_sections():
    with pytest.raises(ValueError, match=r"input_offsets: \[1, 0, 0\] is not in-plane"):
        TrainConfig(input_offsets=[(1, 0, 0)])
    with pytest.raises(ValueError, match=r"neurite_diameter \[300.0, 100.0\]: the minimum"):
        TrainConfig(neurite_diameter=(300.0, 100.0))
    with pytest.raises(ValueError, match="does not divide"):
        TrainConfig(input_shape=(32, 91, 92))
    assert TrainConfig().in_channels == 12 and TrainConfig(input_lsds=False).in_channels == 6


def _setup(base: Path, **values: object) -> TrainSetup:
    """A train setup as `prepare-training` would write it (the task has no template yet)."""
    setup = TrainSetup(base, "twod", 0)
    setup.path.mkdir(parents=True)
    write_config(setup.path / "train_config.toml", TrainConfig(**{**TINY, **values}))
    write_config(setup.path / "worker_config.toml",
                 WorkerConfig(num_cpus=2, num_gpus=0, num_cache_workers=1))  # fmt: skip
    return setup


def _scalars(setup: TrainSetup, tag: str) -> list[float]:
    events = EventAccumulator(str(setup.log_dir))
    events.Reload()
    return [s.value for s in events.Scalars(tag)]


def test_training_on_synthetic_data_lowers_the_loss(tmp_path: Path, tracking_db: str):
    setup = _setup(tmp_path, learning_rate=3e-3, log_every=10, save_every=1000,
                   snapshot_every=100)  # fmt: skip
    assert load_train_config(setup.path / "train_config.toml").task == "affinities-from-2d"
    result = train(setup, 100, progress=False)
    assert (result.iteration, result.state) == (100, "finished")
    assert setup.checkpoints() == [100]
    state = torch.load(setup.checkpoint(100), weights_only=True)
    assert state["iteration"] == 100 and "aff_head.weight" in state["model_state_dict"]
    loss = _scalars(setup, "loss")
    print("LOSS", loss)
    assert len(loss) == 10 and np.mean(loss[-3:]) < 0.8 * loss[0], loss
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_100.zarr"), mode="r")
    assert snapshot["stack"].shape == (1, 10, 16, 36, 36)
    assert snapshot["pred_affs"].shape == snapshot["gt_affs"].shape == (1, 3, 4, 20, 20)
    assert snapshot["pred_affs"].attrs["voxel_size"] == [40, 8, 8]


def test_connecto_train_runs_the_task(tmp_path: Path, tracking_db: str):
    setup = _setup(tmp_path, save_every=2, snapshot_every=1000, input_lsds=False)
    done = run_connecto("train", "3", cwd=setup.path, env={"CONNECTO_TRACKING_DB": tracking_db})
    assert done.returncode == 0, done.stderr
    assert setup.checkpoints() == [2, 3]
    resumed = run_connecto("train", "4", cwd=setup.path,
                           env={"CONNECTO_TRACKING_DB": tracking_db})  # fmt: skip
    assert resumed.returncode == 0 and "from 3" in resumed.stdout, resumed.stderr
    assert setup.checkpoints() == [2, 3, 4]
