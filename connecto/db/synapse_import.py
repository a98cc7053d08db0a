"""Imports into a data database's `synapses`, `skeletons`, `hemi_lineages`.

Every import is validated in memory first (`connecto.db.synapse_rows`) and written
all-or-nothing (see `_write` and `connecto.db.import_journal`); the readers in
`connecto.db.synapse_readers` supply the documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError
from tqdm import tqdm

from connecto import ConnectoError
from connecto.db.client import brief_error, retry_write
from connecto.db.import_journal import ImportJournal, recover_imports
from connecto.db.schema import HEMI_LINEAGES, SKELETONS, SYNAPSES, init_database
from connecto.db.synapse_readers import read_synapse_csvs, read_synister_dir
from connecto.db.synapse_rows import ID_FIELD, Problems, SynapseData, clean_document

__all__ = ["ImportReport", "import_csv", "import_synister", "write_synapse_data"]

WRITE_CHUNK = 2000  # short server calls: progress, and little to redo after a dropped link
ORDER = (HEMI_LINEAGES, SKELETONS, SYNAPSES)  # referenced documents before their referrers

Doc = dict[str, Any]
Changes = tuple[list[Doc], list[tuple[Doc, Doc]]]  # (to insert, (new, old) pairs to replace)
Plan = dict[str, Changes]  # per collection
Cleaned = dict[str, list[tuple[Doc, str]]]  # per collection: (document, origin)


@dataclass
class ImportReport:
    """Per collection: documents inserted, already identical, and replaced (`--replace`)."""

    inserted: dict[str, int] = field(default_factory=dict)
    unchanged: dict[str, int] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return "; ".join(
            f"{c}: {self.inserted.get(c, 0)} inserted, {self.unchanged.get(c, 0)} unchanged, "
            f"{self.replaced.get(c, 0)} replaced"
            for c in (SYNAPSES, SKELETONS, HEMI_LINEAGES)
        )


# --- validation against the data and the database -----------------------------------------------


def _existing(coll: Collection, id_field: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Existing documents among `ids`, keyed by id."""
    if not ids:
        return {}
    count = coll.estimated_document_count()
    if count == 0:
        return {}
    wanted = set(ids)
    # A scan beats `$in` lookups unless the import is a small share of the collection
    # (on the embedded server a 1000-id `$in` costs about as much as scanning 20,000 documents).
    if len(ids) * 20 >= count:
        return {d[id_field]: d for d in coll.find({}) if d[id_field] in wanted}
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 1000):
        for doc in coll.find({id_field: {"$in": ids[start : start + 1000]}}):
            found[doc[id_field]] = doc
    return found


def _differences(new: dict[str, Any], old: dict[str, Any]) -> list[str]:
    """Fields of `new` that `old` holds differently (fields absent from `new` are kept)."""
    diffs = []
    for key, value in new.items():
        if key == "splits":
            old_splits = old.get("splits") or {}
            diffs += [
                f"splits.{s}: {old_splits.get(s)!r} -> {p!r}"
                for s, p in value.items()
                if old_splits.get(s) != p
            ]
        elif old.get(key) != value:
            diffs.append(f"{key}: {old.get(key)!r} -> {value!r}")
    return diffs


def _changes(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The `$set` replacing `old` by `new`: splits the import does not name are kept."""
    fields = {k: v for k, v in new.items() if k != "splits"}
    old_splits = old.get("splits")
    if not isinstance(old_splits, dict):  # absent, or synister's null
        return {**fields, "splits": new.get("splits", {})}
    return fields | {f"splits.{name}": part for name, part in new.get("splits", {}).items()}


def _clean_all(data: SynapseData, problems: Problems) -> Cleaned:
    """Every document normalised; bad ones and repeated ids become problems."""
    clean: Cleaned = {}
    for collection in ORDER:
        id_field = ID_FIELD[collection]
        first_seen: dict[int, str] = {}
        clean[collection] = []
        for doc, origin in zip(data.docs(collection), data.origins[collection], strict=True):
            try:
                cleaned = clean_document(collection, doc)
            except ValueError as error:
                problems.add(origin, str(error))
                continue
            key = cleaned[id_field]
            if key in first_seen:
                problems.add(origin, f"duplicate {id_field} {key} (first at {first_seen[key]})")
                continue
            first_seen[key] = origin
            clean[collection].append((cleaned, origin))
    return clean


def _known(db: Database, clean: Cleaned, collection: str, ids: set[int]) -> set[int]:
    """The ids of `collection` in this import or already in the database (of those asked)."""
    field_name = ID_FIELD[collection]
    imported = {d[field_name] for d, _ in clean[collection]}
    missing = list(ids - imported)
    if not missing:
        return imported
    query = {field_name: {"$in": missing}}
    return imported | {d[field_name] for d in db[collection].find(query, {field_name: 1})}


def _check_references(db: Database, clean: Cleaned, problems: Problems) -> None:
    """Synapses need a known skeleton; skeletons with a hemilineage, a known one."""
    skeleton_ids = _known(db, clean, SKELETONS, {d["skeleton_id"] for d, _ in clean[SYNAPSES]})
    for doc, origin in clean[SYNAPSES]:
        if doc["skeleton_id"] not in skeleton_ids:
            problems.add(origin, f"synapse {doc['synapse_id']} of unknown skeleton "
                         f"{doc['skeleton_id']}")  # fmt: skip
    referenced = {d["hemi_lineage_id"] for d, _ in clean[SKELETONS]} - {None}
    hemi_lineage_ids = _known(db, clean, HEMI_LINEAGES, referenced)
    for doc, origin in clean[SKELETONS]:
        hemi_lineage = doc["hemi_lineage_id"]
        if hemi_lineage is not None and hemi_lineage not in hemi_lineage_ids:
            problems.add(
                origin, f"skeleton {doc['skeleton_id']} of unknown hemi lineage {hemi_lineage}"
            )


def _plan(db: Database, clean: Cleaned, replace: bool, problems: Problems) -> Plan:
    """What to insert and replace; documents differing from the database without `replace`
    become problems."""
    plan: Plan = {}
    for collection in ORDER:
        id_field = ID_FIELD[collection]
        docs = clean[collection]
        existing = _existing(db[collection], id_field, [d[id_field] for d, _ in docs])
        inserts: list[Doc] = []
        replacements: list[tuple[Doc, Doc]] = []
        for doc, origin in docs:
            old = existing.get(doc[id_field])
            if old is None:
                inserts.append(doc)
                continue
            diffs = _differences(doc, old)
            if diffs and replace:
                replacements.append((doc, old))
            elif diffs:
                problems.add(
                    origin,
                    f"{id_field} {doc[id_field]} differs from the database "
                    f"({', '.join(diffs[:3])}); use --replace to overwrite",
                )
        plan[collection] = (inserts, replacements)
    return plan


def _validate(db: Database, data: SynapseData, replace: bool) -> Plan:
    """Check everything; ConnectoError listing the problems, else what to write."""
    problems = Problems()
    clean = _clean_all(data, problems)
    _check_references(db, clean, problems)
    problems.raise_if_any("import")
    plan = _plan(db, clean, replace, problems)
    problems.raise_if_any("import")
    return plan


# --- writing ------------------------------------------------------------------------------------


def _report(data: SynapseData, plan: Plan) -> ImportReport:
    report = ImportReport()
    for collection, (inserts, replacements) in plan.items():
        report.inserted[collection] = len(inserts)
        report.replaced[collection] = len(replacements)
        report.unchanged[collection] = len(data.docs(collection)) - len(inserts) - len(replacements)
    return report


def _write(
    db: Database, data: SynapseData, replace: bool, progress: bool, what: str
) -> ImportReport:
    """Validate, then write all-or-nothing (see `connecto.db.import_journal`).

    Nothing is written until every document has passed validation, so a failure can only
    come from the server, the disk or a killed process. Writing straight into the target
    collections keeps the speed of plain `insert_many`; the journal records each chunk's
    `_id`s (or the documents it replaces) before the chunk is written.
    """
    recover_imports(db)  # an earlier import cut short changes what exists
    init_database(db)
    plan = _validate(db, data, replace)
    report = _report(data, plan)
    total = sum(len(i) + len(r) for i, r in plan.values())
    if total == 0:
        return report
    journal = ImportJournal(db, what)
    written = 0
    bar = tqdm(total=total, desc="import", unit="doc", disable=not progress)
    try:
        journal.begin()
        for collection in ORDER:
            for count in _write_collection(db[collection], journal, plan[collection]):
                written += count
                bar.update(count)
        journal.commit()
    except BaseException as error:
        bar.close()
        raise _undo(db, journal, error, written, total) from error
    bar.close()
    return report


def _write_collection(coll: Collection, journal: ImportJournal, changes: Changes) -> Iterator[int]:
    """Insert and replace in chunks, each recorded in the journal before it is written;
    yields the number of documents of each chunk once written."""
    inserts, replacements = changes
    for chunk in _chunks(inserts, WRITE_CHUNK):
        journal.will_insert(coll.name, chunk)
        _insert(coll, chunk)
        yield len(chunk)
    for pairs in _chunks(replacements, WRITE_CHUNK):
        journal.will_replace(coll.name, [old for _, old in pairs])
        updates = [
            UpdateOne({"_id": old["_id"]}, {"$set": _changes(new, old)}) for new, old in pairs
        ]
        retry_write(partial(coll.bulk_write, updates))
        yield len(pairs)


def _undo(
    db: Database, journal: ImportJournal, error: BaseException, written: int, total: int
) -> BaseException:
    """Roll the import back now; the error to raise says what happened and what to run."""
    stopped = f"import into database {db.name!r} stopped after {written} of {total} documents"
    try:
        journal.rollback()
    except PyMongoError as failure:
        return ConnectoError(
            f"{stopped} ({brief_error(error)}) and cannot be undone now "
            f"({brief_error(failure)}): the next import into {db.name!r}, `connecto db stats "
            f"--db {db.name}` or `connecto db recover --db {db.name}` rolls it back once the "
            "server answers; then run this import again"
        )
    if isinstance(error, Exception):
        return ConnectoError(
            f"{stopped} ({brief_error(error)}); what it had written was removed, "
            "the database is as before"
        )
    return error


@dataclass
class _ResumableInsert:
    """insert_many of documents that carry their `_id`; after a dropped connection only
    the documents that did not land are sent again."""

    coll: Collection
    pending: list[dict[str, Any]]

    def __call__(self) -> None:
        if self.pending:
            self.coll.insert_many(self.pending, ordered=False)

    def drop_landed(self) -> None:
        ids = [d["_id"] for d in self.pending]
        landed = {d["_id"] for d in self.coll.find({"_id": {"$in": ids}}, {"_id": 1})}
        self.pending = [d for d in self.pending if d["_id"] not in landed]


def _insert(coll: Collection, chunk: list[dict[str, Any]]) -> None:
    insert = _ResumableInsert(coll, chunk)
    retry_write(insert, before_retry=insert.drop_landed)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- entry points -------------------------------------------------------------------------------


def write_synapse_data(
    db: Database,
    synapses: list[dict],
    skeletons: list[dict],
    hemi_lineages: list[dict] | None = None,
    replace: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Validate and write synapses, skeletons and hemi lineages, all-or-nothing.

    Raises ConnectoError listing the problems (bad fields, duplicate ids, synapses of unknown
    skeletons, data that differs from the database unless `replace`) before writing anything.
    Writing identical data again changes nothing.
    """
    data = SynapseData()
    for collection, docs in (
        (SYNAPSES, synapses),
        (SKELETONS, skeletons),
        (HEMI_LINEAGES, hemi_lineages or []),
    ):
        for index, doc in enumerate(docs):
            data.add(collection, doc, f"{collection}[{index}]")
    return _write(db, data, replace, progress, "write_synapse_data")


def import_synister(
    db: Database, directory: Path, replace: bool = False, progress: bool = True
) -> ImportReport:
    """`connecto db import synister DIR`."""
    data = read_synister_dir(directory)
    return _write(db, data, replace, progress, f"synister import of {directory}")


def import_csv(
    db: Database,
    files: list[Path],
    voxel_size: tuple[float, float, float],
    nt: str | None = None,
    nt_from_filename: bool = False,
    replace: bool = False,
    progress: bool = True,
    class_column: str | None = None,
    class_from_filename: bool = False,
) -> ImportReport:
    """`connecto db import csv FILE ...`: bodies become skeletons; without a transmitter,
    bodies already in the database keep theirs. `class_column` / `class_from_filename` give
    each synapse its own class (`label`); see `read_synapse_csvs`."""
    data = read_synapse_csvs(
        files, voxel_size, nt, nt_from_filename, class_column, class_from_filename
    )
    recover_imports(db)
    if not nt and not nt_from_filename and data.skeletons:
        ids = [d["skeleton_id"] for d in data.skeletons]
        known = set(_existing(db[SKELETONS], "skeleton_id", ids))
        keep = [i for i, d in enumerate(data.skeletons) if d["skeleton_id"] not in known]
        origins = data.origins[SKELETONS]
        data.skeletons = [data.skeletons[i] for i in keep]
        data.origins[SKELETONS] = [origins[i] for i in keep]
    return _write(db, data, replace, progress, f"CSV import of {', '.join(map(str, files))}")
