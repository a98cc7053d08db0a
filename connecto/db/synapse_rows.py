"""What a synapse, skeleton, hemi lineage or CSV row must hold: pydantic models per row.

Field types are annotated with their own converters (not pydantic's lax coercions), so
ids stay int64 from ints or digit strings only, coordinates finite numbers, and error
messages name the field and the bad value. `Problems` gathers them with their origins.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, get_args

from bson.int64 import Int64
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from connecto import ConnectoError
from connecto.config import SplitPart
from connecto.db.schema import HEMI_LINEAGES, SKELETONS, SYNAPSES
from connecto.names import is_valid_name

PARTS: tuple[str, ...] = get_args(SplitPart)
ID_FIELD = {SYNAPSES: "synapse_id", SKELETONS: "skeleton_id", HEMI_LINEAGES: "hemi_lineage_id"}
MAX_LISTED = 20
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
    hemi_lineages: list[dict[str, Any]] = field(default_factory=list)
    origins: dict[str, list[str]] = field(
        default_factory=lambda: {SYNAPSES: [], SKELETONS: [], HEMI_LINEAGES: []}
    )

    def docs(self, collection: str) -> list[dict[str, Any]]:
        by_name = {SYNAPSES: self.synapses, SKELETONS: self.skeletons}
        return by_name.get(collection, self.hemi_lineages)

    def add(self, collection: str, doc: dict[str, Any], origin: str) -> None:
        self.docs(collection).append(doc)
        self.origins[collection].append(origin)


# --- field converters (the annotated types below) -------------------------------------------


def as_id(value: Any) -> Int64:
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


def as_float(value: Any) -> float:
    """A finite float from a number or numeric text; booleans are no numbers here."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _as_names(value: Any) -> list[str]:
    """One name or a list of non-empty names."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{value!r} is not a list of names")
    return list(value)


def _as_transmitters(value: Any) -> list[str] | None:
    """Known transmitters; none known is synister's null (an empty list reads the same)."""
    return _as_names(value) or None


def _as_text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


def _as_label(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a class name")
    return value


def _as_prepost(value: Any) -> str:
    if value not in ("pre", "post"):
        raise ValueError(f"{value!r} is not 'pre' or 'post'")
    return value


def _as_splits(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        is_valid_name(k) and v in PARTS for k, v in value.items()
    ):
        raise ValueError(f"{value!r} is not {{split name: {'|'.join(PARTS)}}}")
    return value


Id = Annotated[int, PlainValidator(as_id)]
Number = Annotated[float, PlainValidator(as_float)]
Names = Annotated[list[str], PlainValidator(_as_names)]
Text = Annotated[str, PlainValidator(_as_text)]


def check_field_names(value: Any, prefix: str = "") -> None:
    """Names MongoDB would read as operators or paths (`$where`, `a.b`) are refused, at any
    depth, rather than stored as given."""
    if isinstance(value, list):
        for item in value:
            check_field_names(item, prefix)
    if not isinstance(value, dict):
        return
    for name, inner in value.items():
        if not isinstance(name, str) or not name or name[0] == "$" or "." in name or "\0" in name:
            raise ValueError(
                f"field name {prefix + str(name)!r}: may not be empty, start with '$' or hold '.'"
            )
        check_field_names(inner, f"{prefix}{name}.")


# --- row models ---------------------------------------------------------------------------------


class _Document(BaseModel):
    """Checked fields of one document; other fields pass through unchanged."""

    model_config = ConfigDict(extra="ignore")
    # written even when absent from the input (with their defaults)
    ALWAYS_WRITTEN: ClassVar[tuple[str, ...]] = ()

    def apply_to(self, doc: dict[str, Any]) -> None:
        """Put the normalised values into `doc`, keeping its field order."""
        for name in type(self).model_fields:
            if name in self.model_fields_set or name in self.ALWAYS_WRITTEN:
                doc[name] = getattr(self, name)


class SynapseRow(_Document):
    synapse_id: Id
    x: Number
    y: Number
    z: Number
    skeleton_id: Id
    confidence: Number | None = None
    brain_region: Text | None = None
    prepost: Annotated[str, PlainValidator(_as_prepost)] | None = None
    # the synapse's own class (synister's field); without it, its skeleton's transmitter
    label: Annotated[str, PlainValidator(_as_label)] | None = None
    # on every synapse, `{}` before any split: synister's readers index it unconditionally
    splits: Annotated[dict[str, str], PlainValidator(_as_splits)] = Field(default_factory=dict)
    ALWAYS_WRITTEN = ("splits",)


class SkeletonRow(_Document):
    # synister reads both on every skeleton
    ALWAYS_WRITTEN = ("nt_known", "hemi_lineage_id")

    skeleton_id: Id
    nt_known: Annotated[list[str] | None, PlainValidator(_as_transmitters)] = None
    hemi_lineage_id: Id | None = None


class HemiLineageRow(_Document):
    ALWAYS_WRITTEN = ("nt_guess",)

    hemi_lineage_id: Id
    # validated even when absent: "field 'hemi_lineage_name': None is not a string"
    hemi_lineage_name: Text = Field(default=None, validate_default=True)
    nt_guess: Names | None = None


ROW_MODEL: dict[str, type[_Document]] = {
    SYNAPSES: SynapseRow,
    SKELETONS: SkeletonRow,
    HEMI_LINEAGES: HemiLineageRow,
}


class CsvRow(BaseModel):
    """One row of a CSV synapse table (`body,x,y,z[,conf],syn_id`, voxel coordinates)."""

    model_config = ConfigDict(extra="ignore")

    # checked in this order; the first problem of a row is reported
    body: Id
    syn_id: Id
    x: Number
    y: Number
    z: Number
    conf: Number | None = None

    @classmethod
    def parse(cls, row: dict[str | None, Any]) -> CsvRow:
        """The row, an empty `conf` cell as absent; ValueError naming the bad value."""
        cells = {k: v for k, v in row.items() if k != "conf" or v not in (None, "")}
        try:
            return cls.model_validate(cells)
        except ValidationError as error:
            raise ValueError(_cause(error.errors()[0])) from None


def _cause(problem: Any) -> str:
    """The message our converter raised, else pydantic's own."""
    error = problem.get("ctx", {}).get("error")
    return str(error) if error is not None else str(problem["msg"])


def clean_document(collection: str, doc: Any) -> dict[str, Any]:
    """A normalised copy of one document (ids int64, coordinates float); ValueError if bad."""
    if not isinstance(doc, dict):
        raise ValueError(f"expected an object, got {type(doc).__name__}")
    check_field_names(doc)
    # synister writes "None"-like nulls for absent optional fields: drop them
    out = {k: v for k, v in doc.items() if v is not None and k != "_id"}
    try:
        row = ROW_MODEL[collection].model_validate(out)
    except ValidationError as error:
        problem = error.errors()[0]  # fields are checked in order: report the first
        name = problem["loc"][0]
        if problem["type"] == "missing":
            raise ValueError(f"missing field {name!r}") from None
        raise ValueError(f"field {name!r}: {_cause(problem)}") from None
    row.apply_to(out)
    return out
