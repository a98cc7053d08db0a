"""A stand-in for synister's database client, for the compatibility test only.

It re-issues the MongoDB queries, projections, updates and field accesses of synister's
`SynisterDb` (funkelab/synister, `synister/synister_db.py`) and the parts of
`synister/evaluate.py` that read predictions, so that the test can check that synister's
scripts work on a database connecto wrote and the other way round. It was written here
from reading that code (which carries no licence, so none of it is copied): the
behaviour is the same, quirks included, the wording and structure are ours. It connects
with a `pymongo.MongoClient` passed in, never with credentials.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from itertools import permutations
from typing import Any

import numpy as np
from pymongo import ASCENDING, MongoClient

# hemi lineage names synister reads as "no name" (it lists NONE twice; once is enough)
UNKNOWN_HEMI_LINEAGE_NAMES = frozenset(
    ["NA", "NA1", "NONE", "NEW", "NEW2_POSTERIOR", *(f"UNKNOWN{d}" for d in range(10))]
)
SPLIT_PARTS = ("train", "test", "validation")

# the empty documents synister starts every record from (`import.py` merges
# `{**template, <id field>: int(key), **exported values}`)
TEMPLATES: dict[str, dict[str, Any]] = {
    "synapses": dict.fromkeys(
        ["x", "y", "z", "synapse_id", "skeleton_id", "splits", "prepost", "meta_id"]
    ),
    "skeletons": dict.fromkeys(["skeleton_id", "hemi_lineage_id", "nt_known"]),
    "hemi_lineages": dict.fromkeys(["hemi_lineage_id", "hemi_lineage_name", "nt_guess"]),
    "meta": dict.fromkeys(["meta_id", "group", "tracer"]),
}
ID_FIELDS = {"synapses": "synapse_id", "skeletons": "skeleton_id",
             "hemi_lineages": "hemi_lineage_id", "meta": "meta_id"}  # fmt: skip


def imported_record(collection: str, key: str | int, values: dict[str, Any]) -> dict[str, Any]:
    """One record as synister's `data/fafb_v3/import.py` writes it from a keyed export."""
    return {**TEMPLATES[collection], ID_FIELDS[collection]: int(key), **values}


def duplicates(items: Iterable[Hashable]) -> list[Hashable]:
    """Every repeat (the second and later occurrences), as iteration_utilities' duplicates."""
    seen: set[Hashable] = set()
    repeats = []
    for item in items:
        if item in seen:
            repeats.append(item)
        seen.add(item)
    return repeats


def _lower_names(value: Any) -> list[str] | None:
    """synister's generators: a list becomes sorted lower-case names; anything else leaves
    the template's None in place (their non-list branch never fires)."""
    return sorted(str(v).lower() for v in value) if isinstance(value, list) else None


class SynisterClient:
    """synister's `SynisterDb` queries on database `db_name` of `client`."""

    def __init__(self, client: MongoClient, db_name: str) -> None:
        self.client = client
        self.db_name = db_name

    @property
    def db(self):
        return self.client[self.db_name]

    def predictions(self, split_name: str, experiment: str, train_number: int,
                    predict_number: int):  # fmt: skip
        database = self.client[self.db_name + "_predictions"]
        return database[f"{split_name}_{experiment}_t{train_number}_p{predict_number}"]

    # ---------------------------------------------------------------- documents

    @staticmethod
    def synapse(x, y, z, synapse_id, skeleton_id, prepost=None, meta_id=None,
                treenode_id=None, label=None) -> dict[str, Any]:  # fmt: skip
        return {**TEMPLATES["synapses"], "x": x, "y": y, "z": z, "synapse_id": synapse_id,
                "skeleton_id": skeleton_id, "meta_id": meta_id, "prepost": prepost,
                "treenode_id": treenode_id, "label": label}  # fmt: skip

    @staticmethod
    def skeleton(skeleton_id, hemi_lineage_id, nt_known, type=None, match=None,
                 quality=None) -> dict[str, Any]:  # fmt: skip
        return {"skeleton_id": skeleton_id, "hemi_lineage_id": hemi_lineage_id,
                "nt_known": _lower_names(nt_known), "type": type, "match": match,
                "quality": quality}  # fmt: skip

    @staticmethod
    def hemi_lineage(hemi_lineage_id, hemi_lineage_name, nt_guess=None,
                     lineage_name=None) -> dict[str, Any]:  # fmt: skip
        # as synister's generator: the name is only copied onto a non-None template
        # value, so a generated hemi lineage never has a name
        del hemi_lineage_name
        return {"hemi_lineage_id": hemi_lineage_id, "hemi_lineage_name": None,
                "nt_guess": _lower_names(nt_guess), "lineage_name": lineage_name}  # fmt: skip

    # ---------------------------------------------------------------- writing

    def create(self, overwrite: bool = False) -> None:
        if overwrite:
            for name in ("synapses", "skeletons", "hemi_lineages", "meta"):
                self.db.drop_collection(name)
        indexes = {
            "synapses": [("pos", ["z", "y", "x"]), ("synapse_id", ["synapse_id"]),
                         ("skeleton_id", ["skeleton_id"])],
            "skeletons": [("skeleton_id", ["skeleton_id"]),
                          ("hemi_lineage_id", ["hemi_lineage_id"])],
            "hemi_lineages": [("hemi_lineage_id", ["hemi_lineage_id"])],
        }  # fmt: skip
        for collection, specs in indexes.items():
            for name, keys in specs:
                self.db[collection].create_index(
                    [(k, ASCENDING) for k in keys], name=name, sparse=True
                )

    def write(self, synapses=None, skeletons=None, hemi_lineages=None, metas=None,
              overwrite: bool = False) -> None:  # fmt: skip
        if overwrite:
            for name in ("synapses", "skeletons", "hemi_lineages"):
                self.db[name].delete_many({})
        for name, documents in (("synapses", synapses), ("skeletons", skeletons),
                                ("hemi_lineages", hemi_lineages), ("meta", metas)):  # fmt: skip
            if documents is not None:
                self.db[name].insert_many(documents)

    def init_splits(self) -> None:
        self.db["synapses"].update_many({}, {"$set": {"splits": {}}})

    def remove_split(self, split_name: str) -> None:
        self.db["synapses"].update_many({}, {"$unset": {f"splits.{split_name}": ""}})

    def make_split(self, split_name, train_synapse_ids, test_synapse_ids,
                   validation_synapse_ids=None, chunk_size: int = 250_000) -> None:  # fmt: skip
        self.remove_split(split_name)
        parts = [("train", train_synapse_ids), ("test", test_synapse_ids)]
        if validation_synapse_ids is not None:
            parts.append(("validation", validation_synapse_ids))
        for part, ids in parts:
            for start in range(0, len(ids), chunk_size):
                self.db["synapses"].update_many(
                    {"synapse_id": {"$in": ids[start : start + chunk_size]}},
                    {"$set": {f"splits.{split_name}": part}},
                )

    # ---------------------------------------------------------------- validation

    def validate_synapses(self) -> dict[str, list]:
        synapses = list(self.db["synapses"].find({}))
        unmatched = [
            s["synapse_id"] for s in synapses
            if self.db["skeletons"].count_documents({"skeleton_id": s["skeleton_id"]}) == 0
        ]  # fmt: skip
        return {
            "id_duplicates": duplicates(s["synapse_id"] for s in synapses),
            "loc_duplicates": duplicates((s["x"], s["y"], s["z"]) for s in synapses),
            "no_skid_match": unmatched,
        }

    def validate_skeletons(self) -> dict[str, list]:
        skeletons = list(self.db["skeletons"].find({}))
        hemi_lineages = self.db["hemi_lineages"]
        unmatched = [
            s["skeleton_id"] for s in skeletons
            if hemi_lineages.count_documents({"hemi_lineage_id": s["hemi_lineage_id"]}) == 0
        ]  # fmt: skip
        return {
            "id_duplicates": duplicates(s["skeleton_id"] for s in skeletons),
            "no_hlid_match": unmatched,
        }

    def validate_hemi_lineages(self) -> dict[str, list]:
        hemi_lineages = list(self.db["hemi_lineages"].find({}))
        return {
            "id_duplicates": duplicates(h["hemi_lineage_id"] for h in hemi_lineages),
            "name_duplicates": duplicates(h["hemi_lineage_name"] for h in hemi_lineages),
        }

    # ---------------------------------------------------------------- queries

    def _hemi_lineage_id_of(self, name: str) -> dict[str, Any]:
        """synister looks the name up upper-cased and insists on exactly one match."""
        found = list(self.db["hemi_lineages"].find({"hemi_lineage_name": name.upper()}))
        assert len(found) == 1
        return {"hemi_lineage_id": found[0]["hemi_lineage_id"]}

    @staticmethod
    def _transmitters(neurotransmitters: tuple) -> dict[str, Any]:
        if not isinstance(neurotransmitters, tuple):
            raise TypeError("Neurotransmitters must be a tuple of strings")
        return {"$or": [{"nt_known": list(p)} for p in permutations(neurotransmitters)]}

    @staticmethod
    def _positions(positions: Sequence[Sequence[float]]) -> dict[str, Any]:
        return {"$or": [
            {"$and": [{"z": int(round(z))}, {"y": int(round(y))}, {"x": int(round(x))}]}
            for z, y, x in positions
        ]}  # fmt: skip

    def _skeleton_ids_where(self, query: dict[str, Any]) -> list[int]:
        found = self.db["skeletons"].find(query, projection=["skeleton_id"])
        return [doc["skeleton_id"] for doc in found]

    def get_synapses(self, skeleton_ids=None, neurotransmitters=None, positions=None,
                     synapse_ids=None, hemi_lineage_name=None, hemi_lineage_id=None,
                     split_name=None, match_ids=None) -> dict[int, dict[str, Any]]:  # fmt: skip
        """synapse_id -> x, y, z, skeleton_id, brain_region (dropped for all when any
        synapse lacks it) and splits; skeleton filters intersect."""
        skeleton_queries = []
        if match_ids is not None:
            skeleton_queries.append({"match": {"$in": match_ids}})
        if hemi_lineage_name is not None:  # synister runs this lookup twice
            skeleton_queries += [self._hemi_lineage_id_of(hemi_lineage_name) for _ in range(2)]
        if hemi_lineage_id is not None:
            skeleton_queries.append({"hemi_lineage_id": hemi_lineage_id})
        if neurotransmitters is not None:
            skeleton_queries.append(self._transmitters(neurotransmitters))
        for query in skeleton_queries:
            found = self._skeleton_ids_where(query)
            skeleton_ids = found if skeleton_ids is None else list(set(skeleton_ids) & set(found))

        clauses: list[dict[str, Any]] = [{}]
        if synapse_ids is not None:
            clauses.append({"synapse_id": {"$in": synapse_ids}})
        if positions is not None:
            clauses.append(self._positions(positions))
        if skeleton_ids is not None:
            clauses.append({"skeleton_id": {"$in": skeleton_ids}})
        if split_name is not None:
            key = f"splits.{split_name}"
            clauses.append({"$or": [{key: part} for part in SPLIT_PARTS]})
        query = {"$and": clauses}
        fields = ["x", "y", "z", "skeleton_id", "brain_region", "splits"]
        try:
            return {
                s["synapse_id"]: {k: s[k] for k in fields} for s in self.db["synapses"].find(query)
            }
        except KeyError:
            fields.remove("brain_region")
            return {
                s["synapse_id"]: {k: s[k] for k in fields} for s in self.db["synapses"].find(query)
            }

    def get_skeletons(self, skeleton_ids=None, neurotransmitters=None, synapse_ids=None,
                      positions=None, hemi_lineage_name=None,
                      hemi_lineage_id=None) -> dict[int, dict[str, Any]]:  # fmt: skip
        """skeleton_id -> hemi_lineage_id and nt_known (a sorted tuple, or None)."""
        by_synapse = {k: v for k, v in (("synapse_ids", synapse_ids), ("positions", positions))
                      if v is not None}  # fmt: skip
        if by_synapse:
            found = {s["skeleton_id"] for s in self.get_synapses(**by_synapse).values()}
            skeleton_ids = list(found if skeleton_ids is None else found & set(skeleton_ids))
        clauses: list[dict[str, Any]] = [{}]
        if skeleton_ids is not None:
            clauses.append({"skeleton_id": {"$in": skeleton_ids}})
        if neurotransmitters is not None:
            clauses.append(self._transmitters(neurotransmitters))
        if hemi_lineage_name is not None:
            clauses.append(self._hemi_lineage_id_of(hemi_lineage_name))
        if hemi_lineage_id is not None:
            clauses.append({"hemi_lineage_id": hemi_lineage_id})
        return {
            s["skeleton_id"]: {
                "hemi_lineage_id": s["hemi_lineage_id"],
                "nt_known": None if s["nt_known"] is None else tuple(sorted(s["nt_known"])),
            }
            for s in self.db["skeletons"].find({"$and": clauses})
        }

    def get_hemi_lineages(self) -> dict[int, dict[str, Any]]:
        """hemi_lineage_id -> nt_guess (sorted tuple or None) and hemi_lineage_name (None
        for synister's "unknown" names)."""
        return {
            h["hemi_lineage_id"]: {
                "nt_guess": None if h["nt_guess"] is None else tuple(sorted(h["nt_guess"])),
                "hemi_lineage_name": None
                if h["hemi_lineage_name"] in UNKNOWN_HEMI_LINEAGE_NAMES
                else h["hemi_lineage_name"],
            }
            for h in self.db["hemi_lineages"].find({})
        }

    # ---------------------------------------------------------------- predictions

    def initialize_prediction(self, split_name, experiment, train_number, predict_number,
                              overwrite=False, validation=False):  # fmt: skip
        """One `{synapse_id, prediction: None}` per synapse of the test part (validation
        part if `validation`); a collection already holding documents is left alone."""
        collection = self.predictions(split_name, experiment, train_number, predict_number)
        if collection.count_documents({}) > 0:
            if not overwrite:
                return 0
            collection.database.drop_collection(collection)
        parts: dict[str, list[int]] = {part: [] for part in SPLIT_PARTS}
        for synapse_id, synapse in self.get_synapses(split_name=split_name).items():
            part = synapse["splits"][split_name]
            if part not in parts:
                raise ValueError("Split corrupted, abort")
            parts[part].append(synapse_id)
        chosen = parts["validation"] if validation else parts["test"]
        collection.insert_many([{"synapse_id": i, "prediction": None} for i in chosen])
        return None

    def write_prediction(self, split_name, prediction, experiment, train_number,
                         predict_number, x, y, z) -> None:  # fmt: skip
        collection = self.predictions(split_name, experiment, train_number, predict_number)
        synapses = self.get_synapses(positions=[(z, y, x)])
        assert len(synapses) == 1, f"Synapse at ({z}, {y}, {x}) not found in DB"
        [synapse_id] = synapses
        result = collection.update_one(
            {"synapse_id": synapse_id}, {"$set": {"prediction": list(prediction)}}
        )
        if result.matched_count != 1:
            raise ValueError(f"Error, none or multiple matching synapses in split {split_name}")

    def get_predictions(self, split_name, experiment, train_number,
                        predict_number) -> dict[int, dict[str, Any]]:  # fmt: skip
        collection = self.predictions(split_name, experiment, train_number, predict_number)
        return {p["synapse_id"]: {"prediction": p["prediction"]} for p in collection.find({})}

    def count_predictions(self, split_name, experiment, train_number,
                          predict_number) -> tuple[int, int]:  # fmt: skip
        """(done, total): documents whose prediction is not null, all documents."""
        collection = self.predictions(split_name, experiment, train_number, predict_number)
        total = collection.count_documents({})
        return collection.count_documents({"prediction": {"$ne": None}}), total

    # ---------------------------------------------------------------- evaluate.py

    def parse_prediction(self, split_name, experiment, train_number,
                         predict_number) -> dict[int, dict[str, Any]]:  # fmt: skip
        """Each predicted synapse: its prediction, its synapse fields, its skeleton's."""
        predictions = self.get_predictions(split_name, experiment, train_number, predict_number)
        synapses = self.get_synapses()
        skeletons = self.get_skeletons()
        return {
            synapse_id: {
                "prediction": p["prediction"],
                **synapses[synapse_id],
                **skeletons[synapses[synapse_id]["skeleton_id"]],
            }
            for synapse_id, p in predictions.items()
        }


def synaptic_confusion_matrix(
    synapses: dict[int, dict[str, Any]], synapse_types: Sequence[str], neither_class: bool = False
) -> np.ndarray:
    """evaluate.py's per-synapse matrix: row = index of the skeleton's single known
    transmitter, column = argmax of the prediction."""
    types = list(synapse_types) + (["neither"] if neither_class else [])
    matrix = np.zeros((len(types), len(types)), dtype=float)
    for synapse in synapses.values():
        if synapse["prediction"] == "null":
            continue
        nt_known = synapse["nt_known"]
        if len(nt_known) > 1:
            raise Warning("More than one known nt")
        matrix[types.index(nt_known[0]), np.argmax(synapse["prediction"])] += 1
    return matrix
