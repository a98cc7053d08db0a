"""`connecto db migrate`: a database in connecto's first layout becomes synister's layout;
until then every command refuses it with one line naming the migration."""

from __future__ import annotations

import pytest
from bson.int64 import Int64
from pymongo import MongoClient
from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.migrate import migrate
from connecto.db.synapses import synapse_stats
from connecto.splits import make_split


def first_layout(db: Database) -> None:
    """What connecto wrote before: `hemilineages` (`hemilineage_id`, `name`, unique index),
    skeletons with `hemilineage_id` and `[]` for unknown, synapses without `splits`, the
    position index under its old name, predictions without synister's `prediction`."""
    db.hemilineages.create_index([("hemilineage_id", 1)], unique=True, name="hemilineage_id")
    db.hemilineages.insert_many([
        {"hemilineage_id": Int64(1), "name": "ALAD1", "nt_guess": ["gaba"]},
        {"hemilineage_id": Int64(2), "name": "DM1", "nt_guess": None},
    ])  # fmt: skip
    db.skeletons.create_index([("skeleton_id", 1)], unique=True, name="skeleton_id")
    db.skeletons.create_index([("hemilineage_id", 1)], name="hemilineage_id")
    db.skeletons.insert_many([
        {"skeleton_id": Int64(s), "nt_known": [nt] if nt else [], "hemilineage_id": Int64(h)}
        for s, nt, h in ((10, "gaba", 1), (11, "gaba", 1), (12, "acetylcholine", 2),
                         (13, "acetylcholine", 2), (14, None, 2))
    ])  # fmt: skip
    db.synapses.create_index([("z", 1), ("y", 1), ("x", 1)], name="position")
    db.synapses.insert_many([
        {"synapse_id": Int64(100 + i), "x": 8.0 * i, "y": 16.0, "z": 24.0,
         "skeleton_id": Int64(10 + i % 5)}
        for i in range(20)
    ])  # fmt: skip
    db.synapses.update_many({"skeleton_id": 10}, {"$set": {"splits.old": "train"}})
    db.client[f"{db.name}_predictions"]["old_exp_t0_p0"].insert_many([
        {"synapse_id": Int64(100), "skeleton_id": Int64(10), "label": "gaba",
         "probabilities": {"gaba": 0.75, "acetylcholine": 0.25}, "predicted": "gaba"},
    ])  # fmt: skip


@pytest.fixture
def old_db(mongo_client: MongoClient, db_name: str) -> Database:
    db = mongo_client[db_name]
    first_layout(db)
    yield db
    mongo_client.drop_database(f"{db_name}_predictions")


def test_commands_refuse_the_first_layout_naming_the_migration(old_db: Database) -> None:
    for command in (lambda: synapse_stats(old_db), lambda: make_split(old_db, "skeleton", "s")):
        with pytest.raises(ConnectoError, match=f"connecto db migrate --db {old_db.name}"):
            command()


def test_migrate_converts_then_changes_nothing(old_db: Database) -> None:
    report = migrate(old_db)
    assert report.changed["skeletons: hemi_lineage_id"] == 5
    assert report.changed["hemi lineages: fields renamed"] == 2
    assert report.changed["skeletons: unknown transmitter [] -> null"] == 1
    assert report.changed["synapses: splits {} added"] == 16
    assert report.changed["hemi lineages: collection renamed"] == 2
    assert report.changed["predictions: prediction lists added"] == 1
    names = set(old_db.list_collection_names())
    assert "hemilineages" not in names and "hemi_lineages" in names
    hemi = old_db.hemi_lineages.find_one({"hemi_lineage_id": 1}, {"_id": 0})
    assert hemi == {"hemi_lineage_id": 1, "hemi_lineage_name": "ALAD1", "nt_guess": ["gaba"]}
    skeleton = old_db.skeletons.find_one({"skeleton_id": 14}, {"_id": 0})
    assert skeleton == {"skeleton_id": 14, "nt_known": None, "hemi_lineage_id": 2}
    assert old_db.synapses.count_documents({"splits": {}}) == 16
    assert old_db.synapses.find_one({"skeleton_id": 10})["splits"] == {"old": "train"}
    prediction = old_db.client[f"{old_db.name}_predictions"]["old_exp_t0_p0"].find_one()
    assert prediction["prediction"] == [0.75, 0.25]
    indexes = {i["name"]: i for i in old_db.hemi_lineages.list_indexes()}
    assert list(indexes["hemi_lineage_id"]["key"]) == ["hemi_lineage_id"]
    assert indexes["hemi_lineage_id"].get("unique") is True
    skeleton_indexes = [list(i["key"]) for i in old_db.skeletons.list_indexes()]
    assert ["hemilineage_id"] not in skeleton_indexes
    assert ["hemi_lineage_id"] in skeleton_indexes

    stats = synapse_stats(old_db)  # the commands accept it now
    assert stats["hemi_lineages"] == 2 and stats["splits"]["old"]["train"] == 4

    again = migrate(old_db)
    assert again.total == 0, again.changed
    assert "already in the current layout" in again.summary()
    assert "hemilineages" not in old_db.list_collection_names()


def test_migrate_cli_says_what_changed(old_db: Database, connecto) -> None:
    result = connecto("db", "migrate", "--db", old_db.name)
    assert result.returncode == 0, result.stderr
    assert "skeletons: hemi_lineage_id: 5" in result.stdout
    stats = connecto("db", "stats", "--db", old_db.name)
    assert stats.returncode == 0 and "2 hemilineages" in stats.stdout
