"""Per-synapse prediction collections and the tracking of prediction runs.

Predictions of one predict setup live in database `<data_db>_predictions`, collection
`<split_name>_<experiment>_t<train_id>_p<predict_number>` (the predict config's
`predict_number`, any number: `connecto predict` numbers its setups 0, 1, ...; synister's
`predict.py` uses the checkpoint iteration), one document per synapse. connecto writes

    {"synapse_id": 12, "skeleton_id": 3, "label": "gaba" | None,
     "probabilities": {"gaba": 0.9, "acetylcholine": 0.1}, "predicted": "gaba",
     "prediction": [0.9, 0.1], "iteration": 100000}

`probabilities` and `prediction` hold the same numbers: a dict by class name, and a list in
class order (`synapse_types`, then "neither" when configured). The list is synister's
field: synister's `get_predictions` and `evaluate.py` read `prediction`, and nothing else,
so they read connecto's collections too.

synister's own documents are `{"synapse_id": 12, "prediction": None}`, pre-created by its
`initialize_prediction` for every synapse of the split part (every class), then filled by
`write_prediction` with `$set: {"prediction": [p, ...]}`. A document counts as done when it
holds a prediction (`probabilities`, or a `prediction` that is not null: `DONE`); a
pre-created one is still to do. connecto fills such documents in place (only those of the
synapses of its classes: the others stay to do), and reads synister's documents by taking
the class names from the predict setup (or `--synapse-types`) and `skeleton_id` and the
true class from the data database (`read_predictions`). connecto's documents from before
`prediction` get it from `migrate_prediction_collections` (`connecto db migrate`).

`synapse_id` has a unique index, so a resumed run can never write a synapse twice: new
synapses are unordered bulk inserts whose duplicate-key errors are expected; a duplicate is
filled in place when its document is still to do and left alone when it is done.

The name does not say which base directory a setup lives in, so two setups can name the
same collection. Each collection belongs to the predict setup whose tracking document
first names it (`owner`: setup path, checkpoint, config hash); any other is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from connecto import ConnectoError
from connecto.db.schema import SYNAPSES
from connecto.db.synapses import class_of_skeletons, synapse_class
from connecto.db.tracking import (
    PREDICTIONS,
    claim_collection,
    ensure_indexes,
    settle_vanished,
    upsert_document,
)
from connecto.names import check_name, predictions_database_name

DUPLICATE_KEY = 11000
PREDICTIONS_SUFFIX = predictions_database_name("")
CollectionState = Literal["empty", "incomplete", "complete"]
# a document holding a prediction: connecto's `probabilities` or synister's filled list
DONE: dict[str, Any] = {"$or": [{"probabilities": {"$ne": None}}, {"prediction": {"$ne": None}}]}
# its negation: synister's pre-created `{"synapse_id": ..., "prediction": None}`
TO_DO: dict[str, Any] = {"probabilities": None, "prediction": None}
# set by `read_predictions` on a synister document whose synapse has a known class that is
# none of the predicted classes (synister pre-creates every synapse of the split part)
OTHER_CLASS = "class_not_predicted"
SYNAPSE_SOURCE_CHUNK = 10_000


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
    """synister's name: `<split_name>_<experiment>_t<train_id>_p<predict_id>`; the predict
    number is any number >= 0 (synister uses the checkpoint iteration)."""
    check_name("split name", split_name)
    check_name("experiment name", experiment)
    if train_id < 0 or predict_id < 0:
        raise ConnectoError(f"train id {train_id} and predict id {predict_id} must be >= 0")
    return f"{split_name}_{experiment}_t{train_id}_p{predict_id}"


def open_prediction_collection(db: Database, name: str) -> Collection:
    """The collection, with its unique `synapse_id` index (idempotent; a collection that
    synister created has no index but no duplicate either, so it gets one)."""
    collection = db[name]
    collection.create_index([("synapse_id", ASCENDING)], unique=True)
    return collection


def _most_probable(values: Sequence[float]) -> int:
    """Index of the largest value, the first on an exact tie (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def prediction_document(
    synapse: dict[str, Any],
    probabilities: Sequence[float],
    class_names: Sequence[str],
    iteration: int,
) -> dict[str, Any]:
    """One synapse's prediction; the predicted class is the most probable one (the first
    in class order on an exact tie, as numpy's argmax). `prediction` is the same numbers as
    a list in class order, synister's field."""
    if len(probabilities) != len(class_names):
        raise ConnectoError(
            f"synapse {synapse['synapse_id']}: {len(probabilities)} probabilities for "
            f"{len(class_names)} classes {list(class_names)}"
        )
    values = [float(p) for p in probabilities]
    return {
        "synapse_id": int(synapse["synapse_id"]),
        "skeleton_id": int(synapse["skeleton_id"]),
        "label": synapse.get("label"),
        "probabilities": dict(zip(class_names, values, strict=True)),
        "predicted": class_names[_most_probable(values)],
        "prediction": values,
        "iteration": int(iteration),
    }


def done_query() -> dict[str, Any]:
    """The query for documents that hold a prediction (`DONE`), a fresh copy."""
    return copy.deepcopy(DONE)


def present_synapse_ids(collection: Collection) -> set[int]:
    """Synapse ids whose document holds a prediction (not synister's pre-created ones)."""
    return {d["synapse_id"] for d in collection.find(done_query(), {"_id": 0, "synapse_id": 1})}


def missing_synapse_ids(collection: Collection, expected: Iterable[int]) -> list[int]:
    """Expected synapse ids without a prediction yet (no document, or one still to do), in
    the order given."""
    present = present_synapse_ids(collection)
    return [i for i in expected if i not in present]


def collection_state(collection: Collection, expected: Iterable[int]) -> CollectionState:
    """ "empty": no document at all; "complete": every expected synapse has a prediction;
    else "incomplete" (a killed run, or synister's pre-created documents)."""
    expected_ids = set(expected)
    present = present_synapse_ids(collection)
    if not present and collection.find_one({}, {"_id": 1}) is None:
        return "empty"
    return "complete" if expected_ids <= present else "incomplete"


def prepare_collection(
    db: Database, name: str, expected: Sequence[int], overwrite: bool
) -> tuple[Collection, list[int]]:
    """Open `name` for a prediction run over `expected` synapse ids; returns the collection
    and the ids still to predict. A complete collection is refused unless `overwrite`
    (which drops it); an incomplete one is resumed (synister's pre-created documents are
    filled in place)."""
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
    """Write prediction documents; returns how many synapses got their prediction now.

    One unordered insert of them all (the fast path: upserts are several times slower on
    the embedded server). A synapse that already has a document is refused by the unique
    `synapse_id` index; that document is then filled in place when it is still to do
    (synister's pre-created one) and left alone when it holds a prediction (a resumed
    batch), so a synapse never has two documents."""
    if not documents:
        return 0
    try:
        # copies: insert_many adds `_id` to what it is given
        return len(collection.insert_many([dict(d) for d in documents], ordered=False).inserted_ids)
    except BulkWriteError as error:
        details = error.details
        errors = details.get("writeErrors", [])
        _raise_write_errors(collection, [e for e in errors if e.get("code") != DUPLICATE_KEY])
        inserted = int(details.get("nInserted", 0))
    return inserted + _fill_in_place(collection, [documents[e["index"]] for e in errors])


def _fill_in_place(collection: Collection, documents: list[dict[str, Any]]) -> int:
    """Set each document's fields on its synapse's document if that one is still to do."""
    if not documents:
        return 0
    requests = [
        UpdateOne(
            {"synapse_id": d["synapse_id"], **TO_DO},
            {"$set": {k: v for k, v in d.items() if k != "_id"}},
        )
        for d in documents
    ]
    try:
        return collection.bulk_write(requests, ordered=False).matched_count
    except BulkWriteError as error:
        _raise_write_errors(collection, error.details.get("writeErrors", []))
        raise  # not reached: there were errors


def _raise_write_errors(collection: Collection, errors: list[dict[str, Any]]) -> None:
    if errors:
        first = errors[0]
        raise ConnectoError(
            f"{collection.full_name}: {len(errors)} prediction(s) not written: "
            f"{first.get('errmsg', first)}"
        ) from None


# ---------------------------------------------------------------- reading


def data_database_of(collection: Collection) -> Database:
    """The data database of a prediction collection: its database's name without the
    `_predictions` suffix (`predictions_database_name`)."""
    name = collection.database.name
    if not name.endswith(PREDICTIONS_SUFFIX) or name == PREDICTIONS_SUFFIX:
        raise ConnectoError(
            f"{collection.full_name}: not in a `<data_db>{PREDICTIONS_SUFFIX}` database, so "
            "the data database with the synapses' skeletons and classes is unknown"
        )
    return collection.database.client[name[: -len(PREDICTIONS_SUFFIX)]]


def read_predictions(
    collection: Collection,
    class_names: Sequence[str] | None = None,
    data_db: Database | None = None,
) -> list[dict[str, Any]]:
    """The documents of `collection` that hold a prediction, in connecto's layout; those
    still to do (synister's `prediction: None`) are left out.

    synister's documents (`{synapse_id, prediction: [p, ...]}`) get `probabilities` and
    `predicted` from `class_names`, the order of the setup's `synapse_types` (default: the
    class order of the collection's connecto documents), and `skeleton_id` and `label`
    (the true class) from the synapses and skeletons of `data_db` (default:
    `data_database_of(collection)`). A synapse whose class is none of `class_names` gets
    `label` None and its class under `OTHER_CLASS`."""
    documents = list(collection.find(done_query(), {"_id": 0}))
    lists = [d for d in documents if d.get("probabilities") is None]
    if not lists:
        return documents
    names = list(class_names) if class_names else _class_order(documents)
    if names is None:
        raise ConnectoError(
            f"{collection.full_name}: synister's predictions are lists without class names; "
            "give them in synapse_types order with --synapse-types gaba,acetylcholine,..."
        )
    for document in lists:
        _name_probabilities(collection, document, names)
    unplaced = [d for d in documents if "skeleton_id" not in d or "label" not in d]
    if unplaced:
        _place_in_data(collection, unplaced, names, data_db)
    return documents


def _class_order(documents: list[dict[str, Any]]) -> list[str] | None:
    for document in documents:
        if document.get("probabilities"):
            return list(document["probabilities"])
    return None


def _name_probabilities(collection: Collection, document: dict[str, Any], names: list[str]) -> None:
    """`probabilities` and `predicted` of a synister document, from its `prediction`."""
    values = document["prediction"]
    if not isinstance(values, list) or len(values) != len(names):
        length = len(values) if isinstance(values, list) else type(values).__name__
        raise ConnectoError(
            f"{collection.full_name}: synapse {document['synapse_id']} has a prediction of "
            f"length {length} but there are {len(names)} classes {names}"
        )
    floats = [float(v) for v in values]
    document["probabilities"] = dict(zip(names, floats, strict=True))
    document["predicted"] = names[_most_probable(floats)]


def _place_in_data(
    collection: Collection,
    documents: list[dict[str, Any]],
    names: list[str],
    data_db: Database | None,
) -> None:
    """`skeleton_id` and `label` (the true class, or None) from the data database."""
    data = data_db if data_db is not None else data_database_of(collection)
    ids = [d["synapse_id"] for d in documents]
    synapses: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), SYNAPSE_SOURCE_CHUNK):
        chunk = ids[start : start + SYNAPSE_SOURCE_CHUNK]
        projection = {"_id": 0, "synapse_id": 1, "skeleton_id": 1, "label": 1}
        for synapse in data[SYNAPSES].find({"synapse_id": {"$in": chunk}}, projection):
            synapses[synapse["synapse_id"]] = synapse
    absent = [i for i in ids if i not in synapses]
    if absent:
        raise ConnectoError(
            f"{collection.full_name}: {len(absent)} predicted synapse(s) are not in "
            f"{data.name}.{SYNAPSES} (e.g. {absent[:5]})"
        )
    skeleton_class = class_of_skeletons(data)
    wanted = set(names)
    for document in documents:
        synapse = synapses[document["synapse_id"]]
        document.setdefault("skeleton_id", synapse["skeleton_id"])
        if "label" in document:
            continue
        name = synapse_class(synapse, skeleton_class)
        document["label"] = name if name in wanted else None
        if name is not None and name not in wanted:
            document[OTHER_CLASS] = name


# ---------------------------------------------------------------- migration


# connecto's documents from before `prediction`: probabilities, no list
UNMIGRATED: dict[str, Any] = {"probabilities": {"$ne": None}, "prediction": None}
# `prediction` = the values of `probabilities` in the dict's key order, on the server
PREDICTION_FROM_DICT = [
    {"$set": {"prediction": {"$map": {"input": {"$objectToArray": "$probabilities"},
                                      "in": "$$this.v"}}}}
]  # fmt: skip


def migrate_prediction_collections(
    db: Database, class_names_by_collection: dict[str, list[str]] | None = None
) -> int:
    """Give connecto's documents written before `prediction` existed (with `probabilities`
    but no `prediction`) synister's `prediction` list: the probabilities in the class
    order, which is the order of the dict's keys (or `class_names_by_collection[name]`
    where given, which must name the same classes). `db` is a predictions database, or the
    data database whose `_predictions` database is meant. Returns how many documents were
    updated; a second run updates none."""
    if not db.name.endswith(PREDICTIONS_SUFFIX):
        db = db.client[predictions_database_name(db.name)]
    given = class_names_by_collection or {}
    updated = 0
    for name in sorted(db.list_collection_names()):
        if name.startswith("system."):
            continue
        if given.get(name):
            updated += _migrate_in_order(db[name], given[name])
        else:  # one update on the server: several times faster than one per document
            updated += db[name].update_many(UNMIGRATED, PREDICTION_FROM_DICT).modified_count
    return updated


def _migrate_in_order(collection: Collection, order: list[str]) -> int:
    requests = []
    for document in collection.find(UNMIGRATED, {"synapse_id": 1, "probabilities": 1}):
        probabilities = document["probabilities"]
        if set(order) != set(probabilities) or len(order) != len(probabilities):
            raise ConnectoError(
                f"{collection.full_name}: synapse {document.get('synapse_id')} has "
                f"probabilities for {list(probabilities)}, not for the classes {order}"
            )
        values = [float(probabilities[c]) for c in order]
        requests.append(UpdateOne({"_id": document["_id"]}, {"$set": {"prediction": values}}))
    updated = 0
    for start in range(0, len(requests), 1000):
        result = collection.bulk_write(requests[start : start + 1000], ordered=False)
        updated += result.modified_count
    return updated


# ---------------------------------------------------------------- run tracking


def track_prediction_run(db: Database, setup_dir: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Create or update the `predictions` tracking document of a predict setup."""
    ensure_indexes(db)
    return upsert_document(db[PREDICTIONS], {"setup_dir": setup_dir}, fields)


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


def _tracked_owner(document: dict[str, Any]) -> dict[str, str]:
    owner = document.get("owner") or {}
    return {
        "setup": owner.get("setup") or str(Path(document["setup_dir"]).resolve()),
        "checkpoint": owner.get("checkpoint", document.get("checkpoint")),
    }


def refuse_foreign_collection(db: Database, setup_dir: Path, config: PredictConfig) -> None:
    """Raise unless the setup's collection is unclaimed or already its own: resuming or
    overwriting another setup's collection would mix or destroy that setup's results."""
    database, name = prediction_target(config)
    setup = str(Path(setup_dir).resolve())
    checkpoint = str(Path(config.train_checkpoint).resolve())
    claim = {"key": setup, "setup": setup, "checkpoint": checkpoint}
    tracked = db[PREDICTIONS].find({"predictions_db": database, "collection": name})
    # tracking documents written before claims existed name their owner too
    holder = next((o for o in map(_tracked_owner, tracked) if o["setup"] != setup), None)
    holder = holder or claim_collection(db, database, name, claim)
    if holder is not None:
        raise ConnectoError(
            f"{database}.{name} belongs to predict setup {holder['setup']} "
            f"(checkpoint {holder.get('checkpoint')}), not to "
            f"{setup}: setups with the same experiment name and train id under different "
            "base directories share collection names; rename one experiment"
        )
