"""Readers of synapse tables: synister's JSON exports and CSV tables (`body,x,y,z[,conf],syn_id`).

Both produce `SynapseData`, each document with its origin (file and key, item or line) for
error messages; checking the documents themselves is left to the import.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.db.schema import HEMI_LINEAGES, SKELETONS, SYNAPSES
from connecto.db.synapse_rows import ID_FIELD, CsvRow, Problems, SynapseData, as_id

SYNISTER_FILES = {
    SYNAPSES: "synapses*.json",
    SKELETONS: "skeletons*.json",
    HEMI_LINEAGES: "hemi_lineages*.json",
}
CSV_COLUMNS = ("body", "x", "y", "z", "syn_id")
CSV_HEADER = "body,x,y,z[,conf],syn_id"


# --- synister JSON ------------------------------------------------------------------------------


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
            if key is not None:
                if id_field in doc and not _same_id(doc[id_field], key):
                    problems.add(origin, f"{id_field} {doc[id_field]!r} differs from its key")
                    continue
                doc = {id_field: key, **doc}
        yield origin, doc


def _same_id(value: Any, key: str) -> bool:
    """Whether a body's id and its key agree; ids that are no ids at all are for validation."""
    try:
        return as_id(value) == as_id(key)
    except ValueError:
        return True


# --- CSV tables ---------------------------------------------------------------------------------


def _csv_rows(
    path: Path, problems: Problems, extra_columns: tuple[str, ...] = ()
) -> Iterator[tuple[str, dict[str, str]]]:
    """(origin `file:line`, row) of a CSV table; unreadable files, binary contents and
    missing columns (of CSV_COLUMNS and `extra_columns`) become problems."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            wanted = CSV_COLUMNS + extra_columns
            missing = [c for c in wanted if c not in (reader.fieldnames or [])]
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


def _synapse_of_row(row: CsvRow, voxel_size: tuple[float, float, float]) -> dict[str, Any]:
    """The synapse document of a CSV row, coordinates scaled from voxels to nm."""
    vz, vy, vx = voxel_size
    doc = {
        "synapse_id": row.syn_id,
        "x": row.x * vx,
        "y": row.y * vy,
        "z": row.z * vz,
        "skeleton_id": row.body,
    }
    if row.conf is not None:
        doc["confidence"] = row.conf
    return doc


def read_synapse_csvs(
    files: list[Path],
    voxel_size: tuple[float, float, float],
    nt: str | None = None,
    nt_from_filename: bool = False,
    class_column: str | None = None,
    class_from_filename: bool = False,
) -> SynapseData:
    """CSV synapse tables (`body,x,y,z[,conf],syn_id`, coordinates in voxels, voxel size
    given z,y,x); each body becomes a skeleton.

    Transmitters (`nt` or the file name) belong to bodies: a body must keep one transmitter
    across rows and files. Classes (`class_column` or the file name) belong to synapses,
    stored as their `label`: one body may hold synapses of several classes.
    """
    if nt and nt_from_filename:
        raise ConnectoError("give either --nt or --nt-from-filename, not both")
    if class_column and class_from_filename:
        raise ConnectoError("give either --class-column or --class-from-filename, not both")
    if class_column is not None and not class_column.strip():
        raise ConnectoError("--class-column: give a column name")
    if len(voxel_size) != 3 or not all(v > 0 for v in voxel_size):
        raise ConnectoError(f"voxel size {voxel_size} must be three positive numbers z,y,x")
    data = SynapseData()
    problems = Problems()
    bodies: dict[int, tuple[str | None, str]] = {}  # body -> (transmitter, first origin)
    extra = (class_column,) if class_column else ()
    for path in map(Path, files):
        transmitter = path.stem if nt_from_filename else nt
        for origin, cells in _csv_rows(path, problems, extra):
            try:
                row = CsvRow.parse(cells)
            except ValueError as error:
                problems.add(origin, str(error))
                continue
            synapse = _synapse_of_row(row, voxel_size)
            label = path.stem if class_from_filename else _class_cell(cells, class_column)
            if label is not None:
                if not label:
                    problems.add(origin, f"empty class in column {class_column!r}")
                    continue
                synapse["label"] = label
            data.add(SYNAPSES, synapse, origin)
            body = row.body
            if body not in bodies:
                bodies[body] = (transmitter, origin)
                data.add(
                    SKELETONS,
                    {"skeleton_id": body, "nt_known": [transmitter] if transmitter else None},
                    origin,
                )
            elif bodies[body][0] != transmitter:
                problems.add(
                    origin,
                    f"body {body} has transmitter {transmitter!r} here but "
                    f"{bodies[body][0]!r} at {bodies[body][1]} (a transmitter belongs to the "
                    "whole body; for classes of single synapses use --class-column or "
                    "--class-from-filename)",
                )
    problems.raise_if_any("import")
    return data


def _class_cell(cells: dict[str | None, Any], column: str | None) -> str | None:
    """The stripped class cell of a row ("" when empty), None without a class column."""
    if column is None:
        return None
    value = cells.get(column)
    return value.strip() if isinstance(value, str) else ""


def parse_voxel_size(text: str) -> tuple[float, float, float]:
    """`8,8,8` or `40x4x4` (z,y,x nanometres) -> a triple of positive numbers."""
    try:
        values = tuple(float(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ConnectoError(f"voxel size {text!r}: expected three positive numbers Z,Y,X in nm")
    return values  # type: ignore[return-value]
