"""The synapse data of a data database: `synapses`, `skeletons`, `hemilineages`.

Every import is validated in memory first and written all-or-nothing (see `_write`).
Readers for synister's JSON exports and for CSV synapse tables produce the same
`SynapseData`, with each document's origin (file and line) for error messages.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, get_args

from bson.int64 import Int64
from pymongo import UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import AutoReconnect, PyMongoError
from tqdm import tqdm

from connecto import ConnectoError
from connecto.config import SplitPart
from connecto.db.client import RETRIES, brief_error, retry_write
from connecto.db.import_journal import ImportJournal, recover_imports
from connecto.db.schema import HEMILINEAGES, SKELETONS, SYNAPSES, init_database
from connecto.names import is_valid_name

__all__ = [
    "HEMILINEAGES",
    "PARTS",
    "SKELETONS",
    "SYNAPSES",
    "ImportReport",
    "SynapseData",
    "export_synister",
    "import_csv",
    "import_synister",
    "init_database",
    "split_names",
    "synapse_stats",
    "synapses_by_class",
    "write_synapse_data",
]

PARTS: tuple[str, ...] = get_args(SplitPart)
ID_FIELD = {SYNAPSES: "synapse_id", SKELETONS: "skeleton_id", HEMILINEAGES: "hemilineage_id"}
MAX_LISTED = 20
WRITE_CHUNK = 2000  # short server calls: progress, and little to redo after a dropped link
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Problems:
    """Collects validation problems; raises them together (first 20 and a count)."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.messages.append(f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self, what: str) -> None:
        if not self.messages:
            return
        shown = "\n  ".join(self.messages[:MAX_LISTED])
        more = len(self.messages) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ConnectoError(
            f"{what} refused, nothing was written: {len(self.messages)} problem(s)\n  {shown}{tail}"
        )


@dataclass
class SynapseData:
    """Documents to import, each with where it came from (for error messages)."""

    synapses: list[dict[str, Any]] = field(default_factory=list)
    skeletons: list[dict[str, Any]] = field(default_factory=list)
    hemilineages: list[dict[str, Any]] = field(default_factory=list)
    origins: dict[str, list[str]] = field(
        default_factory=lambda: {SYNAPSES: [], SKELETONS: [], HEMILINEAGES: []}
    )

    def docs(self, collection: str) -> list[dict[str, Any]]:
        by_name = {SYNAPSES: self.synapses, SKELETONS: self.skeletons}
        return by_name.get(collection, self.hemilineages)

    def add(self, collection: str, doc: dict[str, Any], origin: str) -> None:
        self.docs(collection).append(doc)
        self.origins[collection].append(origin)


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
            for c in (SYNAPSES, SKELETONS, HEMILINEAGES)
        )


# --- field checks -----------------------------------------------------------------------


def _as_id(value: Any) -> Int64:
    """An int64 id from an int or a string of digits (JSON keys, CSV cells)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer id")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*[-+]?\d+\s*", value):
            raise ValueError(f"{value!r} is not an integer id")
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer id")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} does not fit in 64 bits")
    return Int64(value)


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _as_names(value: Any, nullable: bool) -> list[str] | None:
    if value is None:
        if nullable:
            return None
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{value!r} is not a list of names")
    return list(value)


def _check_field_names(value: Any, prefix: str = "") -> None:
    """Names MongoDB would read as operators or paths (`$where`, `a.b`) are refused, at any
    depth, rather than stored as given."""
    if isinstance(value, list):
        for item in value:
            _check_field_names(item, prefix)
    if not isinstance(value, dict):
        return
    for name, inner in value.items():
        if not isinstance(name, str) or not name or name[0] == "$" or "." in name or "\0" in name:
            raise ValueError(
                f"field name {prefix + str(name)!r}: may not be empty, start with '$' or hold '.'"
            )
        _check_field_names(inner, f"{prefix}{name}.")


def _clean(collection: str, doc: Any) -> dict[str, Any]:
    """A normalised copy of one document (ids int64, coordinates float); ValueError if bad."""
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object, got {type(doc).__name__}")
    _check_field_names(doc)
    # synister writes "None"-like nulls for absent optional fields: drop them
    out = {k: v for k, v in doc.items() if v is not None and k != "_id"}
    checks: list[tuple[str, Any]]
    if collection == SYNAPSES:
        checks = [
            ("synapse_id", _as_id),
            ("x", _as_float),
            ("y", _as_float),
            ("z", _as_float),
            ("skeleton_id", _as_id),
        ]
    elif collection == SKELETONS:
        checks = [("skeleton_id", _as_id)]
    else:
        checks = [("hemilineage_id", _as_id)]
    for name, convert in checks:
        if name not in out:
            raise ValueError(f"missing field {name!r}")
        try:
            out[name] = convert(out[name])
        except ValueError as error:
            raise ValueError(f"field {name!r}: {error}") from None
    if collection == SYNAPSES:
        if "confidence" in out:
            out["confidence"] = _as_float(out["confidence"])
        if "brain_region" in out and not isinstance(out["brain_region"], str):
            raise ValueError(f"field 'brain_region': {out['brain_region']!r} is not a string")
        if "prepost" in out and out["prepost"] not in ("pre", "post"):
            raise ValueError(f"field 'prepost': {out['prepost']!r} is not 'pre' or 'post'")
        splits = out.get("splits", {})
        if not isinstance(splits, dict) or not all(
            is_valid_name(k) and v in PARTS for k, v in splits.items()
        ):
            raise ValueError(f"field 'splits': {splits!r} is not {{split name: {'|'.join(PARTS)}}}")
        if not splits:
            out.pop("splits", None)
    elif collection == SKELETONS:
        out["nt_known"] = _as_names(doc.get("nt_known"), nullable=False)
        hemilineage = doc.get("hemilineage_id")
        out["hemilineage_id"] = None if hemilineage is None else _as_id(hemilineage)
    else:
        if not isinstance(out.get("name"), str):
            raise ValueError(f"field 'name': {out.get('name')!r} is not a string")
        out["nt_guess"] = _as_names(doc.get("nt_guess"), nullable=True)
    return out


# --- writing ------------------------------------------------------------------------------


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


def _validate(db: Database, data: SynapseData, replace: bool) -> dict[str, tuple[list, list]]:
    """Check everything; returns per collection (documents to insert, (new, old) to replace)."""
    problems = Problems()
    clean: dict[str, list[tuple[dict[str, Any], str]]] = {}
    for collection in (HEMILINEAGES, SKELETONS, SYNAPSES):
        id_field = ID_FIELD[collection]
        first_seen: dict[int, str] = {}
        clean[collection] = []
        for doc, origin in zip(data.docs(collection), data.origins[collection], strict=True):
            try:
                cleaned = _clean(collection, doc)
            except ValueError as error:
                problems.add(origin, str(error))
                continue
            key = cleaned[id_field]
            if key in first_seen:
                problems.add(origin, f"duplicate {id_field} {key} (first at {first_seen[key]})")
                continue
            first_seen[key] = origin
            clean[collection].append((cleaned, origin))

    def known(collection: str, ids: set[int]) -> set[int]:
        imported = {d[ID_FIELD[collection]] for d, _ in clean[collection]}
        missing = list(ids - imported)
        if not missing:
            return imported
        field_name = ID_FIELD[collection]
        in_db = {
            d[field_name]
            for d in db[collection].find({field_name: {"$in": missing}}, {field_name: 1})
        }
        return imported | in_db

    skeleton_ids = known(SKELETONS, {d["skeleton_id"] for d, _ in clean[SYNAPSES]})
    for doc, origin in clean[SYNAPSES]:
        if doc["skeleton_id"] not in skeleton_ids:
            problems.add(origin, f"synapse {doc['synapse_id']} of unknown skeleton "
                         f"{doc['skeleton_id']}")  # fmt: skip
    referenced = {d["hemilineage_id"] for d, _ in clean[SKELETONS]} - {None}
    hemilineage_ids = known(HEMILINEAGES, referenced)
    for doc, origin in clean[SKELETONS]:
        if doc["hemilineage_id"] is not None and doc["hemilineage_id"] not in hemilineage_ids:
            problems.add(
                origin,
                f"skeleton {doc['skeleton_id']} of unknown hemilineage {doc['hemilineage_id']}",
            )
    problems.raise_if_any("import")

    plan: dict[str, tuple[list, list]] = {}
    for collection in (HEMILINEAGES, SKELETONS, SYNAPSES):
        id_field = ID_FIELD[collection]
        docs = clean[collection]
        existing = _existing(db[collection], id_field, [d[id_field] for d, _ in docs])
        inserts, replacements = [], []
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
    problems.raise_if_any("import")
    return plan


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
    report = ImportReport()
    for collection, (inserts, replacements) in plan.items():
        report.inserted[collection] = len(inserts)
        report.replaced[collection] = len(replacements)
        report.unchanged[collection] = len(data.docs(collection)) - len(inserts) - len(replacements)
    total = sum(len(i) + len(r) for i, r in plan.values())
    if total == 0:
        return report
    journal = ImportJournal(db, what)
    written = 0
    bar = tqdm(total=total, desc="import", unit="doc", disable=not progress)
    try:
        journal.begin()
        for collection in (HEMILINEAGES, SKELETONS, SYNAPSES):
            inserts, replacements = plan[collection]
            coll = db[collection]
            for chunk in _chunks(inserts, WRITE_CHUNK):
                journal.will_insert(collection, chunk)
                _insert(coll, chunk)
                written += len(chunk)
                bar.update(len(chunk))
            for chunk in _chunks(replacements, WRITE_CHUNK):
                journal.will_replace(collection, [old for _, old in chunk])
                updates = [UpdateOne({"_id": old["_id"]}, {"$set": new}) for new, old in chunk]
                retry_write(partial(coll.bulk_write, updates))
                written += len(chunk)
                bar.update(len(chunk))
        journal.commit()
    except BaseException as error:
        bar.close()
        raise _undo(db, journal, error, written, total) from error
    bar.close()
    return report


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


def _insert(coll: Collection, chunk: list[dict]) -> None:
    """insert_many of documents that carry their `_id`; resumed after a dropped connection
    with the documents that did not land."""
    for attempt in range(RETRIES):
        try:
            coll.insert_many(chunk, ordered=False)
            return
        except AutoReconnect:
            if attempt == RETRIES - 1:
                raise
            time.sleep(1 + attempt)
            ids = [d["_id"] for d in chunk]
            landed = {d["_id"] for d in coll.find({"_id": {"$in": ids}}, {"_id": 1})}
            chunk = [d for d in chunk if d["_id"] not in landed]
            if not chunk:
                return


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_synapse_data(
    db: Database,
    synapses: list[dict],
    skeletons: list[dict],
    hemilineages: list[dict] | None = None,
    replace: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Validate and write synapses, skeletons and hemilineages, all-or-nothing.

    Raises ConnectoError listing the problems (bad fields, duplicate ids, synapses of unknown
    skeletons, data that differs from the database unless `replace`) before writing anything.
    Writing identical data again changes nothing.
    """
    data = SynapseData()
    for collection, docs in (
        (SYNAPSES, synapses),
        (SKELETONS, skeletons),
        (HEMILINEAGES, hemilineages or []),
    ):
        for index, doc in enumerate(docs):
            data.add(collection, doc, f"{collection}[{index}]")
    return _write(db, data, replace, progress, "write_synapse_data")


# --- readers --------------------------------------------------------------------------------

SYNISTER_FILES = {
    SYNAPSES: "synapses*.json",
    SKELETONS: "skeletons*.json",
    HEMILINEAGES: "hemi_lineages*.json",
}
# synister's field names -> ours
SYNISTER_ALIASES = {"hemi_lineage_id": "hemilineage_id", "hemi_lineage_name": "name"}


def read_synister_dir(directory: Path) -> SynapseData:
    """synister JSON exports in `directory`: lists of documents or objects keyed by id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConnectoError(f"{directory}: not a directory")
    data = SynapseData()
    problems = Problems()
    found = False
    for collection, pattern in SYNISTER_FILES.items():
        for path in sorted(directory.glob(pattern)):
            found = True
            try:
                content = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                problems.add(str(path), f"not readable JSON: {error}")
                continue
            for origin, doc in _synister_documents(path, content, ID_FIELD[collection], problems):
                data.add(collection, doc, origin)
    if not found:
        raise ConnectoError(
            f"{directory}: no synister export files ({', '.join(SYNISTER_FILES.values())})"
        )
    problems.raise_if_any("import")
    return data


def _synister_documents(
    path: Path, content: Any, id_field: str, problems: Problems
) -> Iterator[tuple[str, dict[str, Any]]]:
    items: Iterable[tuple[str, Any, Any]]
    if isinstance(content, dict):
        items = ((f"{path}: key {key!r}", key, value) for key, value in content.items())
    elif isinstance(content, list):
        items = ((f"{path}: item {index}", None, value) for index, value in enumerate(content))
    else:
        problems.add(str(path), "expected a list of documents or an object keyed by id")
        return
    for origin, key, doc in items:
        if isinstance(doc, dict):
            doc = {SYNISTER_ALIASES.get(k, k): v for k, v in doc.items()}
            if key is not None:
                if id_field in doc and not _same_id(doc[id_field], key):
                    problems.add(origin, f"{id_field} {doc[id_field]!r} differs from its key")
                    continue
                doc = {id_field: key, **doc}
        yield origin, doc


def _same_id(value: Any, key: str) -> bool:
    """Whether a body's id and its key agree; ids that are no ids at all are for `_clean`."""
    try:
        return _as_id(value) == _as_id(key)
    except ValueError:
        return True


CSV_COLUMNS = ("body", "x", "y", "z", "syn_id")
CSV_HEADER = "body,x,y,z[,conf],syn_id"


def _csv_rows(path: Path, problems: Problems) -> Iterator[tuple[str, dict[str, str]]]:
    """(origin `file:line`, row) of a CSV table; unreadable files, binary contents and
    missing columns become problems."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                problems.add(
                    f"{path}:1",
                    f"missing column(s) {', '.join(missing)} (header {reader.fieldnames})",
                )
                return
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    except OSError as error:
        problems.add(str(path), f"cannot be read: {error.strerror}")
    except (UnicodeDecodeError, csv.Error) as error:
        reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
        problems.add(str(path), f"not a CSV text table ({reason}); expected {CSV_HEADER}")


def read_synapse_csvs(
    files: list[Path],
    voxel_size: tuple[float, float, float],
    nt: str | None = None,
    nt_from_filename: bool = False,
) -> SynapseData:
    """CSV synapse tables (`body,x,y,z[,conf],syn_id`, coordinates in voxels, voxel size
    given z,y,x); each body becomes a skeleton with the transmitter from `nt` or the file name."""
    if nt and nt_from_filename:
        raise ConnectoError("give either --nt or --nt-from-filename, not both")
    if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
        raise ConnectoError(f"voxel size {voxel_size} must be three positive numbers z,y,x")
    vz, vy, vx = voxel_size
    data = SynapseData()
    problems = Problems()
    bodies: dict[int, tuple[str | None, str]] = {}  # body -> (transmitter, first origin)
    for path in map(Path, files):
        transmitter = path.stem if nt_from_filename else nt
        for origin, row in _csv_rows(path, problems):
            try:
                body = _as_id(row["body"])
                doc = {
                    "synapse_id": _as_id(row["syn_id"]),
                    "x": _as_float(row["x"]) * vx,
                    "y": _as_float(row["y"]) * vy,
                    "z": _as_float(row["z"]) * vz,
                    "skeleton_id": body,
                }
                if row.get("conf") not in (None, ""):
                    doc["confidence"] = _as_float(row["conf"])
            except ValueError as error:
                problems.add(origin, str(error))
                continue
            data.add(SYNAPSES, doc, origin)
            if body not in bodies:
                bodies[body] = (transmitter, origin)
                data.add(
                    SKELETONS,
                    {"skeleton_id": body, "nt_known": [transmitter] if transmitter else []},
                    origin,
                )
            elif bodies[body][0] != transmitter:
                problems.add(
                    origin,
                    f"body {body} has transmitter {transmitter!r} here but "
                    f"{bodies[body][0]!r} at {bodies[body][1]}",
                )
    problems.raise_if_any("import")
    return data


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """`8,8,8` or `40x4x4` (z,y,x nanometres) -> a triple of positive numbers."""
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ConnectoError(f"voxel size {text!r}: expected three positive numbers Z,Y,X in nm")
    return values  # type: ignore[return-value]


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
) -> ImportReport:
    """`connecto db import csv FILE ...`: bodies become skeletons; without a transmitter,
    bodies already in the database keep theirs."""
    data = read_synapse_csvs(files, voxel_size, nt, nt_from_filename)
    recover_imports(db)
    if not nt and not nt_from_filename and data.skeletons:
        ids = [d["skeleton_id"] for d in data.skeletons]
        known = set(_existing(db[SKELETONS], "skeleton_id", ids))
        keep = [i for i, d in enumerate(data.skeletons) if d["skeleton_id"] not in known]
        origins = data.origins[SKELETONS]
        data.skeletons = [data.skeletons[i] for i in keep]
        data.origins[SKELETONS] = [origins[i] for i in keep]
    return _write(db, data, replace, progress, f"CSV import of {', '.join(map(str, files))}")


# --- queries, stats, export -------------------------------------------------------------------


def split_names(db: Database) -> list[str]:
    """Names of the splits present on any synapse."""
    names: set[str] = set()
    for doc in db[SYNAPSES].find({"splits": {"$exists": True}}, {"splits": 1, "_id": 0}):
        names.update(doc.get("splits") or {})
    return sorted(names)


def class_of_skeletons(db: Database, classes: list[str] | None = None) -> dict[int, str]:
    """skeleton_id -> transmitter, for skeletons with exactly one known transmitter
    (in `classes` when given)."""
    result = {}
    for doc in db[SKELETONS].find({"nt_known": {"$size": 1}}, {"skeleton_id": 1, "nt_known": 1}):
        name = doc["nt_known"][0]
        if classes is None or name in classes:
            result[doc["skeleton_id"]] = name
    return result


def synapses_by_class(
    db: Database, split_name: str, part: str | None, classes: list[str]
) -> dict[str, list[dict]]:
    """Synapses of `part` of split `split_name` (all parts if None) whose skeleton has exactly
    one known transmitter in `classes`, grouped by class (every class a key)."""
    if part is not None and part not in PARTS:
        raise ConnectoError(f"split part {part!r} is not one of {', '.join(PARTS)}")
    key = f"splits.{split_name}"
    if db[SYNAPSES].find_one({key: {"$exists": True}}, {"_id": 1}) is None:
        known = split_names(db)
        raise ConnectoError(
            f"database {db.name} has no split {split_name!r} "
            f"(splits: {', '.join(known) or 'none'}; `connecto split` makes one)"
        )
    skeleton_class = class_of_skeletons(db, classes)
    grouped: dict[str, list[dict]] = {name: [] for name in classes}
    query = {key: part if part is not None else {"$exists": True}}
    for doc in db[SYNAPSES].find(query, {"_id": 0}):
        name = skeleton_class.get(doc["skeleton_id"])
        if name is not None:
            grouped[name].append(doc)
    return grouped


def _transmitter_label(nt_known: list[str]) -> str:
    return "+".join(sorted(nt_known)) if nt_known else "(unknown)"


def synapse_stats(db: Database) -> dict[str, Any]:
    """Counts per transmitter (synapses and skeletons), per split and part (synapses in
    `splits`, skeletons in `split_skeletons`), per brain region; first, imports cut short
    are rolled back (`rolled_back`) or named when they may still run (`unfinished`)."""
    rolled_back, unfinished = recover_imports(db)
    label = {
        d["skeleton_id"]: _transmitter_label(d.get("nt_known") or [])
        for d in db[SKELETONS].find({}, {"skeleton_id": 1, "nt_known": 1})
    }
    per_nt: Counter[str] = Counter()
    skeletons_with_synapses: dict[str, set[int]] = defaultdict(set)
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    split_skeletons: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    per_region: Counter[str] = Counter()
    total = 0
    projection = {"skeleton_id": 1, "splits": 1, "brain_region": 1, "_id": 0}
    for doc in db[SYNAPSES].find({}, projection):
        total += 1
        name = label.get(doc["skeleton_id"], "(no skeleton)")
        per_nt[name] += 1
        skeletons_with_synapses[name].add(doc["skeleton_id"])
        for split, part in (doc.get("splits") or {}).items():
            per_split[split][part] += 1
            split_skeletons[split][part].add(doc["skeleton_id"])
        per_region[doc.get("brain_region", "(none)")] += 1
    skeleton_counts = Counter(label.values())
    return {
        "synapses": total,
        "skeletons": len(label),
        "hemilineages": db[HEMILINEAGES].count_documents({}),
        "transmitters": {
            name: {
                "synapses": per_nt.get(name, 0),
                "skeletons": skeleton_counts.get(name, 0),
                "skeletons_with_synapses": len(skeletons_with_synapses.get(name, ())),
            }
            for name in sorted(set(per_nt) | set(skeleton_counts))
        },
        "splits": {s: {p: per_split[s].get(p, 0) for p in PARTS} for s in sorted(per_split)},
        "split_skeletons": {
            s: {p: len(split_skeletons[s][p]) for p in PARTS} for s in sorted(per_split)
        },
        "brain_regions": dict(sorted(per_region.items())),
        "rolled_back": rolled_back,
        "unfinished": unfinished,
    }


def export_synister(db: Database, directory: Path) -> dict[str, int]:
    """Write `synapses.json`, `skeletons.json`, `hemi_lineages.json` in synister's keyed form;
    `import_synister` of the folder reproduces the database. Returns counts per file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reverse = {ours: theirs for theirs, ours in SYNISTER_ALIASES.items()}
    counts = {}
    for collection, filename in (
        (SYNAPSES, "synapses.json"),
        (SKELETONS, "skeletons.json"),
        (HEMILINEAGES, "hemi_lineages.json"),
    ):
        id_field = ID_FIELD[collection]
        keyed = {}
        for doc in db[collection].find({}, {"_id": 0}).sort(id_field, 1):
            key = str(doc.pop(id_field))
            keyed[key] = {reverse.get(k, k): v for k, v in doc.items()}
        tmp = directory / f".{filename}.tmp"
        tmp.write_text(json.dumps(keyed))
        tmp.replace(directory / filename)  # never a half-written export
        counts[filename] = len(keyed)
    return counts
