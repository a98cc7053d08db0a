"""Prediction collections on the real server: naming, unique ids, overwrite guard, resume."""

from __future__ import annotations

import pytest
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.db.predictions import (
    collection_state,
    missing_synapse_ids,
    open_prediction_collection,
    prediction_collection_name,
    prediction_document,
    prepare_collection,
    read_predictions,
    track_prediction_run,
    write_predictions,
)
from connecto.db.tracking import PREDICTIONS
from connecto.names import predictions_database_name

CLASSES = ["gaba", "acetylcholine", "glutamate"]


def synapse(i: int) -> dict:
    return {"synapse_id": i, "skeleton_id": i // 3, "label": CLASSES[i % 3]}


def docs(ids: range | list[int], iteration: int = 10) -> list[dict]:
    return [prediction_document(synapse(i), [0.2, 0.5, 0.3], CLASSES, iteration) for i in ids]


def test_collection_naming() -> None:
    assert prediction_collection_name("skeleton", "nt", 0, 3) == "skeleton_nt_t0_p3"
    assert predictions_database_name("synister_v3") == "synister_v3_predictions"
    with pytest.raises(ConnectoError, match="split name"):
        prediction_collection_name("", "nt", 0, 0)
    with pytest.raises(ConnectoError, match="must be >= 0"):
        prediction_collection_name("skeleton", "nt", -1, 0)


def test_prediction_document_names_classes_and_breaks_ties_by_class_order() -> None:
    doc = prediction_document(synapse(4), [0.4, 0.4, 0.2], CLASSES, 500)
    assert doc["probabilities"] == {"gaba": 0.4, "acetylcholine": 0.4, "glutamate": 0.2}
    assert doc["predicted"] == "gaba"
    assert (doc["synapse_id"], doc["skeleton_id"], doc["iteration"]) == (4, 1, 500)
    assert prediction_document(synapse(1), [0.1, 0.2, 0.7], CLASSES, 1)["predicted"] == "glutamate"
    with pytest.raises(ConnectoError, match="2 probabilities for 3 classes"):
        prediction_document(synapse(1), [0.5, 0.5], CLASSES, 1)


def test_unique_index_and_duplicate_tolerant_writes(
    mongo_client: MongoClient, db_name: str
) -> None:
    db = mongo_client[db_name]
    collection = open_prediction_collection(db, "skeleton_nt_t0_p0")
    assert write_predictions(collection, docs(range(5))) == 5
    # a resumed batch overlapping what is there: only the new ones land, no duplicate
    assert write_predictions(collection, docs(range(3, 8))) == 3
    assert collection.count_documents({}) == 8
    assert sorted(d["synapse_id"] for d in read_predictions(collection)) == list(range(8))
    assert write_predictions(collection, []) == 0


def test_overwrite_guard_and_resume(mongo_client: MongoClient, db_name: str) -> None:
    db = mongo_client[db_name]
    name = "validation_nt_t0_p1"
    expected = list(range(10))
    collection, missing = prepare_collection(db, name, expected, overwrite=False)
    assert missing == expected and collection_state(collection, expected) == "empty"

    write_predictions(collection, docs(range(4)))  # a run killed part-way
    assert collection_state(collection, expected) == "incomplete"
    collection, missing = prepare_collection(db, name, expected, overwrite=False)
    assert missing == list(range(4, 10))
    assert missing_synapse_ids(collection, expected) == missing

    write_predictions(collection, docs(missing))
    assert collection_state(collection, expected) == "complete"
    with pytest.raises(ConnectoError, match="already holds predictions for all 10.*--overwrite"):
        prepare_collection(db, name, expected, overwrite=False)
    assert collection.count_documents({}) == 10  # the refusal changed nothing

    collection, missing = prepare_collection(db, name, expected, overwrite=True)
    assert missing == expected and collection.count_documents({}) == 0
    # the unique index is back after the drop
    write_predictions(collection, docs([1]))
    assert write_predictions(collection, docs([1])) == 0


def test_prediction_run_tracking(mongo_client: MongoClient, tracking_db: str) -> None:
    db = mongo_client[tracking_db]
    first = track_prediction_run(
        db, "/x/03_predict/setup_t0_p0", {"state": "running", "expected": 7}
    )
    second = track_prediction_run(db, "/x/03_predict/setup_t0_p0", {"state": "done", "written": 7})
    assert first["_id"] == second["_id"]
    assert (second["state"], second["expected"], second["written"]) == ("done", 7, 7)
    assert db[PREDICTIONS].count_documents({}) == 1
