"""JSON-schema validators and indexes of a data database, kept as files in `mongo/`."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pymongo import IndexModel
from pymongo.database import Database

from connecto.resources import resource_dir

SYNAPSES = "synapses"
SKELETONS = "skeletons"
HEMILINEAGES = "hemilineages"
DATA_COLLECTIONS = (HEMILINEAGES, SKELETONS, SYNAPSES)


@cache
def validator(collection: str) -> dict[str, Any]:
    path = resource_dir("mongo") / "validators" / f"{collection}.json"
    return json.loads(path.read_text())


@cache
def index_specs() -> dict[str, list[dict[str, Any]]]:
    return json.loads((resource_dir("mongo") / "indexes.json").read_text())


def index_models(collection: str) -> list[IndexModel]:
    return [
        IndexModel(
            [(field, direction) for field, direction in spec["keys"]],
            name=spec["name"],
            unique=spec.get("unique", False),
        )
        for spec in index_specs()[collection]
    ]


def init_database(db: Database) -> None:
    """Apply validators and indexes to the data collections; safe to run any number of times."""
    existing = set(db.list_collection_names())
    for collection in DATA_COLLECTIONS:
        options = {"validator": validator(collection), "validationLevel": "strict"}
        if collection in existing:
            db.command("collMod", collection, **options)
        else:
            db.create_collection(collection, validationAction="error", **options)
        db[collection].create_indexes(index_models(collection))
