"""JSON-schema validators and indexes of a data database, kept as files in `mongo/`.

The layout is synister's (collections `synapses`, `skeletons`, `hemi_lineages`; its field
names, nulls and integer positions are valid), so synister's code reads a connecto
database and connecto reads one synister wrote.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.database import Database

from connecto import ConnectoError
from connecto.resources import resource_dir

SYNAPSES = "synapses"
SKELETONS = "skeletons"
HEMI_LINEAGES = "hemi_lineages"
DATA_COLLECTIONS = (HEMI_LINEAGES, SKELETONS, SYNAPSES)
# connecto's first layout (`hemilineages`, `hemilineage_id`, `name`); `connecto db migrate`
# converts it. Its imports always created this collection, so its presence tells.
OLD_HEMILINEAGES = "hemilineages"


def require_current_layout(db: Database) -> None:
    """Refuse a database in connecto's first layout, naming the command that converts it."""
    if OLD_HEMILINEAGES in db.list_collection_names():
        raise ConnectoError(
            f"database {db.name!r} is in connecto's first layout (collection "
            f"{OLD_HEMILINEAGES!r}); run `connecto db migrate --db {db.name}` once to "
            "convert it to synister's layout"
        )


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


def _missing_indexes(collection: Collection) -> list[IndexModel]:
    """Our indexes whose keys no index of the collection covers yet. synister's `create`
    makes the same ones, non-unique and sparse, some under other names; MongoDB refuses a
    second index on the same keys, so theirs are kept."""
    present = {tuple(info["key"].items()) for info in collection.list_indexes()}
    wanted = index_models(collection.name)
    return [m for m in wanted if tuple(m.document["key"].items()) not in present]


def init_database(db: Database) -> None:
    """Apply validators and indexes to the data collections; safe to run any number of times."""
    require_current_layout(db)
    existing = set(db.list_collection_names())
    for collection in DATA_COLLECTIONS:
        options = {"validator": validator(collection), "validationLevel": "strict"}
        if collection in existing:
            db.command("collMod", collection, **options)
        else:
            db.create_collection(collection, validationAction="error", **options)
        missing = _missing_indexes(db[collection])
        if missing:
            db[collection].create_indexes(missing)
