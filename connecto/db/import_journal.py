"""Imports that stay all-or-nothing when the server, the disk or the importing process fails.

A standalone MongoDB has no multi-document transactions, so an import keeps a journal in
the collection `import_journal` of the data database: a marker first (who imports what),
then, before each chunk it writes, the `_id`s it is about to insert or the documents it is
about to replace. On success the marker is set `committed` and the journal removed. On a
failure the importing process undoes its writes from the journal at once; when it cannot
(the server died, the process was killed), the journal stays on the server, and the next
import into that database, `connecto db stats` or `connecto db recover` rolls the import
back once its process is provably gone. Undoing by `_id` never touches another import's
documents.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from bson import ObjectId
from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database

from connecto.db.client import retry_write
from connecto.processes import process_gone, process_record

JOURNAL = "import_journal"
MARKER = "marker"
WRITING, COMMITTED = "writing", "committed"
UNDO_CHUNK = 1000


def _journal(db: Database) -> Collection:
    # journaled before acknowledging: the record of a write must outlive the write
    return db.get_collection(JOURNAL, write_concern=WriteConcern(w=1, j=True))


class ImportJournal:
    """The journal of one import; `begin` before the first write, `commit` after the last."""

    def __init__(self, db: Database, what: str) -> None:
        self.db = db
        self.what = what
        self.import_id = ObjectId()

    def begin(self) -> None:
        _record(self.db, {
            "_id": self.import_id, "kind": MARKER, "state": WRITING, "what": self.what,
            "started": datetime.now(UTC), **process_record(),
        })  # fmt: skip

    def will_insert(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """Give `docs` their `_id`s and record them, before they are inserted."""
        for doc in docs:
            doc.setdefault("_id", ObjectId())
        self._entry(collection, inserted=[d["_id"] for d in docs])

    def will_replace(self, collection: str, old_docs: list[dict[str, Any]]) -> None:
        """Record the documents as they are, before they are changed."""
        self._entry(collection, replaced=old_docs)

    def _entry(self, collection: str, **change: Any) -> None:
        _record(self.db, {
            "_id": ObjectId(), "kind": "entry", "import_id": self.import_id,
            "collection": collection, **change,
        })  # fmt: skip

    def commit(self) -> None:
        journal = _journal(self.db)
        committed = {"$set": {"state": COMMITTED}}
        retry_write(partial(journal.update_one, {"_id": self.import_id}, committed))
        _forget(journal, self.import_id)

    def rollback(self) -> None:
        rollback(self.db, self.import_id)


def _record(db: Database, doc: dict[str, Any]) -> None:
    """Insert a journal document, idempotently (it carries its `_id`): safe to retry."""
    retry_write(partial(_journal(db).replace_one, {"_id": doc["_id"]}, doc, upsert=True))


def _forget(journal: Collection, import_id: ObjectId) -> None:
    retry_write(partial(journal.delete_many, {"import_id": import_id}))
    retry_write(partial(journal.delete_one, {"_id": import_id}))


def rollback(db: Database, import_id: ObjectId) -> None:
    """Undo an import from its journal, newest change first; safe to repeat after a crash."""
    journal = _journal(db)
    entries = list(journal.find({"import_id": import_id}).sort("_id", -1))
    for entry in entries:
        target = db[entry["collection"]]
        inserted = entry.get("inserted", [])
        for start in range(0, len(inserted), UNDO_CHUNK):
            target.delete_many({"_id": {"$in": inserted[start : start + UNDO_CHUNK]}})
        for old in entry.get("replaced", []):
            target.replace_one({"_id": old["_id"]}, old)
    _forget(journal, import_id)


def _describe(marker: dict[str, Any]) -> str:
    started = marker.get("started")
    when = started.strftime("%Y-%m-%d %H:%M") if isinstance(started, datetime) else "?"
    holder = f"pid {marker.get('pid')} on {marker.get('host')}"
    return f"{marker.get('what', '?')} (started {when} by {holder})"


def unfinished_imports(db: Database) -> list[dict[str, Any]]:
    if JOURNAL not in db.list_collection_names():
        return []
    return list(_journal(db).find({"kind": MARKER}))


def recover_imports(db: Database, force: bool = False) -> tuple[list[str], list[str]]:
    """Finish the bookkeeping of committed imports and roll back unfinished ones whose
    process is provably gone (any unfinished one with `force`). Returns (rolled back,
    left alone because their process may still run) as descriptions."""
    rolled_back, running = [], []
    for marker in unfinished_imports(db):
        if marker.get("state") == COMMITTED:
            _forget(_journal(db), marker["_id"])
        elif force or process_gone(marker):
            rollback(db, marker["_id"])
            rolled_back.append(_describe(marker))
        else:
            running.append(_describe(marker))
    return rolled_back, running
