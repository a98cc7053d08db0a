"""Synapse database: schema, validated all-or-nothing imports of real tables, stats, export."""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from typer.testing import CliRunner

from cli.main import app
from connecto import ConnectoError
from connecto.db import synapse_import
from connecto.db.synapse_import import import_csv, import_synister, write_synapse_data
from connecto.db.synapses import export_synister, synapse_stats, synapses_by_class
from connecto.splits import plan_split, write_split
from tests import synapse_fixtures
from tests.conftest import FAFB, MANC, needs_fafb, needs_manc, require_shared_data
from tests.synapse_fixtures import drop_connection_once

failpoint_client = synapse_fixtures.failpoint_client
failpoint_db = synapse_fixtures.failpoint_db

MANC_FILES = ["acetylcholine.csv", "gaba.csv", "glutamate.csv", "others.csv"]
# PROVENANCE.md: synapses and neurons per file
MANC_COUNTS = {
    "acetylcholine": (47471, 67),
    "gaba": (21606, 55),
    "glutamate": (10869, 65),
    "others": (7457, 4),
}


def snapshot(db: Database) -> dict[str, list[dict]]:
    """Everything in the data collections, for before/after comparisons."""
    return {
        c: sorted(db[c].find({}), key=lambda d: str(d["_id"]))
        for c in ("synapses", "skeletons", "hemi_lineages")
    }


def write_csv(path: Path, rows: list[list[object]], header: str = "body,x,y,z,conf,syn_id") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def manc_db(mongo_client: MongoClient) -> Iterator[Database]:
    """All four MANC tables imported once for this module (the slow part: 87k documents)."""
    require_shared_data(MANC)
    name = f"test_manc_{uuid.uuid4().hex[:8]}"
    db = mongo_client[name]
    import_csv(db, [MANC / f for f in MANC_FILES], (8, 8, 8), nt_from_filename=True, progress=False)
    yield db
    # the session's own server goes with its temporary data directory; dropping 87k
    # documents in it one by one would cost it a minute and a half
    if os.environ.get("CONNECTO_TEST_MONGO_URI"):
        mongo_client.drop_database(name)


@pytest.fixture
def small_db(mongo_client: MongoClient, db_name: str) -> Database:
    db = mongo_client[db_name]
    write_synapse_data(
        db,
        synapses=[
            {"synapse_id": 1, "x": 8.0, "y": 16.0, "z": 24.0, "skeleton_id": 10},
            {"synapse_id": 2, "x": 9.0, "y": 16.0, "z": 24.0, "skeleton_id": 10},
            {"synapse_id": 3, "x": 10.0, "y": 16.0, "z": 24.0, "skeleton_id": 11},
        ],
        skeletons=[
            {"skeleton_id": 10, "nt_known": ["gaba"], "hemi_lineage_id": 5},
            {"skeleton_id": 11, "nt_known": ["acetylcholine"], "hemi_lineage_id": None},
        ],
        hemi_lineages=[{"hemi_lineage_id": 5, "hemi_lineage_name": "ALad1", "nt_guess": ["gaba"]}],
        progress=False,
    )
    return db


# --- real data ----------------------------------------------------------------------------


@needs_manc
def test_manc_import_counts(manc_db: Database) -> None:
    stats = synapse_stats(manc_db)
    assert stats["synapses"] == 87403
    assert stats["skeletons"] == 191
    for name, (synapses, skeletons) in MANC_COUNTS.items():
        assert stats["transmitters"][name]["synapses"] == synapses, name
        assert stats["transmitters"][name]["skeletons"] == skeletons, name


@needs_manc
def test_manc_coordinates_are_nanometres_and_ids_int64(manc_db: Database) -> None:
    with open(MANC / "gaba.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in (rows[0], rows[-1]):
        doc = manc_db.synapses.find_one({"synapse_id": int(row["syn_id"])})
        assert doc is not None
        assert (doc["x"], doc["y"], doc["z"]) == tuple(8.0 * int(row[a]) for a in "xyz")
        assert doc["skeleton_id"] == int(row["body"])
        assert doc["confidence"] == float(row["conf"])
    skeleton = manc_db.skeletons.find_one({"skeleton_id": int(rows[0]["body"])})
    assert skeleton["nt_known"] == ["gaba"]


def _skeletons_of(query: dict) -> set[int]:
    """The skeleton ids a split's write query names, in any of its branches."""
    found = set(query.get("skeleton_id", {}).get("$in", []))
    for branch in query.get("$or", []) + query.get("$and", []):
        found |= _skeletons_of(branch)
    return found


@needs_manc
def test_manc_split_by_skeleton_is_balanced(manc_db: Database) -> None:
    classes = ["acetylcholine", "gaba", "glutamate"]
    plan = plan_split(manc_db, "skeleton", "skeleton", (0.8, 0.1, 0.1), classes)
    report = plan.report
    skeletons = [
        {s for q in queries for s in _skeletons_of(q)} for queries in plan.queries.values()
    ]
    assert len(skeletons) == 3
    assert sum(map(len, skeletons)) == len(set().union(*skeletons)) == 187  # one part each
    assert sum(sum(c.values()) for c in report.counts.values()) == 79946
    for name in classes:
        assert abs(report.share(name, "train") - 0.8) < 0.02, report.counts
        for part in ("validation", "test"):
            assert report.counts[name][part] > 0
    assert report.max_deviation < 0.02


@needs_fafb
def test_fafb_skeletons_and_hemilineages(mongo_client: MongoClient, db_name: str) -> None:
    db = mongo_client[db_name]
    report = import_synister(db, FAFB, progress=False)
    assert report.inserted == {"hemi_lineages": 90, "skeletons": 2804, "synapses": 0}
    stats = synapse_stats(db)
    expected = {
        "acetylcholine": 397,
        "gaba": 165,
        "dopamine": 83,
        "glutamate": 32,
        "octopamine": 5,
        "serotonin": 5,
        "gaba+octopamine": 1,
        "(unknown)": 2804 - 688,
    }
    assert {k: v["skeletons"] for k, v in stats["transmitters"].items()} == expected
    hemilineage = db.hemi_lineages.find_one({"hemi_lineage_id": 1})
    assert hemilineage["hemi_lineage_name"] == "ALad1"
    assert hemilineage["nt_guess"] == ["acetylcholine"]
    again = import_synister(db, FAFB, progress=False)
    assert again.inserted["skeletons"] == 0 and again.unchanged["skeletons"] == 2804


# --- bad input: refused, database unchanged -----------------------------------------------


def _good_rows() -> list[list[object]]:
    return [[7, 100, 200, 300, 0.9, 1001], [7, 101, 200, 300, 0.8, 1002]]


@pytest.mark.parametrize(
    ("rows", "header", "expected"),
    [
        ([[8, 1, 2, 3, 0.9, 1101]], None, r"bad\.csv:3: duplicate synapse_id 1101 \(first at "),
        ([[8, 1, 2, 3, 0.9, 1003]], "body,x,y,conf,syn_id", r"bad\.csv:1: missing column\(s\) z"),
        ([[8, 1, "two", 3, 0.9, 1003]], None, r"bad\.csv:3: 'two' is not a number"),
        ([[8, 1, 2, 3, 0.9, "12a"]], None, r"bad\.csv:3: '12a' is not an integer id"),
    ],
    ids=["duplicate-id", "missing-column", "text-value", "bad-id"],
)
def test_bad_csv_leaves_database_unchanged(
    small_db: Database, tmp_path: Path, rows: list, header: str | None, expected: str
) -> None:
    before = snapshot(small_db)
    good = write_csv(tmp_path / "good.csv", _good_rows())
    first = [[8, 5, 5, 5, 0.9, 1101]]
    bad = write_csv(tmp_path / "bad.csv", first + rows, header or "body,x,y,z,conf,syn_id")
    with pytest.raises(ConnectoError, match=expected):
        import_csv(small_db, [good, bad], (8, 8, 8), nt="gaba", progress=False)
    assert snapshot(small_db) == before


def test_problems_are_listed_first_twenty_and_counted(small_db: Database, tmp_path: Path) -> None:
    rows = [[7, "x", 2, 3, 0.9, 2000 + i] for i in range(25)]
    with pytest.raises(ConnectoError) as error:
        import_csv(small_db, [write_csv(tmp_path / "t.csv", rows)], (8, 8, 8), progress=False)
    message = str(error.value)
    assert "25 problem(s)" in message and "and 5 more" in message
    assert message.count("'x' is not a number") == 20


def test_conflicting_transmitters_between_files(small_db: Database, tmp_path: Path) -> None:
    before = snapshot(small_db)
    gaba = write_csv(tmp_path / "gaba.csv", [[7, 1, 2, 3, 0.9, 5001]])
    ach = write_csv(tmp_path / "acetylcholine.csv", [[7, 1, 2, 4, 0.9, 5002]])
    with pytest.raises(ConnectoError, match=r"acetylcholine\.csv:2: body 7 .*gaba\.csv:2"):
        import_csv(small_db, [gaba, ach], (8, 8, 8), nt_from_filename=True, progress=False)
    assert snapshot(small_db) == before


def test_unknown_skeleton_and_hemilineage_refused(small_db: Database) -> None:
    before = snapshot(small_db)
    with pytest.raises(ConnectoError, match=r"synapses\[0\]: synapse 9 of unknown skeleton 99"):
        write_synapse_data(
            small_db, [{"synapse_id": 9, "x": 1, "y": 2, "z": 3, "skeleton_id": 99}], []
        )
    with pytest.raises(ConnectoError, match=r"skeletons\[0\]: skeleton 12 of unknown hemi lineage"):
        write_synapse_data(
            small_db, [], [{"skeleton_id": 12, "nt_known": [], "hemi_lineage_id": 6}]
        )
    assert snapshot(small_db) == before


def test_replace_overwrites_and_keeps_other_fields(small_db: Database) -> None:
    small_db.synapses.update_one({"synapse_id": 1}, {"$set": {"splits.s": "train"}})
    moved = {"synapse_id": 1, "x": 80.0, "y": 16.0, "z": 24.0, "skeleton_id": 10}
    with pytest.raises(ConnectoError, match="x: 8.0 -> 80.0"):
        write_synapse_data(small_db, [moved], [], progress=False)
    report = write_synapse_data(small_db, [moved], [], replace=True, progress=False)
    assert report.replaced["synapses"] == 1
    doc = small_db.synapses.find_one({"synapse_id": 1})
    assert doc["x"] == 80.0 and doc["splits"] == {"s": "train"}


def test_failed_write_is_undone(
    small_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure on the server mid-import (here: a unique position index the user added)
    removes what was inserted and restores what was replaced."""
    small_db.synapses.create_index([("z", 1), ("y", 1), ("x", 1)], unique=True, name="unique_pos")
    # several insert batches before the failure
    monkeypatch.setattr(synapse_import, "WRITE_CHUNK", 2)
    before = snapshot(small_db)
    synapses = [
        {"synapse_id": 100 + i, "x": 1000.0 + i, "y": 1.0, "z": 1.0, "skeleton_id": 10}
        for i in range(5)
    ] + [{"synapse_id": 200, "x": 8.0, "y": 16.0, "z": 24.0, "skeleton_id": 10}]  # = synapse 1
    skeletons = [{"skeleton_id": 11, "nt_known": ["glutamate"], "hemi_lineage_id": None}]
    with pytest.raises(ConnectoError, match="database is as before"):
        write_synapse_data(small_db, synapses, skeletons, replace=True, progress=False)
    assert snapshot(small_db) == before


# --- reading back: interface for training/prediction, stats, export ---------------------------


def test_synapses_by_class(small_db: Database) -> None:
    write_synapse_data(
        small_db,
        [
            {"synapse_id": 4, "x": 1, "y": 1, "z": 1, "skeleton_id": 12, "splits": {"a": "test"}},
            {"synapse_id": 5, "x": 2, "y": 1, "z": 1, "skeleton_id": 11, "splits": {"a": "train"}},
            {"synapse_id": 6, "x": 3, "y": 1, "z": 1, "skeleton_id": 13, "splits": {"a": "train"}},
        ],
        [
            {"skeleton_id": 12, "nt_known": ["gaba"]},
            {"skeleton_id": 13, "nt_known": ["gaba", "octopamine"]},  # not a class
        ],
        progress=False,
    )
    grouped = synapses_by_class(small_db, "a", "train", ["gaba", "acetylcholine"])
    assert grouped == {
        "gaba": [],
        "acetylcholine": [
            {
                "synapse_id": 5,
                "x": 2.0,
                "y": 1.0,
                "z": 1.0,
                "skeleton_id": 11,
                "splits": {"a": "train"},
            }
        ],
    }
    everything = synapses_by_class(small_db, "a", None, ["gaba", "acetylcholine"])
    assert [d["synapse_id"] for d in everything["gaba"]] == [4]
    with pytest.raises(ConnectoError, match="no split 'b'.*splits: a"):
        synapses_by_class(small_db, "b", None, ["gaba"])


def test_export_import_round_trip(
    small_db: Database, mongo_client: MongoClient, tmp_path: Path
) -> None:
    small_db.synapses.update_one(
        {"synapse_id": 2},
        {"$set": {"splits.s": "test", "brain_region": "AL", "confidence": 0.5, "prepost": "pre"}},
    )
    counts = export_synister(small_db, tmp_path / "export")
    assert counts == {"synapses.json": 3, "skeletons.json": 2, "hemi_lineages.json": 1}
    copy = mongo_client[f"{small_db.name}_copy"]
    try:
        import_synister(copy, tmp_path / "export", progress=False)

        def content(db: Database) -> dict[str, list[dict]]:
            return {
                c: sorted(
                    ({k: v for k, v in d.items() if k != "_id"} for d in db[c].find()),
                    key=repr,
                )
                for c in ("synapses", "skeletons", "hemi_lineages")
            }

        assert content(copy) == content(small_db)
    finally:
        mongo_client.drop_database(copy.name)


def test_cli_import_and_stats(db_name: str, tmp_path: Path) -> None:
    good = write_csv(tmp_path / "gaba.csv", _good_rows())
    runner = CliRunner()
    done = runner.invoke(app, ["db", "import", "csv", str(good), "--db", db_name,
                               "--voxel-size", "40,4,4", "--nt-from-filename"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "synapses: 2 inserted" in done.output
    stats = runner.invoke(app, ["db", "stats", "--db", db_name])
    assert stats.exit_code == 0, stats.output
    assert "2 synapses, 1 skeletons" in stats.output and "gaba" in stats.output


def test_reimport_idempotent_refusal_names_line(small_db: Database, tmp_path: Path) -> None:
    good = write_csv(tmp_path / "gaba.csv", _good_rows())
    import_csv(small_db, [good], (40, 4, 4), nt_from_filename=True, progress=False)
    before = snapshot(small_db)
    again = import_csv(small_db, [good], (40, 4, 4), nt_from_filename=True, progress=False)
    assert again.inserted["synapses"] == 0 and again.unchanged["synapses"] == 2
    assert snapshot(small_db) == before  # identical data: nothing written
    moved = write_csv(tmp_path / "moved.csv", [[7, 1, 2, 3, 0.9, 1001]])
    with pytest.raises(ConnectoError) as error:
        import_csv(small_db, [moved], (40, 4, 4), nt="gaba", progress=False)
    first, second = str(error.value).splitlines()[:2]
    assert first == "import refused, nothing was written: 1 problem(s)"
    assert second.strip() == (
        f"{moved}:2: synapse_id 1001 differs from the database (x: 400.0 -> 4.0, "
        "y: 800.0 -> 8.0, z: 12000.0 -> 120.0); use --replace to overwrite"
    )


def test_dropped_connection_mid_import_is_resumed(
    failpoint_client: MongoClient, failpoint_db: Database
) -> None:
    """The server closes the connection on the first insert (MongoDB's `failCommand` test
    failpoint); the import sends the rest again and ends complete, with nothing doubled."""
    with drop_connection_once(failpoint_client, "insert"):
        report = write_synapse_data(
            failpoint_db,
            [{"synapse_id": i, "x": i, "y": 0, "z": 0, "skeleton_id": i % 3} for i in range(30)],
            [{"skeleton_id": i, "nt_known": ["gaba"]} for i in range(3)],
            progress=False,
        )
    assert report.inserted["synapses"] == 30 and report.inserted["skeletons"] == 3
    assert failpoint_db.synapses.count_documents({}) == 30
    assert failpoint_db.skeletons.count_documents({}) == 3


@pytest.mark.parametrize(
    "content", [bytes(range(256)) * 4, b"body,x,y,z,conf,syn_id\n8,1,2,3,0.9,1\n8,\xff\xfe,2\n"]
)
def test_binary_csv_is_refused_without_traceback(
    connecto, small_db: Database, tmp_path: Path, content: bytes
) -> None:
    before = snapshot(small_db)
    path = tmp_path / "binary.csv"
    path.write_bytes(content)
    result = connecto(
        "db", "import", "csv", "--db", small_db.name, "--voxel-size", "8,8,8", "--nt", "gaba", path
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{path}: not a CSV text table (not UTF-8 text)" in result.stderr
    assert snapshot(small_db) == before


@pytest.mark.parametrize(
    ("synapse", "message"),
    [
        ({"$where": "1"}, "field name '$where': may not be empty, start with '$' or hold '.'"),
        ({"a.b": 1}, "field name 'a.b': may not be empty, start with '$' or hold '.'"),
        ({"meta": {"$gt": 1}}, "field name 'meta.$gt': may not be empty"),
        ({"synapse_id": 8}, "synapse_id 8 differs from its key"),
    ],
)
def test_synister_field_names_and_ids_are_checked(
    small_db: Database, tmp_path: Path, synapse: dict, message: str
) -> None:
    """Operator-like or dotted field names are refused, not stored; a body's synapse_id must
    agree with the key it is filed under."""
    before = snapshot(small_db)
    export = tmp_path / "export"
    export.mkdir()
    body = {"x": 1.0, "y": 2.0, "z": 3.0, "skeleton_id": 1, **synapse}
    (export / "synapses.json").write_text(json.dumps({"7": body}))
    with pytest.raises(ConnectoError) as error:
        import_synister(small_db, export, progress=False)
    assert f"{export / 'synapses.json'}: key '7': {message}" in str(error.value)
    assert snapshot(small_db) == before


# --- per-synapse classes (labels) ------------------------------------------------------------


def _two_class_tables(tmp_path: Path) -> tuple[Path, Path]:
    """synapse.csv and background.csv over the same 12 bodies: every body holds both."""
    synapse_rows, background_rows = [], []
    syn_id = 0
    for body in range(1, 13):
        for _ in range(body % 4 + 2):
            syn_id += 1
            synapse_rows.append([body, syn_id, 1, 1, 0.9, syn_id])
        for _ in range(body % 3 + 1):
            syn_id += 1
            background_rows.append([body, syn_id, 2, 2, "", syn_id])
    return (
        write_csv(tmp_path / "synapse.csv", synapse_rows),
        write_csv(tmp_path / "background.csv", background_rows),
    )


def test_two_class_csv_import_split_and_read(
    mongo_client: MongoClient, db_name: str, tmp_path: Path
) -> None:
    db = mongo_client[db_name]
    files = _two_class_tables(tmp_path)
    expected = {
        name: len(f.read_text().splitlines()) - 1
        for name, f in zip(("synapse", "background"), files, strict=True)
    }
    report = import_csv(db, list(files), (8, 8, 8), class_from_filename=True, progress=False)
    assert report.inserted["synapses"] == sum(expected.values())
    assert report.inserted["skeletons"] == 12
    assert all(d["nt_known"] is None for d in db.skeletons.find())  # synister: unknown
    assert db.synapses.count_documents({"label": "background"}) == expected["background"]

    split = plan_split(db, "skeleton", "s", (0.5, 0.25, 0.25))
    assert split.report.classes == ["background", "synapse"]
    write_split(db, split)
    for name in expected:
        assert sum(split.report.counts[name].values()) == expected[name]
    total = {name: 0 for name in expected}
    for part in ("train", "validation", "test"):
        grouped = synapses_by_class(db, "s", part, ["background", "synapse"])
        for name, synapses in grouped.items():
            assert len(synapses) == split.report.counts[name][part], (name, part)
            assert all(s["label"] == name for s in synapses)
            total[name] += len(synapses)
    assert total == expected
    # a whole body stays in one part, whatever its synapses' classes
    parts: dict[int, set[str]] = {}
    for doc in db.synapses.find():
        parts.setdefault(doc["skeleton_id"], set()).add(doc["splits"]["s"])
    assert all(len(p) == 1 for p in parts.values())

    # one class only: the other class's synapses get no part, even in the same bodies
    only = plan_split(db, "skeleton", "only", (0.5, 0.25, 0.25), ["synapse"])
    write_split(db, only)
    assert db.synapses.count_documents({"splits.only": {"$exists": True}}) == expected["synapse"]
    assert (
        db.synapses.count_documents({"label": "background", "splits.only": {"$exists": True}}) == 0
    )

    stats = synapse_stats(db)
    assert stats["class_kind"] == "class"
    assert {k: v["synapses"] for k, v in stats["classes"].items() if v["synapses"]} == expected


def test_transmitter_import_still_refuses_a_body_of_two_classes(
    small_db: Database, tmp_path: Path
) -> None:
    before = snapshot(small_db)
    files = _two_class_tables(tmp_path)
    with pytest.raises(ConnectoError, match=r"background\.csv:2: body 1 has transmitter"):
        import_csv(small_db, list(files), (8, 8, 8), nt_from_filename=True, progress=False)
    assert snapshot(small_db) == before


def test_class_column(small_db: Database, tmp_path: Path) -> None:
    header = "body,x,y,z,conf,syn_id,kind"
    table = write_csv(
        tmp_path / "t.csv",
        [[7, 1, 2, 3, 0.9, 6001, "pre"], [7, 1, 2, 4, 0.9, 6002, "post"]],
        header,
    )
    import_csv(small_db, [table], (8, 8, 8), class_column="kind", progress=False)
    labels = {d["synapse_id"]: d["label"] for d in small_db.synapses.find({"skeleton_id": 7})}
    assert labels == {6001: "pre", 6002: "post"}
    before = snapshot(small_db)
    empty = write_csv(tmp_path / "e.csv", [[8, 1, 2, 3, 0.9, 6003, " "]], header)
    with pytest.raises(ConnectoError, match=r"e\.csv:2: empty class in column 'kind'"):
        import_csv(small_db, [empty], (8, 8, 8), class_column="kind", progress=False)
    with pytest.raises(ConnectoError, match=r"missing column\(s\) cls"):
        import_csv(small_db, [empty], (8, 8, 8), class_column="cls", progress=False)
    with pytest.raises(ConnectoError, match="not both"):
        import_csv(
            small_db, [empty], (8, 8, 8), class_column="kind", class_from_filename=True,
            progress=False,
        )  # fmt: skip
    assert snapshot(small_db) == before
    # the server's validator takes a label only as a non-empty string
    with pytest.raises(Exception, match="[Vv]alidation"):
        small_db.synapses.insert_one(
            {"synapse_id": 6100, "x": 1.0, "y": 1.0, "z": 1.0, "skeleton_id": 7, "label": 3}
        )


def test_label_overrides_skeleton_transmitter(small_db: Database) -> None:
    # skeleton 10 is gaba; synapse 2 carries its own class
    small_db.synapses.update_one({"synapse_id": 2}, {"$set": {"label": "background"}})
    small_db.synapses.update_many({}, {"$set": {"splits.a": "train"}})
    grouped = synapses_by_class(small_db, "a", "train", ["gaba", "background", "acetylcholine"])
    assert {k: [s["synapse_id"] for s in v] for k, v in grouped.items()} == {
        "gaba": [1],
        "background": [2],
        "acetylcholine": [3],
    }


def test_cli_class_from_filename_and_stats_speak_of_classes(db_name: str, tmp_path: Path) -> None:
    files = _two_class_tables(tmp_path)
    runner = CliRunner()
    done = runner.invoke(app, ["db", "import", "csv", *map(str, files), "--db", db_name,
                               "--voxel-size", "8,8,8", "--class-from-filename"])  # fmt: skip
    assert done.exit_code == 0, done.output
    stats = runner.invoke(app, ["db", "stats", "--db", db_name])
    assert stats.exit_code == 0, stats.output
    assert "every synapse has its own class" in stats.output
    assert "┃ class" in stats.output and "transmitter" not in stats.output
    assert "background" in stats.output and "synapse " in stats.output
