"""Contrastive pretraining through the generic driver on the synthetic synapses: a short
run writes checkpoints, tensorboard scalars, a snapshot of view pairs and its run
document, resumes, loads back with `load_contrastive_model`; and a synapse classifier
prepared with `--init-from` starts from the pretrained encoder's weights."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from pymongo import MongoClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from cli.main import app
from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.synthetic import synthesize_synapses
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks.synapse_classification.pipeline import task_parts as classifier_parts
from connecto.tasks.synapse_contrastive.crops import crop_source
from connecto.tasks.synapse_contrastive.model import ContrastiveModel, load_contrastive_model
from connecto.train import train

CLASSES = ["gaba", "acetylcholine"]
SYNAPSES = 16
WIDTH = 8  # encoder features: 8 * width


@dataclass(frozen=True)
class Synthetic:
    container: Path
    db_name: str


@pytest.fixture(scope="module")
def synthetic(
    tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient
) -> Iterator[Synthetic]:
    """16 synapses, split by skeleton into `skel` (train: skeleton ids odd)."""
    name = f"test_clr_{uuid.uuid4().hex[:8]}"
    container = tmp_path_factory.mktemp("clr") / "synapses.zarr"
    db = mongo_client[name]
    synthesize_synapses(container, db, SYNAPSES, CLASSES, seed=0, synapses_per_skeleton=2,
                        progress=False)  # fmt: skip
    for doc in db["synapses"].find({}, {"skeleton_id": 1}):
        part = "train" if doc["skeleton_id"] % 2 else "test"
        db["synapses"].update_one({"_id": doc["_id"]}, {"$set": {"splits.skel": part}})
    yield Synthetic(container, name)
    mongo_client.drop_database(name)


def contrastive_setup(base: Path, data: Synthetic, **changes: object) -> TrainSetup:
    values = {
        "db_name_data": f'"{data.db_name}"', "raw_container": f'"{data.container}"',
        "raw_dataset": '"raw"', "input_shape": "[6, 24, 24]", "width": WIDTH,
        "batch_size": 4, "seed": 1, "save_every": 3, "snapshot_every": 3, "log_every": 1,
        "worker.num_cpus": 2, "worker.num_cache_workers": 1, **changes,
    }  # fmt: skip
    overrides = [f"{key}={value}" for key, value in values.items()]
    setup, _, _ = prepare_training(
        base, "clr", 0, template="synapse-contrastive", overrides=overrides
    )
    return setup


def test_training_checkpoints_snapshots_resumes_and_loads(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    setup = contrastive_setup(tmp_path, synthetic)
    result = train(setup, 3, progress=False)
    assert (result.start_iteration, result.iteration, result.state) == (0, 3, "finished")
    assert setup.checkpoints() == [3] and np.isfinite(result.last_loss)
    events = EventAccumulator(str(setup.log_dir))
    events.Reload()
    assert [s.step for s in events.Scalars("loss")] == [1, 2, 3]
    accuracy = [s.value for s in events.Scalars("positive_accuracy")]
    assert all(0 <= a <= 1 for a in accuracy)
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_3.zarr"), mode="r")
    first, second = snapshot["view_1"][:], snapshot["view_2"][:]
    assert first.shape == second.shape == (4, 6, 24, 24)
    assert not np.allclose(first, second)  # two augmented views
    assert snapshot["projections"].shape == (8, 128)
    assert snapshot["pairs"].dtype == np.uint8 and snapshot["pairs"].ndim == 2
    assert (setup.snapshot_dir / "batch_3_pairs.png").stat().st_size > 0  # viewable as is
    assert set(snapshot["synapse_ids"][:]) <= set(range(1_000_000, 1_000_000 + SYNAPSES))
    run = mongo_client[tracking_db]["runs"].find_one({"setup_dir": str(setup.path)})
    assert run["state"] == "finished" and run["task"] == "synapse-contrastive"

    resumed = train(setup, 5, progress=False)
    assert (resumed.start_iteration, resumed.iteration) == (3, 5)
    assert setup.checkpoints() == [3, 5]

    model, config = load_contrastive_model(setup.checkpoint(5))
    assert isinstance(model, ContrastiveModel) and not model.training
    assert config.width == WIDTH and tuple(config.input_shape) == (6, 24, 24)
    saved = torch.load(setup.checkpoint(5), weights_only=True)["model_state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    crops = crop_source(config)
    assert len(crops) == SYNAPSES  # no split: every synapse
    ids, batch = next(crops.batches(5))
    assert batch.shape == (5, 6, 24, 24) and -1 <= batch.min() and batch.max() <= 1
    with torch.no_grad():
        features = model.features(torch.from_numpy(batch))
        projections = model(torch.from_numpy(batch))
    assert features.shape == (5, 8 * WIDTH) and projections.shape == (5, 128)
    chosen = crop_source(config, [int(ids[3]), int(ids[1])])
    assert chosen.synapse_ids.tolist() == sorted([int(ids[3]), int(ids[1])])
    np.testing.assert_array_equal(chosen.crop(0), batch[1])


def test_split_part_selects_its_synapses(synthetic: Synthetic, tmp_path: Path) -> None:
    setup = contrastive_setup(tmp_path, synthetic, split_name='"skel"', split_part='"train"')
    crops = crop_source(setup.train_config())
    assert 0 < len(crops) < SYNAPSES
    with pytest.raises(ConnectoError, match="no split 'other'"):
        crop_source(setup.train_config().model_copy(update={"split_name": "other"}))


def test_classifier_init_from_loads_the_pretrained_encoder(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str
) -> None:
    pretrained = contrastive_setup(tmp_path / "pre", synthetic)
    torch.manual_seed(0)
    contrastive = ContrastiveModel((40, 4, 4), width=WIDTH)
    state = {"model_state_dict": contrastive.state_dict(), "optimizer_state_dict": {}}
    torch.save(state, pretrained.checkpoint(7))

    args = [
        "prepare-training", "-d", str(tmp_path / "cls"), "-e", "nt", "-t", "0",
        "--init-from", str(pretrained.checkpoint(7)),
        "--set", f'db_name_data="{synthetic.db_name}"', "--set", 'split_name="skel"',
        "--set", f'raw_container="{synthetic.container}"', "--set", 'raw_dataset="raw"',
        "--set", f"synapse_types={CLASSES}".replace("'", '"'),
        "--set", "input_shape=[6,24,24]", "--set", "batch_size=2",
    ]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    classifier = TrainSetup(tmp_path / "cls", "nt", 0)
    config = classifier.train_config()
    assert config.network == "ResNet18" and config.resnet_width == WIDTH
    assert config.init_from == str(pretrained.checkpoint(7).resolve())

    worker = WorkerConfig(num_cpus=2, num_cache_workers=1)
    parts = classifier_parts(config, worker, "train_config")
    loaded = parts.model.encoder.state_dict()
    expected = contrastive.encoder.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)

    # not a contrastive checkpoint: the classifier's own weights
    torch.save({"model_state_dict": parts.model.state_dict()}, tmp_path / "classifier.pt")
    other = config.model_copy(update={"init_from": str(tmp_path / "classifier.pt")})
    with pytest.raises(ConnectoError, match="init_from.*not a synapse-contrastive checkpoint"):
        classifier_parts(other, worker, "train_config")
    # another width does not fit
    narrow = config.model_copy(update={"resnet_width": 4})
    with pytest.raises(ConnectoError, match="does not fit"):
        classifier_parts(narrow, worker, "train_config")
    # a classifier checkpoint's setup is refused by prepare-training
    with pytest.raises(ConnectoError, match="--init-from"):
        prepare_training(tmp_path / "cls", "nt", 1, init_from=tmp_path / "classifier.pt")
