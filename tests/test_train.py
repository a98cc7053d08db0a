"""Synapse classification training on the synthetic benchmark: it learns, resumes,
stops cleanly on SIGTERM, snapshots, and rejects bad configs before training."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import tomli_w
import torch
import zarr
from pymongo import MongoClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from connecto import ConnectoError
from connecto.config import read_toml
from connecto.data.synthetic import synthesize_synapses
from connecto.data.viewer import plan_layers
from connecto.data.volumes import open_raw
from connecto.experiment import TrainSetup, prepare_training
from connecto.splits import make_split
from connecto.tasks.synapse_classification.pipeline import LABEL, RAW, batch_request, data_pipeline
from connecto.train import train
from tests.conftest import CONNECTO, run_connecto, sigkill_when_ready, survivors

CLASSES = ["gaba", "acetylcholine", "glutamate"]
INPUT_SHAPE = (8, 32, 32)


@dataclass(frozen=True)
class Synthetic:
    container: Path
    db_name: str


@pytest.fixture(scope="module")
def synthetic(
    tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient
) -> Iterator[Synthetic]:
    """240 synapses in three classes, split by skeleton into `skel`."""
    name = f"test_synth_{uuid.uuid4().hex[:8]}"
    container = tmp_path_factory.mktemp("synthetic") / "synapses.zarr"
    synthesize_synapses(container, mongo_client[name], 240, CLASSES, seed=0, progress=False)
    make_split(mongo_client[name], "skeleton", "skel", classes=CLASSES, seed=0)
    yield Synthetic(container, name)
    mongo_client.drop_database(name)


def small_setup(base: Path, data: Synthetic, train_id: int = 0, **changes: object) -> TrainSetup:
    """A small, fast VGG on the synthetic data (2 levels, 4 fmaps, 64-wide classifier)."""
    values = {
        "db_name_data": data.db_name, "split_name": "skel",
        "raw_container": str(data.container), "raw_dataset": "raw",
        "synapse_types": CLASSES, "input_shape": list(INPUT_SHAPE), "fmaps": 4,
        "fmap_inc": [2, 2], "n_convolutions": [2, 2], "downsample_factors": [[1, 2, 2], [2, 2, 2]],
        "classifier_width": 64, "batch_size": 4, "learning_rate": 0.001, "seed": 1,
        "worker.num_cpus": 2, "worker.num_cache_workers": 1, **changes,
    }  # fmt: skip
    overrides = [f"{k}={_toml(v)}" for k, v in values.items()]
    setup, _, _ = prepare_training(base, "synth", train_id, overrides=overrides)
    return setup


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def scalars(setup: TrainSetup, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(setup.log_dir))
    events.Reload()
    return [(s.step, s.value) for s in events.Scalars(tag)]


def run_document(client: MongoClient, tracking_db: str, setup: TrainSetup) -> dict:
    return client[tracking_db]["runs"].find_one({"setup_dir": str(setup.path)}) or {}


def test_short_training_learns(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    setup = small_setup(
        tmp_path, synthetic, augment=False, log_every=25, save_every=1000, snapshot_every=1000
    )
    result = train(setup, 400, progress=False)
    assert (result.start_iteration, result.iteration, result.state) == (0, 400, "finished")
    assert setup.checkpoints() == [400]  # the final checkpoint, although save_every is 1000
    loss = [v for _, v in scalars(setup, "loss")]
    accuracy = [v for _, v in scalars(setup, "accuracy")]
    assert [s for s, _ in scalars(setup, "loss")] == list(range(25, 401, 25))
    assert np.mean(loss[-4:]) < 0.85 * loss[0], loss
    # chance is 1/3: 0.5 is 7 sd above it over these 400 samples (the last 100 batches);
    # runs reach 0.65-0.8 here, while 250 iterations left some runs at chance's edge
    assert np.mean(accuracy[-4:]) > 0.5, accuracy
    assert scalars(setup, "learning_rate")[-1][1] == pytest.approx(0.001)
    assert scalars(setup, "iterations_per_second")[-1][1] > 0
    run = run_document(mongo_client, tracking_db, setup)
    assert run["state"] == "finished" and run["iteration"] == 400
    assert run["last_loss"] == pytest.approx(result.last_loss)
    assert run["device"] == "cpu" and run["config"]["classifier_width"] == 64
    assert run["host"] and "git_commit" in run and run["started"] <= run["updated"]


def test_cli_sigterm_checkpoints_then_rerun_resumes(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    """`connecto train` stopped by SIGTERM leaves a checkpoint at its iteration and a run
    that is not `running`; a rerun continues from there with continuous iterations."""
    setup = small_setup(tmp_path, synthetic, log_every=1, save_every=4, snapshot_every=5)
    process = subprocess.Popen(
        [*CONNECTO, "train", "100000"], cwd=setup.path, env=dict(os.environ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while run_document(mongo_client, tracking_db, setup).get("iteration", 0) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    run = run_document(mongo_client, tracking_db, setup)
    stopped = run["iteration"]
    assert run["state"] == "interrupted" and run["stopped_by"] == "SIGTERM" and stopped >= 3
    assert setup.checkpoints()[-1] == stopped
    assert setup.checkpoints() == [*range(4, stopped, 4), stopped]

    target = stopped + 8
    resumed = subprocess.run(
        [*CONNECTO, "train", str(target), "-d", setup.base, "-e", "synth", "-t", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"from {stopped}" in resumed.stdout
    after = [i for i in range(4, target, 4) if i > stopped]
    assert setup.checkpoints() == [*range(4, stopped, 4), stopped, *after, target]
    for iteration in setup.checkpoints():
        saved = torch.load(setup.checkpoint(iteration), weights_only=True)
        assert saved["iteration"] == iteration
        assert {"model_state_dict", "optimizer_state_dict"} <= set(saved)
    assert [s for s, _ in scalars(setup, "loss")] == list(range(1, target + 1))  # no restart
    run = run_document(mongo_client, tracking_db, setup)
    assert run["state"] == "finished" and run["iteration"] == target
    assert sorted(int(p.stem.split("_")[1]) for p in setup.snapshot_dir.iterdir()) == list(
        range(5, target + 1, 5)
    )
    last = max(range(5, target + 1, 5))
    snapshot = zarr.open_group(str(setup.snapshot_dir / f"batch_{last}.zarr"), mode="r")
    assert snapshot["raw"].shape == (4, *INPUT_SHAPE)
    assert snapshot["raw"].attrs["voxel_size"] == [40, 4, 4]
    assert set(snapshot["label"][:]) <= {0, 1, 2}
    np.testing.assert_allclose(snapshot["prediction"][:].sum(axis=1), 1.0, rtol=1e-5)
    assert snapshot["prediction"].attrs["class_names"] == CLASSES
    layers, skipped = plan_layers(setup.snapshot_dir / f"batch_{last}.zarr")
    assert [(layer.name, layer.kind, layer.shape) for layer in layers] == [
        ("raw", "image", (4, *INPUT_SHAPE))
    ]
    assert skipped == ["label", "prediction"]
    assert train(setup, target, progress=False).start_iteration == target  # nothing left


def test_sigkill_takes_the_cache_workers_along_and_the_run_reads_interrupted(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    """`connecto train` killed outright: gunpowder's PreCache watchdog and its two cache
    workers end with it, and the run it could not mark reads `interrupted`."""
    setup = small_setup(tmp_path, synthetic, log_every=1, **{"worker.num_cache_workers": 2})
    process = subprocess.Popen(
        [*CONNECTO, "train", "100000"], cwd=setup.path, env=dict(os.environ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children = sigkill_when_ready(
        process,
        lambda parent: (
            run_document(mongo_client, tracking_db, setup).get("iteration", 0) >= 2
            and len(parent.children(recursive=True)) >= 3
        ),  # the watchdog and two workers
        "training",
    )
    alive = survivors(children, timeout_s=5)
    assert not alive, f"{len(alive)} of {len(children)} worker processes outlived the parent"

    assert run_document(mongo_client, tracking_db, setup)["state"] == "running"  # as left
    listed = run_connecto("runs", env={"COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    [row] = [line for line in lines if "synth" in line and "runs of" not in line]  # not the title
    assert "interrupted" in row and "running" not in row, listed.stdout
    assert run_document(mongo_client, tracking_db, setup)["state"] == "interrupted"


def _edit_config(setup: TrainSetup, key: str, value: object) -> None:
    """Change one key of train_config.toml behind the validation of prepare-training."""
    path = setup.path / "train_config.toml"
    path.write_text(tomli_w.dumps({**read_toml(path), key: value}))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("synapse_types", ["gaba", "dopamine"], "key 'synapse_types'.*'dopamine'"),
        ("input_shape", [8, 30, 32], "input_shape \\(8, 30, 32\\) is not divisible"),
        ("raw_dataset", "volumes/missing", "no dataset 'volumes/missing' \\(raw_dataset\\)"),
        ("split_name", "nosuchsplit", "no split 'nosuchsplit'"),
    ],
)
def test_bad_configs_fail_before_training(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient,
    key: str, value: object, message: str,
) -> None:  # fmt: skip
    setup = small_setup(tmp_path, synthetic)
    _edit_config(setup, key, value)
    with pytest.raises(ConnectoError, match=message):
        train(setup, 10, progress=False)
    assert setup.checkpoints() == [] and not setup.log_dir.exists()
    assert run_document(mongo_client, tracking_db, setup).get("state") != "running"


def test_augmented_crops_stay_on_the_synapse(synthetic: Synthetic) -> None:
    """Deformation must not move the crop off its location: the darkness at the centre of
    one synapse per class is the same with and without augmentation."""
    from connecto.db.synapses import synapses_by_class

    client = MongoClient(os.environ["CONNECTO_MONGO_URI"])
    grouped = synapses_by_class(client[synthetic.db_name], "skel", "train", CLASSES)
    locations = {k: [(v[0]["z"], v[0]["y"], v[0]["x"])] for k, v in grouped.items()}
    raw = open_raw(synthetic.container, "raw")
    centre = (slice(None), slice(2, 6), slice(10, 22), slice(10, 22))
    means = {}
    for augment in (False, True):
        pipeline = data_pipeline(raw, locations, CLASSES, 8, augment=augment)
        with gp.build(pipeline):
            batches = [
                pipeline.request_batch(batch_request(INPUT_SHAPE, (40, 4, 4))) for _ in range(8)
            ]
        data = np.concatenate([b[RAW].data for b in batches])
        labels = np.concatenate([b[LABEL].data for b in batches])
        assert data.dtype == np.float32 and -1 <= data.min() and data.max() <= 1
        means[augment] = [float(data[labels == c][centre].mean()) for c in range(3)]
    np.testing.assert_allclose(means[True], means[False], atol=0.15)  # off-centre: ~0.5
