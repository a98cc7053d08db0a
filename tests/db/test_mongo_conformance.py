"""The MongoDB operations connecto relies on, each checked against the server in use.

Run against your own MongoDB with
`CONNECTO_TEST_MONGO_URI=mongodb://... pytest tests/test_mongo_conformance.py`.
"""

from __future__ import annotations

import pytest
from bson.int64 import Int64
from pymongo import MongoClient, ReturnDocument, UpdateMany, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteError

from connecto.db.schema import DATA_COLLECTIONS, init_database, validator

BIG_ID = 77537584185632101  # a real MANC synapse id, beyond float precision (2**53)


@pytest.fixture
def db(mongo_client: MongoClient, db_name: str) -> Database:
    init_database(mongo_client[db_name])
    return mongo_client[db_name]


def _synapse(synapse_id: int, skeleton_id: int = 1, **extra: object) -> dict:
    return {
        "synapse_id": Int64(synapse_id),
        "x": 1.0,
        "y": 2.0,
        "z": 3.0,
        "skeleton_id": Int64(skeleton_id),
        **extra,
    }


def test_init_is_idempotent_and_keeps_validators(db: Database) -> None:
    init_database(db)  # second time: collMod + identical indexes, no error
    info = {c["name"]: c for c in db.list_collections()}
    for collection in DATA_COLLECTIONS:
        assert info[collection]["options"]["validator"] == validator(collection)
    names = {i["name"]: i for i in db.synapses.list_indexes()}
    assert names["synapse_id"].get("unique") is True
    assert list(names["pos"]["key"]) == ["z", "y", "x"]


def test_validator_rejects_with_code_121(db: Database) -> None:
    bad = [
        {"synapse_id": "one", "x": 1.0, "y": 2.0, "z": 3.0, "skeleton_id": 1},
        {"synapse_id": 1, "x": "1", "y": 2.0, "z": 3.0, "skeleton_id": 1},
        {"synapse_id": 1, "x": 1.0, "y": 2.0, "skeleton_id": 1},
        _synapse(1, splits={"s": "holdout"}),
        _synapse(1, prepost="both"),
    ]
    for doc in bad:
        with pytest.raises(WriteError) as error:
            db.synapses.insert_one(doc)
        assert error.value.code == 121, doc
    with pytest.raises(WriteError) as error:
        db.skeletons.insert_one({"skeleton_id": 1, "nt_known": "gaba"})
    assert error.value.code == 121
    assert db.synapses.count_documents({}) == 0


def test_unique_index_and_unordered_insert_many(db: Database) -> None:
    db.synapses.insert_one(_synapse(1))
    with pytest.raises(DuplicateKeyError):
        db.synapses.insert_one(_synapse(1))
    with pytest.raises(BulkWriteError) as error:
        db.synapses.insert_many([_synapse(2), _synapse(1), _synapse(3)], ordered=False)
    failed = [e["index"] for e in error.value.details["writeErrors"]]
    assert failed == [1]
    assert error.value.details["writeErrors"][0]["code"] == 11000
    assert sorted(d["synapse_id"] for d in db.synapses.find()) == [1, 2, 3]


def test_int64_ids_round_trip_exactly(db: Database) -> None:
    db.synapses.insert_one(_synapse(BIG_ID, skeleton_id=BIG_ID + 1))
    doc = db.synapses.find_one({"synapse_id": BIG_ID})
    assert doc is not None and doc["synapse_id"] == BIG_ID
    assert db.synapses.find_one({"synapse_id": BIG_ID + 1}) is None  # no float rounding


def test_bulk_write_dotted_set_unset_in_and_exists(db: Database) -> None:
    db.synapses.insert_many([_synapse(i, skeleton_id=i % 3) for i in range(9)])
    db.synapses.bulk_write(
        [
            UpdateMany({"skeleton_id": {"$in": [0, 1]}}, {"$set": {"splits.a": "train"}}),
            UpdateMany({"skeleton_id": {"$in": [2]}}, {"$set": {"splits.a": "test"}}),
            UpdateMany({}, {"$set": {"splits.b": "validation"}}),
            UpdateMany({"splits.b": {"$exists": True}}, {"$unset": {"splits.b": ""}}),
            UpdateOne({"synapse_id": 0}, {"$set": {"splits.c": "train"}}),
        ],
        ordered=True,
    )
    assert db.synapses.count_documents({"splits.a": "train"}) == 6
    assert db.synapses.count_documents({"splits.a": "test"}) == 3
    assert db.synapses.count_documents({"splits.b": {"$exists": True}}) == 0
    assert db.synapses.find_one({"synapse_id": 0})["splits"] == {"a": "train", "c": "train"}
    with pytest.raises(BulkWriteError):  # the validator guards updates too
        db.synapses.bulk_write([UpdateOne({"synapse_id": 1}, {"$set": {"splits.a": "x"}})])


def test_array_size_query_projection_and_sort(db: Database) -> None:
    db.skeletons.insert_many(
        [
            {"skeleton_id": 3, "nt_known": ["gaba"], "hemi_lineage_id": None},
            {"skeleton_id": 1, "nt_known": ["gaba", "octopamine"], "hemi_lineage_id": None},
            {"skeleton_id": 2, "nt_known": [], "hemi_lineage_id": None},
            {"skeleton_id": 4, "nt_known": ["acetylcholine"], "hemi_lineage_id": None},
        ]
    )
    found = db.skeletons.find({"nt_known": {"$size": 1}}, {"skeleton_id": 1, "_id": 0})
    assert [d for d in found.sort("skeleton_id", 1)] == [{"skeleton_id": 3}, {"skeleton_id": 4}]


def test_delete_many_in_and_replace_one_restore(db: Database) -> None:
    db.synapses.insert_many([_synapse(i) for i in range(5)])
    old = db.synapses.find_one({"synapse_id": 4})
    db.synapses.update_one({"_id": old["_id"]}, {"$set": {"x": 9.0, "brain_region": "AL"}})
    db.synapses.replace_one({"_id": old["_id"]}, old)
    assert db.synapses.find_one({"synapse_id": 4}) == old
    db.synapses.delete_many({"synapse_id": {"$in": [0, 1, 2]}})
    assert sorted(d["synapse_id"] for d in db.synapses.find()) == [3, 4]
    assert db.synapses.estimated_document_count() == 2


def test_find_one_and_update_upsert(db: Database) -> None:
    for n in (1, 2):
        doc = db.runs.find_one_and_update(
            {"setup_dir": "/a"},
            {"$setOnInsert": {"created": 1}, "$set": {"n": n}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc["created"] == 1 and doc["n"] == n
    assert db.runs.count_documents({}) == 1


def test_aggregate_group_on_compound_key_with_missing_field(db: Database) -> None:
    db.synapses.insert_many(
        [_synapse(1, 7, brain_region="AL"), _synapse(2, 7, brain_region="AL"), _synapse(3, 7),
         _synapse(4, 8, brain_region="MB")]
    )  # fmt: skip
    rows = db.synapses.aggregate(
        [{"$group": {"_id": {"s": "$skeleton_id", "r": "$brain_region"}, "n": {"$sum": 1}}}]
    )
    counts = {(r["_id"]["s"], r["_id"].get("r")): r["n"] for r in rows}
    assert counts == {(7, "AL"): 2, (7, None): 1, (8, "MB"): 1}


# --- what reading and writing synister's layout relies on ---------------------------------------


def test_synister_documents_pass_the_validators(db: Database) -> None:
    """synister writes nulls for absent fields, integer positions and `splits: null`."""
    db.synapses.insert_one({
        "synapse_id": 1, "x": 100, "y": 200, "z": 40, "skeleton_id": 7, "splits": None,
        "prepost": None, "meta_id": None, "treenode_id": None, "label": None,
    })  # fmt: skip
    db.skeletons.insert_one({"skeleton_id": 7, "hemi_lineage_id": None, "nt_known": None})
    db.hemi_lineages.insert_one({"hemi_lineage_id": 3, "hemi_lineage_name": None, "nt_guess": None})
    # its split writes: null -> {} (init_splits), then one part per split
    db.synapses.update_many({}, {"$set": {"splits": {}}})
    db.synapses.update_many({"synapse_id": {"$in": [1]}}, {"$set": {"splits.s": "train"}})
    assert db.synapses.find_one({"synapse_id": 1})["splits"] == {"s": "train"}


def test_null_query_matches_missing_and_null(db: Database) -> None:
    db.synapses.insert_many([_synapse(1), _synapse(2, label=None), _synapse(3, label="gaba")])
    found = db.synapses.find({"label": None}, {"synapse_id": 1, "_id": 0}).sort("synapse_id", 1)
    assert [d["synapse_id"] for d in found] == [1, 2]
    assert db.synapses.count_documents({"label": {"$ne": None}}) == 1


def test_integer_query_matches_integral_double(db: Database) -> None:
    """synister finds synapses by `int(round(z))` equality; connecto stores float nm."""
    db.synapses.insert_one({**_synapse(1), "x": 438817.0, "y": 164242.0, "z": 217400.0})
    query = {"$and": [{"z": 217400}, {"y": 164242}, {"x": 438817}]}
    assert db.synapses.find_one({"$or": [query]})["synapse_id"] == 1


def test_rename_field_collection_and_drop_index(db: Database) -> None:
    db.old.insert_many([{"hemilineage_id": i, "name": f"H{i}"} for i in range(3)])
    db.old.create_index([("hemilineage_id", 1)], unique=True, name="hemilineage_id")
    db.old.drop_index("hemilineage_id")
    renamed = db.old.update_many(
        {}, {"$rename": {"hemilineage_id": "hemi_lineage_id", "name": "hemi_lineage_name"}}
    )
    assert renamed.modified_count == 3
    db.old.rename("new")
    assert "old" not in db.list_collection_names()
    assert db.new.find_one({"hemi_lineage_id": 2}, {"_id": 0}) == {
        "hemi_lineage_id": 2, "hemi_lineage_name": "H2"
    }  # fmt: skip
    assert [i["name"] for i in db.new.list_indexes()] == ["_id_"]


def test_validator_switched_off_and_on(db: Database) -> None:
    db.command("collMod", "skeletons", validator={}, validationLevel="off")
    db.skeletons.insert_one({"skeleton_id": "not an id"})
    db.skeletons.delete_many({})
    init_database(db)
    with pytest.raises(WriteError):
        db.skeletons.insert_one({"skeleton_id": "not an id"})


def test_init_keeps_synister_indexes_on_the_same_keys(mongo_client: MongoClient, db_name: str):
    """synister's `create` indexes (sparse, non-unique, its names) stay; ours are not added
    beside them (MongoDB refuses two indexes on the same keys)."""
    db = mongo_client[db_name]
    db.synapses.create_index([("z", 1), ("y", 1), ("x", 1)], name="pos", sparse=True)
    db.synapses.create_index([("synapse_id", 1)], name="synapse_id", sparse=True)
    init_database(db)
    init_database(db)
    indexes = {i["name"]: i for i in db.synapses.list_indexes()}
    assert set(indexes) == {"_id_", "pos", "synapse_id", "skeleton_id"}
    assert not indexes["synapse_id"].get("unique")
