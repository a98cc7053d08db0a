"""`connecto db migrate`: convert a data database from connecto's first layout to
synister's, which connecto now writes.

First layout -> now: collection `hemilineages` -> `hemi_lineages`, its `name` ->
`hemi_lineage_name`, `hemilineage_id` -> `hemi_lineage_id` (there and on skeletons),
unknown transmitters `[]` -> null, `splits: {}` on synapses without one, and synister's
`prediction` list beside `probabilities` in the prediction collections.

Every step is idempotent and the old collection is renamed last (its presence is how the
first layout is recognised), so a migration cut short is finished by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.predictions import migrate_prediction_collections
from connecto.db.schema import (
    DATA_COLLECTIONS,
    HEMI_LINEAGES,
    OLD_HEMILINEAGES,
    SKELETONS,
    SYNAPSES,
    init_database,
)
from connecto.names import predictions_database_name

OLD_ID = "hemilineage_id"


@dataclass
class MigrationReport:
    """Documents changed per step (all zero: the database was already current)."""

    changed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.changed.values())

    def summary(self) -> str:
        if not self.total:
            return "already in the current layout; nothing changed"
        return "; ".join(f"{what}: {count}" for what, count in self.changed.items() if count)


def _drop_old_indexes(db: Database, existing: set[str]) -> None:
    """Indexes on the old id field: a unique one would refuse the renamed documents."""
    for name in {SKELETONS, OLD_HEMILINEAGES} & existing:
        for info in list(db[name].list_indexes()):
            if OLD_ID in info["key"]:
                db[name].drop_index(info["name"])


def _rename_collection(db: Database) -> int:
    names = set(db.list_collection_names())
    if OLD_HEMILINEAGES not in names:
        return 0
    if HEMI_LINEAGES in names and db[HEMI_LINEAGES].estimated_document_count():
        raise ConnectoError(
            f"database {db.name!r} holds both {OLD_HEMILINEAGES!r} and {HEMI_LINEAGES!r}; "
            f"merge them by hand (connecto migrates {OLD_HEMILINEAGES!r} into a new "
            f"{HEMI_LINEAGES!r})"
        )
    if HEMI_LINEAGES in names:
        db.drop_collection(HEMI_LINEAGES)  # empty
    count = db[OLD_HEMILINEAGES].estimated_document_count()
    db[OLD_HEMILINEAGES].rename(HEMI_LINEAGES)
    return count


def migrate(db: Database, predictions: Database | None = None) -> MigrationReport:
    """Convert `db` (and its predictions database) to the current layout."""
    if predictions is None:
        predictions = db.client[predictions_database_name(db.name)]
    existing = set(db.list_collection_names())
    for name in (*DATA_COLLECTIONS, OLD_HEMILINEAGES):
        if name in existing:  # the old validators would refuse the renamed fields
            db.command("collMod", name, validator={}, validationLevel="off")
    _drop_old_indexes(db, existing)
    report = MigrationReport()
    changed = report.changed
    rename_id = {"$rename": {OLD_ID: "hemi_lineage_id"}}
    old_id = {OLD_ID: {"$exists": True}}
    changed["skeletons: hemi_lineage_id"] = (
        db[SKELETONS].update_many(old_id, rename_id).modified_count
    )
    if OLD_HEMILINEAGES in existing:  # some servers create a collection an update names
        changed["hemi lineages: fields renamed"] = (
            db[OLD_HEMILINEAGES]
            .update_many(
                {"$or": [old_id, {"name": {"$exists": True}}]},
                {"$rename": {OLD_ID: "hemi_lineage_id", "name": "hemi_lineage_name"}},
            )
            .modified_count
        )
    changed["skeletons: unknown transmitter [] -> null"] = (
        db[SKELETONS].update_many({"nt_known": {"$size": 0}}, {"$set": {"nt_known": None}})
    ).modified_count
    changed["synapses: splits {} added"] = (
        db[SYNAPSES].update_many({"splits": {"$exists": False}}, {"$set": {"splits": {}}})
    ).modified_count
    changed["hemi lineages: collection renamed"] = _rename_collection(db)
    init_database(db)  # validators and indexes of the current layout
    changed["predictions: prediction lists added"] = migrate_prediction_collections(predictions)
    return report
