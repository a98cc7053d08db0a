"""Prediction collections on the real server: naming, unique ids, overwrite guard, resume,
synister's layout (its pre-created `{synapse_id, prediction: None}` documents filled in
place, its `prediction` lists written beside ours) and the migration of older documents."""

from __future__ import annotations

import pytest
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.db.predictions import (
    OTHER_CLASS,
    collection_state,
    migrate_prediction_collections,
    missing_synapse_ids,
    open_prediction_collection,
    prediction_collection_name,
    prediction_document,
    prepare_collection,
    present_synapse_ids,
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
    # synister's field: the same numbers as a list in class order
    assert doc["prediction"] == [0.4, 0.4, 0.2]
    assert all(type(p) is float for p in doc["prediction"])
    reordered = prediction_document(synapse(4), [0.1, 0.3, 0.6], CLASSES[::-1], 500)
    assert reordered["prediction"] == [0.1, 0.3, 0.6]
    assert list(reordered["probabilities"]) == CLASSES[::-1]
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


# ---------------------------------------------------------------- synister's layout


def synister_precreate(db, name: str, ids: range | list[int]) -> None:  # noqa: ANN001
    """What synister's `initialize_prediction` leaves: one to-do document per synapse of the
    split part, no index."""
    db[name].insert_many([{"synapse_id": i, "prediction": None} for i in ids])


def synister_done_and_total(collection) -> tuple[int, int]:  # noqa: ANN001
    """synister's `count_predictions`."""
    return collection.count_documents({"prediction": {"$ne": None}}), collection.count_documents({})


def test_synister_precreated_collection_is_filled_in_place(
    mongo_client: MongoClient, db_name: str
) -> None:
    db = mongo_client[f"{db_name}_predictions"]
    name = "skeleton_nt_t0_p10"
    # synister pre-creates every synapse of the part (10); connecto predicts the 6 of its
    # classes
    synister_precreate(db, name, range(10))
    expected = list(range(6))
    assert collection_state(db[name], expected) == "incomplete"
    assert present_synapse_ids(db[name]) == set()
    collection, missing = prepare_collection(db, name, expected, overwrite=False)
    assert missing == expected

    assert write_predictions(collection, docs(range(3))) == 3  # a run killed part-way
    assert collection.count_documents({}) == 10  # filled, not added
    assert collection_state(collection, expected) == "incomplete"
    assert missing_synapse_ids(collection, expected) == [3, 4, 5]
    # resumed: the batch overlaps what was written; only the to-do ones are filled
    assert write_predictions(collection, docs(range(2, 6), iteration=99)) == 3
    assert write_predictions(collection, docs(range(6), iteration=99)) == 0
    assert collection.count_documents({}) == 10
    ids = [d["synapse_id"] for d in collection.find({}, {"synapse_id": 1})]
    assert sorted(ids) == list(range(10))
    assert collection_state(collection, expected) == "complete"
    with pytest.raises(ConnectoError, match="already holds predictions for all 6"):
        prepare_collection(db, name, expected, overwrite=False)

    by_id = {d["synapse_id"]: d for d in collection.find({}, {"_id": 0})}
    for i in range(6):
        assert by_id[i]["prediction"] == [0.2, 0.5, 0.3]
        assert by_id[i]["predicted"] == "acetylcholine" and by_id[i]["label"] == CLASSES[i % 3]
        # a resumed batch never replaced a prediction
        assert by_id[i]["iteration"] == (10 if i < 3 else 99)
    assert all(by_id[i] == {"synapse_id": i, "prediction": None} for i in range(6, 10))
    # synister's own readers: `get_predictions` finds `prediction` on every document
    assert {i: d["prediction"] for i, d in by_id.items()}[0] == [0.2, 0.5, 0.3]
    assert synister_done_and_total(collection) == (6, 10)
    # the null ones are not predictions
    assert sorted(d["synapse_id"] for d in read_predictions(collection)) == expected


def test_done_means_holding_a_prediction(mongo_client: MongoClient, db_name: str) -> None:
    db = mongo_client[f"{db_name}_predictions"]
    collection = open_prediction_collection(db, "skeleton_nt_t0_p0")
    assert collection_state(collection, [1, 2, 3]) == "empty"
    collection.insert_many([
        {"synapse_id": 1, "prediction": None},  # synister, to do
        {"synapse_id": 2, "prediction": [0.1, 0.9, 0.0]},  # synister, done
        docs([3])[0],  # connecto
    ])  # fmt: skip
    old = docs([4])[0]
    del old["prediction"]  # connecto before `prediction`
    collection.insert_one(old)
    assert present_synapse_ids(collection) == {2, 3, 4}
    assert missing_synapse_ids(collection, [1, 2, 3, 4, 5]) == [1, 5]
    assert collection_state(collection, [2, 3, 4]) == "complete"
    assert collection_state(collection, [1, 2, 3, 4]) == "incomplete"


def test_read_synister_documents(mongo_client: MongoClient, db_name: str) -> None:
    """synister's lists get connecto's fields: names from the classes, the true class and
    skeleton from the data database."""
    data = mongo_client[db_name]
    data["skeletons"].insert_many([
        {"skeleton_id": 1, "nt_known": ["gaba"]},
        {"skeleton_id": 2, "nt_known": ["dopamine"]},  # not a predicted class
        {"skeleton_id": 3, "nt_known": []},  # unknown
    ])  # fmt: skip
    data["synapses"].insert_many([
        {"synapse_id": 10, "skeleton_id": 1, "label": None},
        {"synapse_id": 11, "skeleton_id": 2},
        {"synapse_id": 12, "skeleton_id": 3},
        {"synapse_id": 13, "skeleton_id": 3, "label": "glutamate"},  # its own class
    ])  # fmt: skip
    collection = mongo_client[f"{db_name}_predictions"]["skeleton_nt_t0_p7"]
    collection.insert_many([
        {"synapse_id": 10, "prediction": [0.1, 0.2, 0.7]},
        {"synapse_id": 11, "prediction": [0.5, 0.5, 0.0]},  # tie: the first class
        {"synapse_id": 12, "prediction": [0.0, 0.9, 0.1]},
        {"synapse_id": 13, "prediction": [0.3, 0.3, 0.4]},
        {"synapse_id": 14, "prediction": None},  # not predicted: left out
    ])  # fmt: skip
    found = {d["synapse_id"]: d for d in read_predictions(collection, CLASSES)}
    assert sorted(found) == [10, 11, 12, 13]
    assert found[10]["probabilities"] == {"gaba": 0.1, "acetylcholine": 0.2, "glutamate": 0.7}
    assert [found[i]["predicted"] for i in (10, 11, 12, 13)] == [
        "glutamate", "gaba", "acetylcholine", "glutamate"
    ]  # fmt: skip
    assert [found[i]["skeleton_id"] for i in (10, 11, 12, 13)] == [1, 2, 3, 3]
    assert [found[i]["label"] for i in (10, 11, 12, 13)] == ["gaba", None, None, "glutamate"]
    assert found[11][OTHER_CLASS] == "dopamine" and OTHER_CLASS not in found[12]

    with pytest.raises(ConnectoError, match=r"skeleton_nt_t0_p7: .*--synapse-types") as error:
        read_predictions(collection)
    assert "\n" not in str(error.value)
    with pytest.raises(
        ConnectoError, match=r"skeleton_nt_t0_p7: synapse 10 has a prediction of length 3 but "
        r"there are 2 classes \['gaba', 'acetylcholine'\]"
    ):  # fmt: skip
        read_predictions(collection, CLASSES[:2])
    # a connecto document in the collection names the classes of synister's
    collection.insert_one(docs([12])[0] | {"synapse_id": 15})
    mongo_client[db_name]["synapses"].insert_one({"synapse_id": 15, "skeleton_id": 1})
    assert read_predictions(collection)[0]["probabilities"] == found[10]["probabilities"]
    collection.insert_one({"synapse_id": 16, "prediction": [1.0, 0.0, 0.0]})
    with pytest.raises(ConnectoError, match=r"1 predicted synapse\(s\) are not in .*\[16\]"):
        read_predictions(collection)


def test_migrate_adds_prediction_lists(mongo_client: MongoClient, db_name: str) -> None:
    db = mongo_client[f"{db_name}_predictions"]
    old = docs(range(4))
    for doc in old:
        del doc["prediction"]
    old[1]["probabilities"] = {"glutamate": 0.7, "gaba": 0.1, "acetylcholine": 0.2}
    db["skeleton_nt_t0_p0"].insert_many(old)
    db["skeleton_nt_t0_p1"].insert_many([*docs([7]), {"synapse_id": 8, "prediction": None}])
    db["skeleton_nt_t0_p2"].insert_one({k: v for k, v in docs([9])[0].items() if k != "prediction"})
    before_p1 = list(db["skeleton_nt_t0_p1"].find({}))

    # the data database names its predictions database
    assert migrate_prediction_collections(mongo_client[db_name]) == 5
    migrated = {d["synapse_id"]: d for d in db["skeleton_nt_t0_p0"].find({})}
    assert migrated[0]["prediction"] == [0.2, 0.5, 0.3]
    assert migrated[1]["prediction"] == [0.7, 0.1, 0.2]  # the dict's own order
    assert list(db["skeleton_nt_t0_p1"].find({})) == before_p1  # nothing to do there
    assert db["skeleton_nt_t0_p2"].find_one({})["prediction"] == [0.2, 0.5, 0.3]
    assert migrate_prediction_collections(db) == 0  # idempotent

    db["skeleton_nt_t0_p3"].insert_one({k: v for k, v in docs([5])[0].items() if k != "prediction"})
    order = {"skeleton_nt_t0_p3": ["glutamate", "acetylcholine", "gaba"]}
    assert migrate_prediction_collections(db, order) == 1
    assert db["skeleton_nt_t0_p3"].find_one({})["prediction"] == [0.3, 0.5, 0.2]
    db["skeleton_nt_t0_p4"].insert_one({k: v for k, v in docs([6])[0].items() if k != "prediction"})
    with pytest.raises(ConnectoError, match="skeleton_nt_t0_p4: synapse 6 has probabilities"):
        migrate_prediction_collections(db, {"skeleton_nt_t0_p4": ["gaba", "dopamine"]})


def test_simultaneous_predicts_of_two_setups_cannot_both_claim_a_collection(
    mongo_client: MongoClient, tracking_db: str, tmp_path
) -> None:
    """Two setups whose collection names collide, both past the ownership check before
    either writes its tracking document: the second is refused (before the claim document,
    both went on and mixed their predictions in one collection). And of eight processes'
    threads claiming at one instant, exactly one holds the collection."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from connecto.db.predictions import refuse_foreign_collection
    from connecto.db.tracking import claim_collection

    db = mongo_client[tracking_db]
    config = SimpleNamespace(db_name_data="race", split_name="skeleton", experiment="nt",
                             train_number=0, predict_number=1,
                             train_checkpoint=str(tmp_path / "model_checkpoint_10"))  # fmt: skip
    refuse_foreign_collection(db, tmp_path / "a", config)  # a, no tracking document yet
    with pytest.raises(ConnectoError, match=f"belongs to predict setup {tmp_path / 'a'} "):
        refuse_foreign_collection(db, tmp_path / "b", config)
    refuse_foreign_collection(db, tmp_path / "a", config)  # a itself goes on

    def claim(i: int) -> bool:
        return claim_collection(db, "race", "at_once", {"key": f"setup{i}"}) is None

    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(claim, range(8)))
    assert sum(won) == 1
    winner = won.index(True)
    assert claim_collection(db, "race", "at_once", {"key": f"setup{winner}"}) is None
