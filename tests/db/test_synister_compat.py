"""synister compatibility, both ways: synister's queries (`tests.synister_client`, which
re-issues them) read a database that connecto's commands built, and connecto's commands
work on a database that synister wrote (its templates, integer positions, null fields,
`meta`, its own splits and its pre-created prediction collection).

Direction 1 imports a synthetic benchmark through `connecto db import synister`, splits it
with `connecto split`, predicts with a small untrained VGG and evaluates. Direction 2
writes real FAFB skeletons and hemi lineages (../shared/data/synister_fafb_v3) with
synthetic synapses exactly as synister does, then runs `connecto db stats`, `split`,
`predict` into synister's collection, `evaluate` and `train`.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from pymongo import MongoClient

from connecto.data.ingest import create_volume
from connecto.data.synthetic import make_volume, synthesize_synapses
from connecto.db.synapses import export_synister
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks.synapse_classification.model import build_vgg3d
from tests.conftest import FAFB, require_shared_data, run_connecto
from tests.synister_client import SynisterClient, imported_record, synaptic_confusion_matrix
from tests.tasks.synapse_classification.test_predict import SMALL_MODEL

CLASSES = ["gaba", "acetylcholine", "glutamate"]
VOXEL_SIZE = (40, 4, 4)
PARTS = ("train", "validation", "test")


def small_train_setup(base: Path, train_id: int, data_db: str, split: str, raw: Path) -> TrainSetup:
    """A train setup of a small VGG; train id 0 gets an untrained checkpoint at 10."""
    overrides = [
        *SMALL_MODEL, f"synapse_types={','.join(CLASSES)}", f"db_name_data={data_db}",
        f"split_name={split}", f"raw_container={raw}", "raw_dataset=raw", "augment=false",
        "log_every=1", "save_every=1000", "snapshot_every=1000", "worker.num_cpus=2",
        "worker.num_cache_workers=1",
    ]  # fmt: skip
    train, config, _ = prepare_training(base, "nt", train_id, overrides=overrides)
    if train_id == 0:
        torch.manual_seed(1)
        state = {"model_state_dict": build_vgg3d(config).state_dict(),  # type: ignore[arg-type]
                 "optimizer_state_dict": {}, "iteration": 10}  # fmt: skip
        torch.save(state, train.checkpoint(10))
    return train


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result


def stored_confusion(client: MongoClient, tracking: str, collection: str) -> np.ndarray:
    """The per-synapse confusion matrix `connecto evaluate` stored for `collection`."""
    score = client[tracking]["scores"].find_one({"collection": collection})
    assert score is not None, f"no scores for {collection}"
    assert score["synapse"]["class_names"] == CLASSES
    return np.array(score["synapse"]["confusion_matrix"], dtype=float)


def parts_of(synapses: dict[int, dict[str, Any]], split: str) -> dict[str, set[int]]:
    parts: dict[str, set[int]] = defaultdict(set)
    for synapse_id, synapse in synapses.items():
        parts[synapse["splits"][split]].add(synapse_id)
    return parts


# ============================================================ direction 1: connecto writes


@dataclass
class Ours:
    db: str
    tracking: str
    synapses: dict[int, dict[str, Any]]  # as imported (synister's export form)
    skeletons: dict[int, dict[str, Any]]
    hemi_lineages: dict[int, dict[str, Any]]
    splits: dict[str, subprocess.CompletedProcess[str]]
    predicted: subprocess.CompletedProcess[str]
    evaluated: subprocess.CompletedProcess[str]

    def synapses_of(self, skeletons: set[int]) -> set[int]:
        return {i for i, s in self.synapses.items() if s["skeleton_id"] in skeletons}

    def skeletons_where(self, **wanted: Any) -> set[int]:
        return {i for i, s in self.skeletons.items() if all(s[k] == v for k, v in wanted.items())}

    @property
    def classified(self) -> set[int]:
        """Synapses whose skeleton has one of CLASSES (the ones connecto splits)."""
        return {
            i for i, s in self.synapses.items()
            if (self.skeletons[s["skeleton_id"]]["nt_known"] or [None])[0] in CLASSES
        }  # fmt: skip


UNKNOWN_HEMI, UNKNOWN_SKELETON, ORPHAN_SKELETON = 90, 900, 901


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient) -> Iterator[Ours]:
    """connecto's commands build the database: a synthetic benchmark exported in synister's
    form plus a skeleton of unknown transmitter in an unknown-named hemi lineage and one
    without hemi lineage, imported, split by skeleton and by hemilineage, predicted on the
    validation part, evaluated."""
    base = tmp_path_factory.mktemp("compat_ours")
    name = f"test_compat_ours_{uuid.uuid4().hex[:8]}"
    tracking = f"tracking_{uuid.uuid4().hex[:8]}"
    env = {"CONNECTO_TRACKING_DB": tracking}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNECTO_TRACKING_DB", tracking)
        scratch = mongo_client[f"{name}_scratch"]
        synthesize_synapses(base / "raw.zarr", scratch, n_synapses=150, classes=CLASSES,
                            progress=False)  # fmt: skip
        export = base / "export"
        export_synister(scratch, export)
        mongo_client.drop_database(scratch.name)

        exported = {f: json.loads((export / f"{f}.json").read_text())
                    for f in ("synapses", "skeletons", "hemi_lineages")}  # fmt: skip
        for hemi_lineage in exported["hemi_lineages"].values():  # synister looks names up
            hemi_lineage["hemi_lineage_name"] = hemi_lineage["hemi_lineage_name"].upper()
        for c, nt in enumerate(CLASSES):  # a third hemi lineage per class: 3 parts need 3
            exported["hemi_lineages"][str(7 + c)] = {"hemi_lineage_name": f"{nt.upper()}_C",
                                                     "nt_guess": [nt]}  # fmt: skip
            for key, skeleton in exported["skeletons"].items():
                if skeleton["nt_known"] == [nt] and int(key) % 3 == 0:
                    skeleton["hemi_lineage_id"] = 7 + c
        exported["hemi_lineages"][str(UNKNOWN_HEMI)] = {"hemi_lineage_name": "NA",
                                                        "nt_guess": None}  # fmt: skip
        exported["skeletons"][str(UNKNOWN_SKELETON)] = {"hemi_lineage_id": UNKNOWN_HEMI,
                                                        "nt_known": None}  # fmt: skip
        exported["skeletons"][str(ORPHAN_SKELETON)] = {"hemi_lineage_id": None,
                                                       "nt_known": None}  # fmt: skip
        for n, skeleton_id in enumerate([UNKNOWN_SKELETON] * 2 + [ORPHAN_SKELETON] * 2):
            exported["synapses"][str(9_000_000 + n)] = {
                "x": 4000.0 + 400 * n,
                "y": 2000.0,
                "z": 100_000.0 + 40 * n,
                "skeleton_id": skeleton_id,
                "prepost": "post",
            }  # no brain_region: synister's get_synapses then leaves it out for all
        for f, documents in exported.items():
            (export / f"{f}.json").write_text(json.dumps(documents))

        ok(run_connecto("db", "import", "synister", export, "--db", name, env=env))
        options = ["--db", name, "--classes", ",".join(CLASSES), "--fractions", "0.6,0.2,0.2"]
        splits = {
            split: run_connecto("split", "--by", by, "--name", split, *options, env=env)
            for by, split in (("skeleton", "skel"), ("hemilineage", "hemi"))
        }
        train = small_train_setup(base, 0, name, "skel", base / "raw.zarr")
        predicted = run_connecto("predict", "--split", "validation", "-i", "10",
                                 cwd=train.path, env=env)  # fmt: skip
        evaluated = run_connecto("evaluate", cwd=train.path, env=env)

        def keyed(f: str) -> dict[int, dict[str, Any]]:
            return {int(k): v for k, v in exported[f].items()}

        yield Ours(name, tracking, keyed("synapses"), keyed("skeletons"),
                   keyed("hemi_lineages"), splits, predicted, evaluated)  # fmt: skip
    for database in (name, f"{name}_predictions", tracking):
        mongo_client.drop_database(database)


@pytest.fixture(scope="module")
def our_client(ours: Ours, mongo_client: MongoClient) -> SynisterClient:
    return SynisterClient(mongo_client, ours.db)


def test_connecto_writes_synister_layout(ours: Ours, our_client: SynisterClient):
    db = our_client.db
    assert {"synapses", "skeletons", "hemi_lineages"} <= set(db.list_collection_names())
    assert "hemilineages" not in db.list_collection_names()
    for doc in db["synapses"].find({}, {"_id": 0}):
        assert all(isinstance(doc[k], float) for k in "xyz") and isinstance(doc["splits"], dict)
    orphan = db["skeletons"].find_one({"skeleton_id": ORPHAN_SKELETON}, {"_id": 0})
    assert orphan == {"skeleton_id": ORPHAN_SKELETON, "nt_known": None, "hemi_lineage_id": None}
    unknown = db["hemi_lineages"].find_one({"hemi_lineage_id": UNKNOWN_HEMI}, {"_id": 0})
    assert unknown == {"hemi_lineage_id": UNKNOWN_HEMI, "hemi_lineage_name": "NA", "nt_guess": None}


def test_synister_reads_every_synapse_connecto_imported(ours: Ours, our_client: SynisterClient):
    synapses = our_client.get_synapses()
    assert set(synapses) == set(ours.synapses)
    for synapse_id, synapse in synapses.items():
        source = ours.synapses[synapse_id]
        assert [synapse[k] for k in ("x", "y", "z", "skeleton_id")] == [
            source[k] for k in ("x", "y", "z", "skeleton_id")
        ]
        assert isinstance(synapse["splits"], dict)  # always present, `{}` before any split
        assert "brain_region" not in synapse  # some synapses have none: synister drops it
    assert all(synapses[i]["splits"] == {} for i in set(ours.synapses) - ours.classified)
    assert all(set(synapses[i]["splits"]) == {"skel", "hemi"} for i in ours.classified)

    with_region = our_client.get_synapses(
        skeleton_ids=sorted(ours.skeletons_where(nt_known=["gaba"]))
    )
    assert with_region and all(
        s["brain_region"] == ours.synapses[i]["brain_region"] for i, s in with_region.items()
    )


def test_synister_synapse_filters_on_connecto_database(ours: Ours, our_client: SynisterClient):
    get = our_client.get_synapses
    skeletons = sorted(ours.skeletons)[:3]
    assert set(get(skeleton_ids=skeletons)) == ours.synapses_of(set(skeletons))
    chosen = sorted(ours.synapses)[::37]
    assert set(get(synapse_ids=chosen)) == set(chosen)
    positions = [(ours.synapses[i]["z"] + 0.3, ours.synapses[i]["y"] - 0.2, ours.synapses[i]["x"])
                 for i in chosen]  # fmt: skip
    assert set(get(positions=positions)) == set(chosen)  # int(round()) equality on z, y, x

    for nt in CLASSES:
        expected = ours.synapses_of(ours.skeletons_where(nt_known=[nt]))
        assert expected and set(get(neurotransmitters=(nt,))) == expected
    assert get(neurotransmitters=("gaba", "acetylcholine")) == {}

    for hemi_id, hemi_lineage in ours.hemi_lineages.items():
        expected = ours.synapses_of(ours.skeletons_where(hemi_lineage_id=hemi_id))
        assert set(get(hemi_lineage_id=hemi_id)) == expected
        # synister upper-cases the name it looks up
        by_name = get(hemi_lineage_name=hemi_lineage["hemi_lineage_name"].lower())
        assert set(by_name) == expected

    for split in ("skel", "hemi"):
        assert set(get(split_name=split)) == ours.classified
    gaba_a = ours.skeletons_where(nt_known=["gaba"], hemi_lineage_id=1)
    combined = get(neurotransmitters=("gaba",), hemi_lineage_name="gaba_a", split_name="skel",
                   skeleton_ids=sorted(ours.skeletons))  # fmt: skip
    assert gaba_a and set(combined) == ours.synapses_of(gaba_a)
    assert get(hemi_lineage_id=1, hemi_lineage_name="gaba_b") == {}


def test_synister_skeletons_and_hemi_lineages(ours: Ours, our_client: SynisterClient):
    expected = {
        i: {"hemi_lineage_id": s["hemi_lineage_id"],
            "nt_known": None if s["nt_known"] is None else tuple(sorted(s["nt_known"]))}
        for i, s in ours.skeletons.items()
    }  # fmt: skip
    assert our_client.get_skeletons() == expected
    gaba = ours.skeletons_where(nt_known=["gaba"])
    assert set(our_client.get_skeletons(neurotransmitters=("gaba",))) == gaba
    assert set(our_client.get_skeletons(hemi_lineage_id=UNKNOWN_HEMI)) == {UNKNOWN_SKELETON}
    assert set(our_client.get_skeletons(hemi_lineage_name="gaba_b")) == ours.skeletons_where(
        hemi_lineage_id=2
    )
    synapse_id = min(ours.synapses_of({UNKNOWN_SKELETON}))
    assert set(our_client.get_skeletons(synapse_ids=[synapse_id])) == {UNKNOWN_SKELETON}
    s = ours.synapses[synapse_id]
    assert set(our_client.get_skeletons(positions=[(s["z"], s["y"], s["x"])])) == {UNKNOWN_SKELETON}

    hemi_lineages = our_client.get_hemi_lineages()
    assert hemi_lineages == {
        i: {"nt_guess": None if h["nt_guess"] is None else tuple(sorted(h["nt_guess"])),
            "hemi_lineage_name": None if h["hemi_lineage_name"] == "NA" else h["hemi_lineage_name"]}
        for i, h in ours.hemi_lineages.items()
    }  # fmt: skip
    assert hemi_lineages[UNKNOWN_HEMI] == {"nt_guess": None, "hemi_lineage_name": None}


def test_synister_validation_finds_no_problem(ours: Ours, our_client: SynisterClient):
    assert our_client.validate_synapses() == {
        "id_duplicates": [], "loc_duplicates": [], "no_skid_match": []
    }  # fmt: skip
    # synister lists a skeleton without hemi lineage as unmatched, on its own data too
    assert our_client.validate_skeletons() == {
        "id_duplicates": [], "no_hlid_match": [ORPHAN_SKELETON]
    }  # fmt: skip
    assert our_client.validate_hemi_lineages() == {"id_duplicates": [], "name_duplicates": []}


def test_connecto_splits_read_by_synister(ours: Ours, our_client: SynisterClient):
    for result in ours.splits.values():
        ok(result)
    skeletons = our_client.get_skeletons()
    for split, group_of in (
        ("skel", lambda s: s),
        ("hemi", lambda s: skeletons[s]["hemi_lineage_id"]),
    ):
        synapses = our_client.get_synapses(split_name=split)
        parts = parts_of(synapses, split)
        assert set(parts) <= set(PARTS) and parts["train"]
        groups: dict[Any, set[str]] = defaultdict(set)
        for synapse in synapses.values():
            groups[group_of(synapse["skeleton_id"])].add(synapse["splits"][split])
        assert all(len(p) == 1 for p in groups.values()), f"{split}: a group in several parts"
    assert all(parts_of(our_client.get_synapses(split_name="skel"), "skel")[p] for p in PARTS)

    # synister's training source: synapses of a class in the train part, as int positions
    gaba = our_client.get_synapses(neurotransmitters=("gaba",), split_name="skel")
    points = [(int(s["z"]), int(s["y"]), int(s["x"])) for s in gaba.values()
              if s["splits"]["skel"] == "train"]  # fmt: skip
    assert 0 < len(points) < len(gaba)


def test_synister_reads_connecto_predictions(
    ours: Ours, our_client: SynisterClient, mongo_client: MongoClient
):
    ok(ours.predicted)
    validation = parts_of(our_client.get_synapses(split_name="skel"), "skel")["validation"]
    predictions = our_client.get_predictions("skel", "nt", 0, 0)
    assert set(predictions) == validation
    documents = mongo_client[f"{ours.db}_predictions"]["skel_nt_t0_p0"].find({}, {"_id": 0})
    for doc in documents:
        assert set(doc) == {"synapse_id", "skeleton_id", "label", "probabilities", "predicted",
                            "iteration", "prediction"}  # fmt: skip
        assert doc["label"] == ours.skeletons[doc["skeleton_id"]]["nt_known"][0]
        prediction = predictions[doc["synapse_id"]]["prediction"]
        assert prediction == [doc["probabilities"][c] for c in CLASSES]
        assert sum(prediction) == pytest.approx(1.0, abs=1e-5)
        assert CLASSES[int(np.argmax(prediction))] == doc["predicted"]
    assert our_client.count_predictions("skel", "nt", 0, 0) == (len(validation), len(validation))

    ok(ours.evaluated)
    parsed = our_client.parse_prediction("skel", "nt", 0, 0)
    assert {s["nt_known"] for s in parsed.values()} <= {(c,) for c in CLASSES}
    matrix = synaptic_confusion_matrix(parsed, CLASSES)
    assert matrix.sum() == len(validation)
    np.testing.assert_array_equal(stored_confusion(mongo_client, ours.tracking, "skel_nt_t0_p0"),
                                  matrix)  # fmt: skip


# ============================================================ direction 2: synister wrote it


@dataclass
class Theirs:
    db: str
    tracking: str
    base: Path
    raw: Path
    synapses: list[dict[str, Any]]  # as written
    skeletons: list[dict[str, Any]]
    hemi_lineages: list[dict[str, Any]]
    class_of: dict[int, str | None]  # synapse id -> its skeleton's transmitter
    parts: dict[str, list[int]]  # synister's split "synister_skel"

    @property
    def env(self) -> dict[str, str]:
        return {"CONNECTO_TRACKING_DB": self.tracking}

    def with_class(self, classes: list[str]) -> set[int]:
        return {i for i, c in self.class_of.items() if c in classes}


SYNISTER_SPLIT = "synister_skel"
NAMELESS_SKELETON, NA_HEMI, GENERATED_HEMI = 99_000_001, 99_001, 99_002


def pick_fafb_skeletons(
    skeletons: dict[str, Any], transmitter: list[str] | None, n: int
) -> list[str]:
    """`n` skeleton ids of the transmitter, from different hemi lineages where possible."""
    matching = sorted((k for k, v in skeletons.items() if v["nt_known"] == transmitter), key=int)
    picked, hemis = [], set()
    for key in matching:
        if skeletons[key]["hemi_lineage_id"] not in hemis:
            picked.append(key)
            hemis.add(skeletons[key]["hemi_lineage_id"])
    picked += [k for k in matching if k not in picked]
    return picked[:n]


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient) -> Iterator[Theirs]:
    """synister's database, written as synister writes it: real FAFB skeletons and hemi
    lineages (import.py's template merge), synthetic synapses at integer nm positions
    (half as import.py, half as synister's synapse generator), `meta`, `init_splits` and a
    `make_split` by skeleton with all three parts; dopamine synapses and ones of unknown
    transmitter too (not among the classes connecto is asked to use)."""
    fafb = require_shared_data(FAFB)
    base = tmp_path_factory.mktemp("compat_theirs")
    name = f"test_compat_theirs_{uuid.uuid4().hex[:8]}"
    tracking = f"tracking_{uuid.uuid4().hex[:8]}"
    fafb_skeletons = json.loads((fafb / "skeletons_v3.json").read_text())
    fafb_hemis = json.loads((fafb / "hemi_lineages_v3.json").read_text())
    types = [*CLASSES, "dopamine"]
    picked = {nt: pick_fafb_skeletons(fafb_skeletons, [nt], 4 if nt in CLASSES else 2)
              for nt in types}  # fmt: skip
    unknown = pick_fafb_skeletons(fafb_skeletons, None, 2)

    raw, synthetic = make_volume(n_synapses=30 * len(types), n_classes=len(types), seed=3)
    root = zarr.open_group(str(base / "raw.zarr"), mode="a")
    create_volume(root, "raw", raw.shape, raw.dtype, VOXEL_SIZE, (0, 0, 0))[:] = raw

    client = SynisterClient(mongo_client, name)
    synapses, class_of, by_skeleton = [], {}, defaultdict(list)
    counters: dict[int, int] = defaultdict(int)
    for n, synapse in enumerate(synthetic):
        nt = types[synapse.class_index]
        owners = [*picked[nt], *unknown, str(NAMELESS_SKELETON)] if nt == "dopamine" else picked[nt]
        skeleton = int(owners[counters[synapse.class_index] % len(owners)])
        counters[synapse.class_index] += 1
        z, y, x = (int(v * s) for v, s in zip(synapse.voxel, VOXEL_SIZE, strict=True))
        synapse_id = 5_000_000 + 7 * n
        if n % 2:
            values = {"x": x, "y": y, "z": z, "skeleton_id": skeleton, "prepost": "pre",
                      "meta_id": 1}  # fmt: skip
            doc = imported_record("synapses", str(synapse_id), values)
        else:
            doc = client.synapse(x, y, z, synapse_id, skeleton, prepost="pre", meta_id=1)
        synapses.append(doc)
        known = fafb_skeletons.get(str(skeleton), {}).get("nt_known")
        class_of[synapse_id] = known[0] if known else None
        by_skeleton[skeleton].append(synapse_id)
    skeleton_keys = [k for nt in types for k in picked[nt]] + unknown
    skeletons = [imported_record("skeletons", k, fafb_skeletons[k]) for k in skeleton_keys]
    skeletons.append(client.skeleton(NAMELESS_SKELETON, NA_HEMI, None))
    hemi_ids = sorted({s["hemi_lineage_id"] for s in skeletons} - {None, NA_HEMI})
    hemi_lineages = [imported_record("hemi_lineages", h, fafb_hemis[str(h)]) for h in hemi_ids]
    unknown_name = {"hemi_lineage_name": "NA", "nt_guess": None}
    hemi_lineages.append(imported_record("hemi_lineages", NA_HEMI, unknown_name))
    hemi_lineages.append(client.hemi_lineage(GENERATED_HEMI, "NEW", ["GABA"]))

    client.create(overwrite=True)
    client.write(synapses=[dict(d) for d in synapses], skeletons=[dict(d) for d in skeletons],
                 hemi_lineages=[dict(d) for d in hemi_lineages],
                 metas=[{"meta_id": 1, "group": "fafb", "tracer": "catmaid"}])  # fmt: skip
    client.init_splits()
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    for (
        nt
    ) in types:  # whole skeletons: train, train, test, validation (dopamine: train, validation)
        plan = (
            ["train", "train", "test", "validation"] if nt in CLASSES else ["train", "validation"]
        )
        for key, part in zip(picked[nt], plan, strict=True):
            parts[part] += by_skeleton[int(key)]
    client.make_split(SYNISTER_SPLIT, parts["train"], parts["test"], parts["validation"])

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNECTO_TRACKING_DB", tracking)
        yield Theirs(name, tracking, base, base / "raw.zarr", synapses, skeletons,
                     hemi_lineages, class_of, parts)  # fmt: skip
    for database in (name, f"{name}_predictions", tracking):
        mongo_client.drop_database(database)


@pytest.fixture(scope="module")
def their_client(theirs: Theirs, mongo_client: MongoClient) -> SynisterClient:
    return SynisterClient(mongo_client, theirs.db)


def test_written_as_synister_writes(theirs: Theirs, their_client: SynisterClient):
    """The fixture's database is synister's: its indexes, null fields, integer positions."""
    db = their_client.db
    indexes = db["synapses"].index_information()
    assert indexes["pos"]["key"] == [("z", 1), ("y", 1), ("x", 1)] and indexes["pos"]["sparse"]
    doc = db["synapses"].find_one({"synapse_id": theirs.synapses[1]["synapse_id"]}, {"_id": 0})
    assert isinstance(doc["x"], int) and doc["meta_id"] == 1 and "label" not in doc
    assert (
        db["synapses"].find_one({"synapse_id": theirs.synapses[0]["synapse_id"]})["label"] is None
    )
    assert set(their_client.get_synapses(split_name=SYNISTER_SPLIT)) == {
        i for ids in theirs.parts.values() for i in ids
    }


def test_connecto_stats_on_synister_database(
    theirs: Theirs, their_client: SynisterClient, mongo_client: MongoClient
):
    before = list(mongo_client[theirs.db]["synapses"].find({}, {"_id": 0}))
    result = ok(run_connecto("db", "stats", "--db", theirs.db, env=theirs.env))
    assert (
        f"database {theirs.db}: {len(theirs.synapses)} synapses, {len(theirs.skeletons)} "
        f"skeletons, {len(theirs.hemi_lineages)} hemilineages"
    ) in result.stdout
    for nt in [*CLASSES, "dopamine"]:
        count = len(theirs.with_class([nt]))
        assert re.search(rf"\b{nt}\W+{count}\b", result.stdout), (nt, count, result.stdout)
    assert SYNISTER_SPLIT in result.stdout
    assert list(mongo_client[theirs.db]["synapses"].find({}, {"_id": 0})) == before


def test_connecto_split_on_synister_database(
    theirs: Theirs, their_client: SynisterClient, mongo_client: MongoClient
):
    theirs_before = {
        i: s["splits"][SYNISTER_SPLIT]
        for i, s in their_client.get_synapses(split_name=SYNISTER_SPLIT).items()
    }
    ok(run_connecto("split", "--db", theirs.db, "--by", "hemilineage", "--name", "hemi",
                    "--classes", ",".join(CLASSES), "--fractions", "0.5,0.25,0.25",
                    env=theirs.env))  # fmt: skip

    synapses = their_client.get_synapses(split_name="hemi")
    assert set(synapses) == theirs.with_class(CLASSES)
    skeletons = their_client.get_skeletons()
    part_of_hemi: dict[int, set[str]] = defaultdict(set)
    for synapse in synapses.values():
        part_of_hemi[skeletons[synapse["skeleton_id"]]["hemi_lineage_id"]].add(
            synapse["splits"]["hemi"]
        )
    assert all(len(p) == 1 for p in part_of_hemi.values())
    assert set().union(*part_of_hemi.values()) <= set(PARTS)
    after = their_client.get_synapses(split_name=SYNISTER_SPLIT)
    assert {i: s["splits"][SYNISTER_SPLIT] for i, s in after.items()} == theirs_before
    doc = mongo_client[theirs.db]["synapses"].find_one({"splits.hemi": "train"})
    assert all(isinstance(doc[k], int) for k in "xyz")  # synister's positions left as they were
    # synister's training source reads the new split too
    gaba = their_client.get_synapses(neurotransmitters=("gaba",), split_name="hemi")
    assert gaba and set(gaba) == theirs.with_class(["gaba"])


def test_connecto_predicts_into_synister_collection(
    theirs: Theirs, their_client: SynisterClient, mongo_client: MongoClient
):
    """synister's initialize_prediction pre-creates `{synapse_id, prediction: null}` for
    the validation part; `connecto predict` (a setup naming the same collection) fills in
    its classes in place; `connecto evaluate` agrees with synister's confusion matrix;
    synister's write_prediction fills the rest."""
    train = small_train_setup(theirs.base, 0, theirs.db, SYNISTER_SPLIT, theirs.raw)
    validation = set(theirs.parts["validation"])
    predicted_ids = validation & theirs.with_class(CLASSES)
    assert predicted_ids and validation - predicted_ids  # dopamine is not predicted
    their_client.initialize_prediction(SYNISTER_SPLIT, "nt", 0, 0, validation=True)
    assert their_client.count_predictions(SYNISTER_SPLIT, "nt", 0, 0) == (0, len(validation))

    ok(run_connecto("predict", "--split", "validation", "-i", "10", cwd=train.path,
                    env=theirs.env))  # fmt: skip
    collection = their_client.predictions(SYNISTER_SPLIT, "nt", 0, 0)
    documents = list(collection.find({}, {"_id": 0}))
    assert sorted(d["synapse_id"] for d in documents) == sorted(validation)  # filled in place
    for doc in documents:
        if doc["synapse_id"] in predicted_ids:
            assert doc["prediction"] == [doc["probabilities"][c] for c in CLASSES]
            assert doc["label"] == theirs.class_of[doc["synapse_id"]]
        else:
            assert doc == {"synapse_id": doc["synapse_id"], "prediction": None}
    done, total = their_client.count_predictions(SYNISTER_SPLIT, "nt", 0, 0)
    assert (done, total) == (len(predicted_ids), len(validation))

    ok(run_connecto("evaluate", cwd=train.path, env=theirs.env))
    parsed = their_client.parse_prediction(SYNISTER_SPLIT, "nt", 0, 0)
    scored = {i: s for i, s in parsed.items() if s["prediction"] is not None}
    matrix = synaptic_confusion_matrix(scored, CLASSES)
    assert matrix.sum() == len(predicted_ids)
    collection_name = f"{SYNISTER_SPLIT}_nt_t0_p0"
    np.testing.assert_array_equal(
        stored_confusion(mongo_client, theirs.tracking, collection_name), matrix
    )

    synapses = their_client.get_synapses(synapse_ids=sorted(validation - predicted_ids))
    for synapse in synapses.values():  # synister finds them by their integer position
        their_client.write_prediction(SYNISTER_SPLIT, [0.25, 0.5, 0.25], "nt", 0, 0,
                                      synapse["x"], synapse["y"], synapse["z"])  # fmt: skip
    assert their_client.count_predictions(SYNISTER_SPLIT, "nt", 0, 0) == (total, total)


def test_connecto_trains_on_synister_database(theirs: Theirs):
    train = small_train_setup(theirs.base, 1, theirs.db, SYNISTER_SPLIT, theirs.raw)
    result = ok(run_connecto("train", "3", cwd=train.path, env=theirs.env))
    assert "finished at iteration 3" in result.stdout
    assert train.checkpoints() == [3]


def test_connecto_evaluates_predictions_synister_wrote(
    theirs: Theirs, their_client: SynisterClient, mongo_client: MongoClient, tmp_path: Path
):
    """synister's own run (initialize_prediction, then write_prediction by position) is
    scored by `connecto evaluate COLLECTION --db --synapse-types` as synister scores it."""
    test = sorted(theirs.parts["test"])
    their_client.initialize_prediction(SYNISTER_SPLIT, "nt", 0, 7)
    assert their_client.count_predictions(SYNISTER_SPLIT, "nt", 0, 7) == (0, len(test))
    rng = np.random.default_rng(0)
    for synapse in their_client.get_synapses(synapse_ids=test).values():
        prediction = rng.dirichlet(np.ones(len(CLASSES))).tolist()
        their_client.write_prediction(SYNISTER_SPLIT, prediction, "nt", 0, 7,
                                      synapse["x"], synapse["y"], synapse["z"])  # fmt: skip
    assert their_client.count_predictions(SYNISTER_SPLIT, "nt", 0, 7) == (len(test), len(test))

    name = f"{SYNISTER_SPLIT}_nt_t0_p7"
    ok(run_connecto("evaluate", name, "--db", theirs.db, "--synapse-types", ",".join(CLASSES),
                    "--out", tmp_path, cwd=tmp_path, env=theirs.env))  # fmt: skip
    matrix = synaptic_confusion_matrix(
        their_client.parse_prediction(SYNISTER_SPLIT, "nt", 0, 7), CLASSES
    )
    assert matrix.sum() == len(test)
    np.testing.assert_array_equal(stored_confusion(mongo_client, theirs.tracking, name), matrix)


def test_synister_reads_a_migrated_connecto_database(
    db_name: str, mongo_client: MongoClient, tracking_db: str
):
    """A database in connecto's first layout (`hemilineages` with `hemilineage_id` and
    `name`, `[]` for an unknown transmitter, no `splits` before a split, predictions
    without synister's list) reads with synister's queries after `connecto db migrate`."""
    db = mongo_client[db_name]
    db["hemilineages"].insert_many([
        {"hemilineage_id": 1, "name": "ALAD1", "nt_guess": ["acetylcholine"]},
        {"hemilineage_id": 2, "name": "NA", "nt_guess": None},
    ])  # fmt: skip
    db["skeletons"].insert_many([
        {"skeleton_id": 10, "nt_known": ["acetylcholine"], "hemilineage_id": 1},
        {"skeleton_id": 11, "nt_known": [], "hemilineage_id": 2},
        {"skeleton_id": 12, "nt_known": ["gaba"], "hemilineage_id": None},
    ])  # fmt: skip
    db["synapses"].insert_many([
        {"synapse_id": 100 + n, "x": 8.0 * n, "y": 16.0, "z": 40.0, "skeleton_id": skeleton,
         **({"splits": {"s": "test"}} if skeleton != 11 else {})}
        for n, skeleton in enumerate([10, 10, 11, 12, 12])
    ])  # fmt: skip
    classes = ["gaba", "acetylcholine"]
    old_predictions = [
        {"synapse_id": 100 + n, "skeleton_id": skeleton, "label": label,
         "probabilities": dict(zip(classes, p, strict=True)),
         "predicted": classes[int(np.argmax(p))], "iteration": 10}
        for n, skeleton, label, p in [(0, 10, "acetylcholine", [0.2, 0.8]),
                                      (1, 10, "acetylcholine", [0.6, 0.4]),
                                      (3, 12, "gaba", [0.7, 0.3]), (4, 12, "gaba", [0.1, 0.9])]
    ]  # fmt: skip
    mongo_client[f"{db_name}_predictions"]["s_nt_t0_p0"].insert_many(old_predictions)

    ok(run_connecto("db", "migrate", "--db", db_name))
    client = SynisterClient(mongo_client, db_name)
    assert client.get_hemi_lineages() == {
        1: {"nt_guess": ("acetylcholine",), "hemi_lineage_name": "ALAD1"},
        2: {"nt_guess": None, "hemi_lineage_name": None},
    }
    assert client.get_skeletons() == {
        10: {"hemi_lineage_id": 1, "nt_known": ("acetylcholine",)},
        11: {"hemi_lineage_id": 2, "nt_known": None},
        12: {"hemi_lineage_id": None, "nt_known": ("gaba",)},
    }
    assert set(client.get_synapses(hemi_lineage_name="alad1")) == {100, 101}
    assert client.get_synapses()[102]["splits"] == {}
    assert set(client.get_synapses(split_name="s")) == {100, 101, 103, 104}
    assert client.validate_skeletons() == {"id_duplicates": [], "no_hlid_match": [12]}
    assert client.get_predictions("s", "nt", 0, 0) == {
        100 + n: {"prediction": p}
        for n, p in [(0, [0.2, 0.8]), (1, [0.6, 0.4]), (3, [0.7, 0.3]), (4, [0.1, 0.9])]
    }
    assert client.count_predictions("s", "nt", 0, 0) == (4, 4)
    matrix = synaptic_confusion_matrix(client.parse_prediction("s", "nt", 0, 0), classes)
    np.testing.assert_array_equal(matrix, [[1, 1], [1, 1]])
    again = ok(run_connecto("db", "migrate", "--db", db_name))
    assert "already in the current layout" in again.stdout
