"""`connecto embed run`: one embedding per synapse from a contrastive checkpoint, in MongoDB.

Embeddings of the checkpoint of iteration N of train setup `setup_t<id>` of experiment E
go to database `<data_db>_embeddings`, collection `E_t<id>_i<N>` (`..._proj` for the
projection head's output instead of the encoder's features), one document per synapse:

    {"synapse_id": 12, "embedding": [0.1, ...], "iteration": 100000,
     "checkpoint": "/.../model_checkpoint_100000", "projection": false}

Which synapses: a split part, a whole split, or (default) every synapse of the database.
The embedding of a synapse does not depend on which of these asked for it, so one
collection serves them all: a run writes only the synapses that have no document yet
(a killed run resumes where it stopped; the unique `synapse_id` index makes a duplicate
impossible), and a run whose synapses all have one is refused unless `overwrite` (which
replaces those synapses' documents, and only those).

Synapse fields (class, brain region, splits, skeleton fields) are not copied into the
documents: `connecto.tasks.synapse_contrastive.explore` joins them from the data
database when it reads, so they are always current. Every run is tracked in the tracking
database's `embeddings` collection (one document per embeddings collection: state,
expected and written counts, checkpoint, process), as `predict` tracks its runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError

from connecto import ConnectoError
from connecto.db.client import get_database, tracking_database
from connecto.db.synapse_rows import PARTS
from connecto.db.tracking import claim_collection, now, settle_vanished, upsert_document
from connecto.experiment import CHECKPOINT_PREFIX, TrainSetup, find_setup
from connecto.names import check_name
from connecto.processes import process_record

EMBEDDINGS_SUFFIX = "_embeddings"
TRACKING_COLLECTION = "embeddings"  # in the tracking database: one document per run target
PROJECTION_SUFFIX = "_proj"
DUPLICATE_KEY = 11000
ID_CHUNK = 10_000  # synapse ids per `$in` query


def embeddings_database_name(data_db: str) -> str:
    """Where the embeddings of a data database's synapses go (as `_predictions`)."""
    return f"{data_db}{EMBEDDINGS_SUFFIX}"


def embedding_collection_name(
    experiment: str, train_id: int, iteration: int, projection: bool = False
) -> str:
    """`<experiment>_t<train_id>_i<iteration>`, `_proj` appended for projections."""
    check_name("experiment name", experiment)
    if train_id < 0 or iteration < 0:
        raise ConnectoError(f"train id {train_id} and iteration {iteration} must be >= 0")
    name = f"{experiment}_t{train_id}_i{iteration}"
    return name + PROJECTION_SUFFIX if projection else name


def data_database_name(embeddings_db: str) -> str:
    """The data database of an embeddings database (its name less `_embeddings`)."""
    if not embeddings_db.endswith(EMBEDDINGS_SUFFIX) or embeddings_db == EMBEDDINGS_SUFFIX:
        raise ConnectoError(
            f"database {embeddings_db!r}: not a `<data_db>{EMBEDDINGS_SUFFIX}` database"
        )
    return embeddings_db[: -len(EMBEDDINGS_SUFFIX)]


@dataclass(frozen=True)
class EmbeddingRun:
    """The outcome of one `embed_synapses` run."""

    database: str
    collection: str
    iteration: int
    projection: bool
    dimension: int  # length of each embedding (0 when nothing was written)
    expected: int  # synapses asked for
    resumed_from: int  # of those, documents already there when the run started
    written: int  # documents written by this run


# ---------------------------------------------------------------- which checkpoint


def checkpoint_for(setup: TrainSetup, iteration: int | None = None) -> Path:
    """The checkpoint of `iteration` of `setup` (default: the latest)."""
    available = setup.checkpoints()
    if not available:
        raise ConnectoError(f"{setup.path}: no model_checkpoint_<N> yet (run `connecto train`)")
    chosen = available[-1] if iteration is None else iteration
    if chosen not in available:
        raise ConnectoError(
            f"{setup.path}: no checkpoint for iteration {chosen}; available: {available}"
        )
    return setup.checkpoint(chosen)


def checkpoint_iteration(checkpoint: Path) -> int:
    suffix = checkpoint.name[len(CHECKPOINT_PREFIX) :]
    if not checkpoint.name.startswith(CHECKPOINT_PREFIX) or not suffix.isdigit():
        raise ConnectoError(f"{checkpoint}: expected a file named {CHECKPOINT_PREFIX}<iteration>")
    return int(suffix)


# ---------------------------------------------------------------- the collection


def open_embedding_collection(db: Database, name: str) -> Collection:
    """The collection with its unique `synapse_id` index (idempotent)."""
    collection = db[name]
    collection.create_index([("synapse_id", ASCENDING)], unique=True)
    return collection


def _chunks(values: Sequence[int], size: int = ID_CHUNK) -> Iterable[list[int]]:
    for start in range(0, len(values), size):
        yield [int(v) for v in values[start : start + size]]


def embedded_ids(collection: Collection, synapse_ids: Sequence[int]) -> set[int]:
    """Those of `synapse_ids` that have an embedding document."""
    found: set[int] = set()
    for chunk in _chunks(synapse_ids):
        query = {"synapse_id": {"$in": chunk}, "embedding": {"$exists": True}}
        found.update(d["synapse_id"] for d in collection.find(query, {"_id": 0, "synapse_id": 1}))
    return found


def write_embeddings(collection: Collection, documents: list[dict[str, Any]]) -> int:
    """One unordered insert; a synapse that already has a document (a batch written again
    after a kill) is refused by the unique index and left as it is. Returns how many
    documents were inserted."""
    if not documents:
        return 0
    try:
        return len(collection.insert_many([dict(d) for d in documents], ordered=False).inserted_ids)
    except BulkWriteError as error:
        others = [e for e in error.details.get("writeErrors", []) if e.get("code") != DUPLICATE_KEY]
        if others:
            raise ConnectoError(
                f"{collection.full_name}: {len(others)} embedding(s) not written: "
                f"{others[0].get('errmsg', others[0])}"
            ) from None
        return int(error.details.get("nInserted", 0))


def embedding_document(
    synapse_id: int, embedding: np.ndarray, iteration: int, checkpoint: Path, projection: bool
) -> dict[str, Any]:
    return {
        "synapse_id": int(synapse_id),
        "embedding": [float(v) for v in embedding],
        "iteration": int(iteration),
        "checkpoint": str(checkpoint),
        "projection": projection,
    }


# ---------------------------------------------------------------- tracking


def track_embedding_run(
    tracking: Database, database: str, collection: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """Create or update the tracking document of an embeddings collection."""
    runs = tracking[TRACKING_COLLECTION]
    runs.create_index([("database", ASCENDING), ("collection", ASCENDING)], unique=True)
    return upsert_document(runs, {"database": database, "collection": collection}, fields)


def list_embedding_runs(tracking: Database) -> list[dict[str, Any]]:
    """The tracked embedding runs (those whose process died marked `interrupted`)."""
    runs = tracking[TRACKING_COLLECTION]
    found = list(runs.find({}, {"_id": 0}, sort=[("database", 1), ("collection", 1)]))
    return settle_vanished(runs, found)


def refuse_foreign_collection(
    tracking: Database, database: str, collection: str, checkpoint: Path
) -> None:
    """Two train setups with the same experiment name and train id under different base
    directories name the same collection: never mix their embeddings."""
    mine = str(checkpoint.resolve())
    other = tracking[TRACKING_COLLECTION].find_one({"database": database, "collection": collection})
    # runs tracked before claims existed name their checkpoint too
    holder = other if other is not None and other.get("checkpoint") != mine else None
    holder = holder or claim_collection(
        tracking, database, collection, {"key": mine, "checkpoint": mine}
    )
    if holder is not None:
        raise ConnectoError(
            f"{database}.{collection} holds embeddings of {holder.get('checkpoint')}, not of "
            f"{mine}: rename one experiment"
        )


# ---------------------------------------------------------------- one run


def _check_options(split_name: str | None, split_part: str | None, batch_size: int | None) -> None:
    if split_part is not None and split_part not in PARTS:
        raise ConnectoError(f"--part {split_part!r}: expected one of {', '.join(PARTS)}")
    if split_part is not None and split_name is None:
        raise ConnectoError(f"--part {split_part}: give the split with --split NAME")
    if batch_size is not None and batch_size < 1:
        raise ConnectoError(f"--batch-size {batch_size}: must be at least 1")


@dataclass(frozen=True)
class _Target:
    """A checked run: the model, the synapses asked for and where their documents go."""

    setup: TrainSetup
    checkpoint: Path
    iteration: int
    model: Any  # ContrastiveModel, in eval mode on `device`
    config: Any  # its ContrastiveTrainConfig
    device: str
    raw: Any  # funlib Array of the config's raw
    data_db: str
    synapse_ids: np.ndarray
    positions: np.ndarray
    database: str
    name: str


def _target(
    checkpoint: Path, split_name: str | None, split_part: str | None, data_db: str | None,
    projection: bool,
) -> _Target:  # fmt: skip
    """Every check before anything is written: the checkpoint (readable, of a
    synapse-contrastive setup), the synapses asked for, the raw's voxel size."""
    from connecto.checkpoints import default_device
    from connecto.data.volumes import open_raw
    from connecto.tasks.synapse_contrastive.crops import check_voxel_size, select_synapses
    from connecto.tasks.synapse_contrastive.model import load_contrastive_model

    setup = find_setup(checkpoint.parent)
    if not isinstance(setup, TrainSetup):
        raise ConnectoError(f"checkpoint {checkpoint} is not in a train setup")
    iteration = checkpoint_iteration(checkpoint)
    device = default_device()
    model, config = load_contrastive_model(checkpoint, device)  # refuses a damaged file
    data_name = data_db or config.db_name_data
    ids, positions = select_synapses(get_database(data_name), split_name, split_part)
    if not len(ids):
        where = f"part {split_part!r} of split {split_name!r}" if split_part else (
            f"split {split_name!r}" if split_name else "the database")  # fmt: skip
        raise ConnectoError(f"database {data_name!r}: no synapses in {where}")
    raw = open_raw(config.raw_container, config.raw_dataset)
    check_voxel_size(raw, config, str(setup.path / "train_config.toml"))
    name = embedding_collection_name(setup.experiment, setup.train_id, iteration, projection)
    return _Target(
        setup, checkpoint, iteration, model, config, device, raw, data_name, ids, positions,
        embeddings_database_name(data_name), name,
    )  # fmt: skip


def embed_synapses(
    checkpoint: Path,
    split_name: str | None = None,
    split_part: str | None = None,
    data_db: str | None = None,
    overwrite: bool = False,
    projection: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> EmbeddingRun:
    """Embed the synapses of `split_part` of `split_name` (every part when no part; every
    synapse of the database when no split) of `data_db` (default: the train config's) with
    `checkpoint` of a synapse-contrastive train setup, `batch_size` per forward pass
    (default: the config's) on `threads` torch threads (default: as `predict`). Resumes
    a killed run; refuses a complete one unless `overwrite`."""
    import torch

    from connecto.tasks.synapse_classification.predict import prediction_threads
    from connecto.tasks.synapse_contrastive.crops import SynapseCrops

    _check_options(split_name, split_part, batch_size)
    target = _target(Path(checkpoint).resolve(), split_name, split_part, data_db, projection)
    ids = target.synapse_ids
    tracking = tracking_database()
    refuse_foreign_collection(tracking, target.database, target.name, target.checkpoint)
    collection = open_embedding_collection(get_database(target.database), target.name)
    done = embedded_ids(collection, ids)
    if len(done) == len(ids) and not overwrite:
        raise ConnectoError(
            f"{target.database}.{target.name} already holds embeddings for all {len(ids)} "
            "synapses; use --overwrite to embed them again"
        )
    if overwrite:  # only the synapses asked for: other parts' embeddings stay
        for chunk in _chunks(ids):
            collection.delete_many({"synapse_id": {"$in": chunk}})
        done = set()
    todo = np.array([i not in done for i in ids.tolist()], dtype=bool)
    config = target.config
    crops = SynapseCrops(target.raw, tuple(config.input_shape), ids[todo], target.positions[todo])
    batch = batch_size or config.batch_size
    cpus = target.setup.worker_config().num_cpus
    torch.set_num_threads(threads or prediction_threads(cpus, 1))
    setup = target.setup
    track_embedding_run(tracking, target.database, target.name, {
        "experiment": setup.experiment, "base": str(setup.base), "train_id": setup.train_id,
        "setup_dir": str(setup.path), "iteration": target.iteration,
        "checkpoint": str(target.checkpoint), "data_db": target.data_db,
        "split_name": split_name, "split_part": split_part, "projection": projection,
        "expected": len(ids), "written": len(done), "batch_size": batch, "state": "running",
        "started": now(), "finished": None, "error": None, **process_record(),
    })  # fmt: skip
    written, dimension = _embed_tracked(
        target, tracking, collection, crops, batch, projection, len(done), progress
    )
    return EmbeddingRun(
        target.database, target.name, target.iteration, projection, dimension, len(ids),
        len(done), written,
    )  # fmt: skip


def _embed_tracked(
    target: _Target, tracking: Database, collection: Collection, crops: Any, batch: int,
    projection: bool, resumed_from: int, progress: bool,
) -> tuple[int, int]:  # fmt: skip
    """Embed what is left; however that ends, the tracking document gets the state
    (done, failed or interrupted) and the count of synapses that have a document."""
    from tqdm import tqdm

    ids = target.synapse_ids
    state, error, written, dimension = "done", None, 0, 0

    def document(synapse_id: int, embedding: np.ndarray) -> dict[str, Any]:
        return embedding_document(
            synapse_id, embedding, target.iteration, target.checkpoint, projection
        )

    try:
        with tqdm(
            total=len(ids), initial=resumed_from, unit="synapse", desc=f"embed {target.name}",
            disable=not progress, dynamic_ncols=True,
        ) as bar:  # fmt: skip
            written, dimension = _embed_batches(
                target.model, target.device, crops, batch, projection, document, collection,
                bar.update,
            )  # fmt: skip
    except KeyboardInterrupt:
        state, error = "interrupted", "interrupted"
        raise
    except BaseException as failure:
        state, error = "failed", str(failure) or type(failure).__name__
        raise
    finally:
        present = len(embedded_ids(collection, ids))
        if state == "done" and present < len(ids):
            state, error = "failed", f"{len(ids) - present} synapses have no embedding"
        track_embedding_run(tracking, target.database, target.name, {
            "state": state, "written": present, "finished": now(), "error": error,
            **({"dimension": dimension} if dimension else {}),
        })  # fmt: skip
    if state != "done":
        raise ConnectoError(f"{target.database}.{target.name}: {error}")
    return written, dimension


def _embed_batches(
    model: Any,
    device: str,
    crops: Any,
    batch_size: int,
    projection: bool,
    document: Callable[[int, np.ndarray], dict[str, Any]],
    collection: Collection,
    report: Callable[[int], Any],
) -> tuple[int, int]:
    """Embed `crops` (a `SynapseCrops`) batch by batch: the next batch's crops are read
    and the last batch's documents written in background threads while the model runs,
    so a kill loses at most the batches in flight. Returns (documents written, dimension)."""
    import torch

    if not len(crops):
        return 0, 0
    batches = iter(crops.batches(batch_size))
    written = dimension = 0
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        upcoming: Future[Any] = pool.submit(next, batches, None)
        pending: Future[int] | None = None
        pending_count = 0
        while (item := upcoming.result()) is not None:
            ids, data = item
            upcoming = pool.submit(next, batches, None)
            tensor = torch.from_numpy(data).to(device)
            output = model(tensor) if projection else model.features(tensor)
            values = output.float().cpu().numpy()
            dimension = values.shape[1]
            documents = [document(int(i), v) for i, v in zip(ids, values, strict=True)]
            if pending is not None:
                written += pending.result()
                report(pending_count)
            pending, pending_count = pool.submit(write_embeddings, collection, documents), len(ids)
        if pending is not None:
            written += pending.result()
            report(pending_count)
    return written, dimension


def embed(
    base: Path | None = None,
    experiment: str | None = None,
    train_id: int | None = None,
    iteration: int | None = None,
    checkpoint: Path | None = None,
    **options: Any,
) -> EmbeddingRun:
    """`connecto embed run`: the checkpoint given, or that of `iteration` (default: the
    latest) of the train setup given by -d/-e/-t or the current directory."""
    from connecto.experiment import resolve_train_setup

    if checkpoint is None:
        checkpoint = checkpoint_for(resolve_train_setup(base, experiment, train_id), iteration)
    elif iteration is not None:
        raise ConnectoError("give --checkpoint or --iteration, not both")
    return embed_synapses(checkpoint, **options)
