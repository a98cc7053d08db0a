"""A prepared synapse-contrastive train setup for the embedding, map and probe tests:
synthetic synapses split by skeleton, and an untrained width-8 model saved as
`model_checkpoint_0` (no training needed: the tests check the plumbing, not the quality)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from pymongo import MongoClient

from connecto.data.synthetic import synthesize_synapses
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks.synapse_contrastive.model import ContrastiveModel

CLASSES = ["gaba", "acetylcholine", "glutamate"]
PARTS = {0: "train", 1: "validation", 2: "test"}
SYNAPSES = 60
WIDTH = 8  # features: 8 * width


@dataclass(frozen=True)
class Setup:
    train: TrainSetup
    data_db: str
    tracking_db: str
    parts: dict[str, set[int]]  # split part -> synapse ids

    @property
    def embeddings_db(self) -> str:
        return f"{self.data_db}_embeddings"

    @property
    def all_ids(self) -> set[int]:
        return set().union(*self.parts.values())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("embed")
    data_db = f"test_embed_{uuid.uuid4().hex[:8]}"
    tracking_db = f"tracking_{uuid.uuid4().hex[:8]}"
    db = mongo_client[data_db]
    synthesize_synapses(base / "raw.zarr", db, n_synapses=SYNAPSES, classes=CLASSES,
                        synapses_per_skeleton=3, progress=False)  # fmt: skip
    parts: dict[str, set[int]] = {part: set() for part in PARTS.values()}
    for doc in db["synapses"].find({}, {"synapse_id": 1, "skeleton_id": 1}):
        part = PARTS[doc["skeleton_id"] % 3]
        db["synapses"].update_one({"_id": doc["_id"]}, {"$set": {"splits.skeleton": part}})
        parts[part].add(doc["synapse_id"])
    overrides = [
        "input_shape=[4,24,24]", f"width={WIDTH}", "batch_size=8", f"db_name_data={data_db}",
        f"raw_container={base / 'raw.zarr'}", "raw_dataset=raw", "worker.num_cpus=2",
    ]  # fmt: skip
    train, config, _ = prepare_training(
        base, "clr", 0, task="synapse-contrastive", overrides=overrides
    )
    torch.manual_seed(0)
    model = ContrastiveModel(config.voxel_size, width=WIDTH)  # type: ignore[attr-defined]
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": {}, "iteration": 0}
    torch.save(state, train.checkpoint(0))
    yield Setup(train, data_db, tracking_db, parts)
    for name in (data_db, f"{data_db}_embeddings", tracking_db):
        mongo_client.drop_database(name)


@pytest.fixture(autouse=True)
def tracking(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call tracks into the module's own tracking database."""
    monkeypatch.setenv("CONNECTO_TRACKING_DB", setup.tracking_db)
