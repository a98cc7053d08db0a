"""Reading a data database's `synapses`, `skeletons`, `hemi_lineages`: the synapses of a
split part by class (training and prediction), stats, and export in synister's form.

Imports are in `connecto.db.synapse_import`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.import_journal import recover_imports
from connecto.db.schema import HEMI_LINEAGES, SKELETONS, SYNAPSES, require_current_layout
from connecto.db.synapse_rows import ID_FIELD, PARTS

__all__ = [
    "PARTS",
    "class_of_skeletons",
    "class_query",
    "export_synister",
    "split_names",
    "synapse_class",
    "synapse_stats",
    "synapses_by_class",
]


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


def synapse_class(doc: dict[str, Any], skeleton_class: dict[int, str]) -> str | None:
    """The class of a synapse: its own `label` when it has one, else its skeleton's single
    known transmitter (`skeleton_class`, from `class_of_skeletons(db)`); None if neither.

    The one rule for classes; `class_query` is the same rule as a MongoDB query."""
    label = doc.get("label")
    if label is not None:
        return label
    return skeleton_class.get(doc["skeleton_id"])


def class_query(
    classes: list[str], skeleton_class: dict[int, str], skeletons: list[int] | None = None
) -> dict[str, Any]:
    """A query for the synapses whose `synapse_class` is in `classes` (of `skeletons`
    only, when given)."""
    wanted = set(classes)
    scope = skeleton_class if skeletons is None else skeletons
    by_transmitter = [s for s in scope if skeleton_class.get(s) in wanted]
    labelled: dict[str, Any] = {"label": {"$in": sorted(wanted)}}
    if skeletons is not None:
        labelled["skeleton_id"] = {"$in": list(skeletons)}
    # `None` matches a missing label and synister's null alike
    unlabelled = {"label": None, "skeleton_id": {"$in": by_transmitter}}
    return {"$or": [labelled, unlabelled]}


def synapses_by_class(
    db: Database, split_name: str, part: str | None, classes: list[str]
) -> dict[str, list[dict]]:
    """Synapses of `part` of split `split_name` (all parts if None) whose class
    (`synapse_class`: own label, else the skeleton's one transmitter) is in `classes`,
    grouped by class (every class a key)."""
    if part is not None and part not in PARTS:
        raise ConnectoError(f"split part {part!r} is not one of {', '.join(PARTS)}")
    require_current_layout(db)
    key = f"splits.{split_name}"
    if db[SYNAPSES].find_one({key: {"$exists": True}}, {"_id": 1}) is None:
        known = split_names(db)
        raise ConnectoError(
            f"database {db.name} has no split {split_name!r} "
            f"(splits: {', '.join(known) or 'none'}; `connecto split` makes one)"
        )
    skeleton_class = class_of_skeletons(db)
    grouped: dict[str, list[dict]] = {name: [] for name in classes}
    query = {key: part if part is not None else {"$exists": True}}
    for doc in db[SYNAPSES].find(query, {"_id": 0}):
        name = synapse_class(doc, skeleton_class)
        if name in grouped:
            grouped[name].append(doc)
    return grouped


def _transmitter_label(nt_known: list[str]) -> str:
    return "+".join(sorted(nt_known)) if nt_known else "(unknown)"


def synapse_stats(db: Database) -> dict[str, Any]:
    """Counts per class (synapses and skeletons), per split and part (synapses in `splits`,
    skeletons in `split_skeletons`), per brain region; first, imports cut short are rolled
    back (`rolled_back`) or named when they may still run (`unfinished`).

    A synapse's class is its own `label`, else its skeleton's transmitter(s) (joined by
    `+`, or "(unknown)"). `class_kind` is "transmitter" when no synapse has a label, else
    "class"; `classes` (also under its old name `transmitters`) holds per class: synapses,
    skeletons (with that transmitter) and skeletons_with_synapses (of that class)."""
    require_current_layout(db)
    rolled_back, unfinished = recover_imports(db)
    transmitter = {
        d["skeleton_id"]: _transmitter_label(d.get("nt_known") or [])
        for d in db[SKELETONS].find({}, {"skeleton_id": 1, "nt_known": 1})
    }
    per_class: Counter[str] = Counter()
    skeletons_with_synapses: dict[str, set[int]] = defaultdict(set)
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    split_skeletons: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    per_region: Counter[str] = Counter()
    total = labelled = 0
    projection = {"skeleton_id": 1, "splits": 1, "brain_region": 1, "label": 1, "_id": 0}
    for doc in db[SYNAPSES].find({}, projection):
        total += 1
        labelled += doc.get("label") is not None
        name = doc.get("label") or transmitter.get(doc["skeleton_id"], "(no skeleton)")
        per_class[name] += 1
        skeletons_with_synapses[name].add(doc["skeleton_id"])
        for split, part in (doc.get("splits") or {}).items():
            per_split[split][part] += 1
            split_skeletons[split][part].add(doc["skeleton_id"])
        per_region[doc.get("brain_region", "(none)")] += 1
    skeleton_counts = Counter(transmitter.values())
    classes = {
        name: {
            "synapses": per_class.get(name, 0),
            "skeletons": skeleton_counts.get(name, 0),
            "skeletons_with_synapses": len(skeletons_with_synapses.get(name, ())),
        }
        for name in sorted(set(per_class) | set(skeleton_counts))
    }
    return {
        "synapses": total,
        "skeletons": len(transmitter),
        "hemi_lineages": db[HEMI_LINEAGES].count_documents({}),
        "class_kind": "class" if labelled else "transmitter",
        "labelled_synapses": labelled,
        "classes": classes,
        "transmitters": classes,
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
    counts = {}
    for collection, filename in (
        (SYNAPSES, "synapses.json"),
        (SKELETONS, "skeletons.json"),
        (HEMI_LINEAGES, "hemi_lineages.json"),
    ):
        id_field = ID_FIELD[collection]
        keyed = {}
        for doc in db[collection].find({}, {"_id": 0}).sort(id_field, 1):
            key = str(doc.pop(id_field))
            keyed[key] = doc
        tmp = directory / f".{filename}.tmp"
        tmp.write_text(json.dumps(keyed))
        tmp.replace(directory / filename)  # never a half-written export
        counts[filename] = len(keyed)
    return counts
