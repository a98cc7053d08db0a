"""The tracking database (`connecto` by default): experiments, runs, predictions,
jobs and scores, each a plain collection of documents."""

from __future__ import annotations

import socket
import subprocess
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from connecto.processes import process_gone
from connecto.resources import project_root

EXPERIMENTS = "experiments"
RUNS = "runs"
PREDICTIONS = "predictions"
JOBS = "jobs"
SCORES = "scores"
LINEAGE = "lineage"  # the steps of a bootstrapping chain, each with its parent
CLAIMS = "collection_claims"  # one owner per results collection, keyed by _id


def now() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The project's git commit, when connecto runs from a checkout."""
    root = project_root()
    if root is None:
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


_indexed: set[tuple[int, str]] = set()


def ensure_indexes(db: Database) -> None:
    """Create the tracking indexes, once per client and database: `upsert_run` calls this
    at every logging step of a training."""
    key = (id(db.client), db.name)
    if key in _indexed:
        return
    db[EXPERIMENTS].create_index([("base", ASCENDING), ("name", ASCENDING)], unique=True)
    db[RUNS].create_index("setup_dir", unique=True)
    db[PREDICTIONS].create_index("setup_dir", unique=True)
    db[JOBS].create_index([("scheduler", ASCENDING), ("job_id", ASCENDING)])
    db[SCORES].create_index([("kind", ASCENDING), ("key", ASCENDING)], unique=True)
    db[LINEAGE].create_index(
        [("base", ASCENDING), ("experiment", ASCENDING), ("step", ASCENDING)], unique=True
    )
    _indexed.add(key)


def store_score(
    db: Database, kind: str, key: str, fields: dict[str, Any], replace: bool = False
) -> dict[str, Any]:
    """Upsert the `scores` document of (`kind`, `key`): set `fields`, or with `replace`
    make them the whole document. Returns the document as written."""
    ensure_indexes(db)
    document = {"kind": kind, "key": key, **fields, "updated": now()}
    selector = {"kind": kind, "key": key}
    if replace:
        db[SCORES].replace_one(selector, document, upsert=True)
    else:
        db[SCORES].update_one(selector, {"$set": document}, upsert=True)
    return document


def find_score(db: Database, kind: str, key: str) -> dict[str, Any] | None:
    return db[SCORES].find_one({"kind": kind, "key": key})


def upsert_document(
    collection: Collection, selector: dict[str, Any], fields: dict[str, Any], commit: bool = True
) -> dict[str, Any]:  # fmt: skip
    """Create or update the document of `collection` matching `selector`: `fields` set,
    stamped with the time, the host and (with `commit`) the code's git commit; the
    creation time stays."""
    stamp = {"updated": now(), "host": socket.gethostname()}
    if commit:
        stamp["git_commit"] = git_commit()
    return collection.find_one_and_update(
        selector,
        {"$setOnInsert": {"created": now()}, "$set": {**fields, **stamp}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )


def register_experiment(db: Database, base: str, name: str) -> dict[str, Any]:
    ensure_indexes(db)
    return db[EXPERIMENTS].find_one_and_update(
        {"base": base, "name": name},
        {
            "$setOnInsert": {"created": now(), "git_commit": git_commit()},
            "$set": {"updated": now()},
        },
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )


def upsert_run(db: Database, setup_dir: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Create or update the run document of a train setup."""
    ensure_indexes(db)
    return upsert_document(db[RUNS], {"setup_dir": setup_dir}, fields, commit=False)


def list_runs(
    db: Database, experiment: str | None = None, within: Path | None = None
) -> list[dict[str, Any]]:
    """The tracked runs, by experiment and train id: those of `experiment` (under any base
    directory), or with `within` those of the experiment directory `<base>/<experiment>`
    that `within` is or lies in (the nearest the tracking database knows: a shared one
    holds every user's runs); `within` outside every experiment directory: all runs."""
    query: dict[str, Any] = {"experiment": experiment} if experiment else {}
    if within is not None:
        here = within.resolve()
        candidates = [{"base": str(d.parent), "experiment": d.name} for d in (here, *here.parents)]
        known = {(doc["base"], doc["experiment"]) for doc in db[RUNS].find(
            {"$or": candidates}, {"base": 1, "experiment": 1}
        )}  # fmt: skip
        known |= {(doc["base"], doc["name"]) for doc in db[EXPERIMENTS].find(
            {"$or": [{"base": c["base"], "name": c["experiment"]} for c in candidates]},
            {"base": 1, "name": 1},
        )}  # fmt: skip
        nearest = next((c for c in candidates if (c["base"], c["experiment"]) in known), None)
        query.update(nearest or {})
    return settle_vanished(
        db[RUNS], list(db[RUNS].find(query, sort=[("experiment", 1), ("train_id", 1)]))
    )


def settle_vanished(
    collection: Collection, documents: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`running` documents whose process is provably gone become `interrupted`: a process
    killed outright (SIGKILL, out of memory) had no chance to say so. Stored as well, unless
    the document changed meanwhile (a rerun took it over)."""
    for document in documents:
        if document.get("state") == "running" and process_gone(document):
            collection.update_one(
                {key: document.get(key) for key in ("_id", "state", "pid", "pid_started")},
                {"$set": {"state": "interrupted", "stopped_by": "process gone", "updated": now()}},
            )
            document["state"] = "interrupted"
    return documents


def register_train_setup(
    db: Database, setup_dir: str, base: str, experiment: str, train_id: int,
    train_config: dict[str, Any], worker_config: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """A prepared train setup: its experiment and a `prepared` run."""
    register_experiment(db, base, experiment)
    return upsert_run(
        db,
        setup_dir,
        {
            "experiment": experiment,
            "base": base,
            "train_id": train_id,
            "task": train_config.get("task"),
            "config": train_config,
            "worker_config": worker_config,
            "state": "prepared",
            "iteration": 0,
            "git_commit": git_commit(),
        },
    )


def record_lineage(
    db: Database, base: str, experiment: str, step: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Create or update one step of an experiment's bootstrapping chain (`parent`: the
    step it was made from; `outputs`, `stats`, `state`)."""
    ensure_indexes(db)
    register_experiment(db, base, experiment)
    selector = {"base": base, "experiment": experiment, "step": step}
    return upsert_document(db[LINEAGE], selector, fields)


def list_lineage(db: Database, base: str, experiment: str) -> list[dict[str, Any]]:
    """The chain's steps, each after its parent (steps without a known parent first)."""
    steps = {d["step"]: d for d in db[LINEAGE].find({"base": base, "experiment": experiment})}
    ordered: list[dict[str, Any]] = []

    def add(step: str) -> None:
        ordered.append(steps[step])
        for child in sorted(s for s, d in steps.items() if d.get("parent") == step):
            add(child)

    for root in sorted(s for s, d in steps.items() if d.get("parent") not in steps):
        add(root)
    return ordered


def claim_collection(
    db: Database, database: str, collection: str, owner: dict[str, str]
) -> dict[str, str] | None:
    """Claim `database.collection` for `owner` (its `key` says who it is) before the first
    write. None when the claim is the owner's (new, or held before); else the holder.
    Atomic: `_id` is unique, so of two processes claiming at once exactly one gets it
    (checking the tracking documents first left a window before either was written)."""
    claims = db[CLAIMS]
    key = f"{database}.{collection}"
    try:
        claims.insert_one({"_id": key, **owner, "claimed": now()})
        return None
    except DuplicateKeyError:
        held = claims.find_one({"_id": key}) or {}
    return None if held.get("key") == owner["key"] else held
