"""Per-synapse prediction collections and the tracking of prediction runs.

Predictions of one predict setup live in database `<data_db>_predictions`, collection
`<split_name>_<experiment>_t<train_id>_p<predict_id>`, one document per synapse:

    {"synapse_id": 12, "skeleton_id": 3, "label": "gaba" | None,
     "probabilities": {"gaba": 0.9, "acetylcholine": 0.1}, "predicted": "gaba",
     "iteration": 100000}

`synapse_id` has a unique index, so a resumed run can never write a synapse twice: writes
are unordered bulk inserts whose duplicate-key errors are expected and ignored.

The name does not say which base directory a setup lives in, so two setups can name the
same collection. Each collection belongs to the predict setup whose tracking document
first names it (`owner`: setup path, checkpoint, config hash); any other is refused.
"""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from connecto import ConnectoError
from connecto.db.tracking import PREDICTIONS, ensure_indexes, git_commit, now, settle_vanished
from connecto.names import check_name, predictions_database_name

DUPLICATE_KEY = 11000
CollectionState = Literal["empty", "incomplete", "complete"]


class PredictConfig(Protocol):
    """What of a predict config names and identifies its collection."""

    db_name_data: str
    split_name: str
    experiment: str
    train_number: int
    predict_number: int
    train_checkpoint: str

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


def prediction_collection_name(
    split_name: str, experiment: str, train_id: int, predict_id: int
) -> str:
    """synister's name: `<split_name>_<experiment>_t<train_id>_p<predict_id>`."""
    check_name("split name", split_name)
    check_name("experiment name", experiment)
    if train_id < 0 or predict_id < 0:
        raise ConnectoError(f"train id {train_id} and predict id {predict_id} must be >= 0")
    return f"{split_name}_{experiment}_t{train_id}_p{predict_id}"


def open_prediction_collection(db: Database, name: str) -> Collection:
    """The collection, with its unique `synapse_id` index (idempotent)."""
    collection = db[name]
    collection.create_index([("synapse_id", ASCENDING)], unique=True)
    return collection


def prediction_document(
    synapse: dict[str, Any],
    probabilities: Sequence[float],
    class_names: Sequence[str],
    iteration: int,
) -> dict[str, Any]:
    """One synapse's prediction; the predicted class is the most probable one (the first
    in class order on an exact tie, as numpy's argmax)."""
    if len(probabilities) != len(class_names):
        raise ConnectoError(
            f"synapse {synapse['synapse_id']}: {len(probabilities)} probabilities for "
            f"{len(class_names)} classes {list(class_names)}"
        )
    values = [float(p) for p in probabilities]
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    return {
        "synapse_id": int(synapse["synapse_id"]),
        "skeleton_id": int(synapse["skeleton_id"]),
        "label": synapse.get("label"),
        "probabilities": dict(zip(class_names, values, strict=True)),
        "predicted": class_names[best],
        "iteration": int(iteration),
    }


def present_synapse_ids(collection: Collection) -> set[int]:
    return {doc["synapse_id"] for doc in collection.find({}, {"_id": 0, "synapse_id": 1})}


def missing_synapse_ids(collection: Collection, expected: Iterable[int]) -> list[int]:
    """Expected synapse ids without a document yet, in the order given."""
    present = present_synapse_ids(collection)
    return [i for i in expected if i not in present]


def collection_state(collection: Collection, expected: Iterable[int]) -> CollectionState:
    expected_ids = set(expected)
    present = present_synapse_ids(collection)
    if not present:
        return "empty"
    return "complete" if expected_ids <= present else "incomplete"


def prepare_collection(
    db: Database, name: str, expected: Sequence[int], overwrite: bool
) -> tuple[Collection, list[int]]:
    """Open `name` for a prediction run over `expected` synapse ids; returns the collection
    and the ids still to predict. A complete collection is refused unless `overwrite`
    (which drops it); an incomplete one is resumed."""
    if overwrite and name in db.list_collection_names():
        db.drop_collection(name)
    collection = open_prediction_collection(db, name)
    missing = missing_synapse_ids(collection, expected)
    if expected and not missing:
        raise ConnectoError(
            f"{db.name}.{name} already holds predictions for all {len(expected)} synapses; "
            "use --overwrite to predict again"
        )
    return collection, missing


def write_predictions(collection: Collection, documents: list[dict[str, Any]]) -> int:
    """Insert documents unordered; synapses already present (a resumed batch) are skipped.
    Returns how many were new."""
    if not documents:
        return 0
    try:
        return len(collection.insert_many(documents, ordered=False).inserted_ids)
    except BulkWriteError as error:
        details = error.details
        others = [e for e in details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
        if others:
            first = others[0]
            raise ConnectoError(
                f"{collection.full_name}: {len(others)} prediction(s) not written: "
                f"{first.get('errmsg', first)}"
            ) from None
        return int(details.get("nInserted", 0))


def read_predictions(collection: Collection) -> list[dict[str, Any]]:
    return list(collection.find({}, {"_id": 0}))


# ---------------------------------------------------------------- run tracking


def track_prediction_run(db: Database, setup_dir: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Create or update the `predictions` tracking document of a predict setup."""
    ensure_indexes(db)
    return db[PREDICTIONS].find_one_and_update(
        {"setup_dir": setup_dir},
        {
            "$setOnInsert": {"created": now()},
            "$set": {
                **fields,
                "updated": now(),
                "host": socket.gethostname(),
                "git_commit": git_commit(),
            },
        },
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )


def list_prediction_runs(db: Database, experiment: str | None = None) -> list[dict[str, Any]]:
    query = {"experiment": experiment} if experiment else {}
    found = db[PREDICTIONS].find(query, sort=[("train_id", 1), ("predict_id", 1)])
    return settle_vanished(db[PREDICTIONS], list(found))


def prediction_target(config: PredictConfig) -> tuple[str, str]:
    """(database, collection) where a predict setup's predictions go."""
    return predictions_database_name(config.db_name_data), prediction_collection_name(
        config.split_name, config.experiment, config.train_number, config.predict_number
    )


def collection_owner(setup_dir: Path, config: PredictConfig) -> dict[str, str]:
    """What identifies the predict setup a collection belongs to."""
    dumped = json.dumps(config.model_dump(mode="json"), sort_keys=True)
    return {
        "setup": str(Path(setup_dir).resolve()),
        "checkpoint": str(Path(config.train_checkpoint).resolve()),
        "config_hash": hashlib.sha256(dumped.encode()).hexdigest(),
    }


def refuse_foreign_collection(db: Database, setup_dir: Path, config: PredictConfig) -> None:
    """Raise unless the setup's collection is unclaimed or already its own: resuming or
    overwriting another setup's collection would mix or destroy that setup's results."""
    database, name = prediction_target(config)
    setup = str(Path(setup_dir).resolve())
    for other in db[PREDICTIONS].find({"predictions_db": database, "collection": name}):
        owner = other.get("owner") or {}
        owner_setup = owner.get("setup") or str(Path(other["setup_dir"]).resolve())
        if owner_setup != setup:
            raise ConnectoError(
                f"{database}.{name} belongs to predict setup {owner_setup} "
                f"(checkpoint {owner.get('checkpoint', other.get('checkpoint'))}), not to "
                f"{setup}: setups with the same experiment name and train id under different "
                "base directories share collection names; rename one experiment"
            )
