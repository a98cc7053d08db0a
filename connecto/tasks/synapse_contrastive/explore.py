"""Exploring an embeddings collection (`connecto embed map | similar`): UMAP and PCA maps
coloured by a synapse or skeleton field, and the nearest synapses of one synapse.

A field is read from the data database when it is needed (`synapse_fields`), so maps
show the current classes, regions and splits:
- `neurotransmitter` (or `class`): the synapse's class, its own `label` else its
  skeleton's one known transmitter (`connecto.db.synapses.synapse_class`);
- a synapse field, dotted paths allowed: `brain_region`, `splits.<split name>`, ...;
- `skeleton.<field>`, or a field that no synapse has but skeletons do (`nt_known`,
  `hemi_lineage_id`): the field of the synapse's skeleton.
Lists read as their sorted items joined by `+`, a missing value as "(none)".
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymongo.collection import Collection
from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.client import get_database
from connecto.db.schema import SKELETONS, SYNAPSES
from connecto.db.synapses import class_of_skeletons, synapse_class
from connecto.tasks.synapse_contrastive.embed import (
    EMBEDDINGS_SUFFIX,
    ID_CHUNK,
    data_database_name,
    embeddings_database_name,
)

CLASS_FIELDS = ("neurotransmitter", "class")
NONE = "(none)"
SKELETON_PREFIX = "skeleton."
MAX_CATEGORIES = 20  # more distinct values than this (numbers): a continuous colour scale
DEFAULT_FIELDS = ("skeleton_id", "neurotransmitter", "brain_region", "splits")
METHODS = ("umap", "pca")


# ---------------------------------------------------------------- reading


def embeddings_collection(database: str | None, collection: str | None) -> Collection:
    """`collection` of `database` (a data database, or its `_embeddings` twin), either
    found by `resolve_collection` when not given; refused when it holds no embeddings."""
    name, collection = resolve_collection(database, collection)
    found = get_database(name)[collection]
    if found.find_one({"embedding": {"$exists": True}}, {"_id": 1}) is None:
        present = ", ".join(sorted(get_database(name).list_collection_names())) or "none"
        raise ConnectoError(
            f"{name}.{collection}: no embeddings (`connecto embed run` writes them; "
            f"collections there: {present})"
        )
    return found


def resolve_collection(database: str | None, collection: str | None) -> tuple[str, str]:
    """(embeddings database, collection) from what was given: both; a collection that
    one tracked run wrote; or the latest tracked run (of `database`, when given)."""
    from connecto.db.client import tracking_database
    from connecto.tasks.synapse_contrastive.embed import TRACKING_COLLECTION

    if database is not None and not database.endswith(EMBEDDINGS_SUFFIX):
        database = embeddings_database_name(database)
    if database is not None and collection is not None:
        return database, collection
    query = {k: v for k, v in (("database", database), ("collection", collection)) if v}
    runs = list(tracking_database()[TRACKING_COLLECTION].find(query, sort=[("updated", -1)]))
    if collection is not None and len({r["database"] for r in runs}) > 1:
        names = ", ".join(sorted({r["database"] for r in runs}))
        raise ConnectoError(f"collection {collection!r} is in {names}: give --db")
    if not runs:
        what = " ".join(f"{k} {v!r}" for k, v in query.items()) or "any collection"
        raise ConnectoError(
            f"no tracked embeddings for {what}: give --db and --collection, or run "
            "`connecto embed run` first"
        )
    return runs[0]["database"], runs[0]["collection"]


def data_database(collection: Collection) -> Database:
    return get_database(data_database_name(collection.database.name))


def load_embeddings(
    collection: Collection, synapse_ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(synapse ids (n,) int64 ascending, embeddings (n, d) float32) of the collection, or
    of those of `synapse_ids` that it has."""
    projection = {"_id": 0, "synapse_id": 1, "embedding": 1}
    if synapse_ids is None:
        documents = list(collection.find({"embedding": {"$exists": True}}, projection))
    else:
        wanted = [int(i) for i in synapse_ids]
        documents = []
        for start in range(0, len(wanted), ID_CHUNK):
            query = {"synapse_id": {"$in": wanted[start : start + ID_CHUNK]}}
            documents += collection.find(query, projection)
    documents.sort(key=lambda d: d["synapse_id"])
    ids = np.array([d["synapse_id"] for d in documents], dtype=np.int64)
    if not documents:
        return ids, np.zeros((0, 0), dtype=np.float32)
    return ids, np.array([d["embedding"] for d in documents], dtype=np.float32)


def _lookup(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _readable(value: Any) -> Any:
    if value is None:
        return NONE
    if isinstance(value, list):
        return "+".join(sorted(str(v) for v in value)) or NONE
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or NONE
    return value


def synapse_fields(
    data: Database, synapse_ids: Sequence[int], fields: Sequence[str]
) -> dict[str, list[Any]]:
    """For each of `fields` (see the module's docstring), its value per synapse of
    `synapse_ids`, in that order. A field that neither synapses nor skeletons have is
    refused."""
    ids = [int(i) for i in synapse_ids]
    synapses: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), ID_CHUNK):
        query = {"synapse_id": {"$in": ids[start : start + ID_CHUNK]}}
        for doc in data[SYNAPSES].find(query, {"_id": 0}):
            synapses[doc["synapse_id"]] = doc
    absent = [i for i in ids if i not in synapses]
    if absent:
        raise ConnectoError(
            f"{len(absent)} embedded synapse(s) are not in {data.name}.{SYNAPSES} "
            f"(e.g. {absent[:5]})"
        )
    rows = [synapses[i] for i in ids]
    skeletons: dict[int, dict[str, Any]] | None = None
    result: dict[str, list[Any]] = {}
    for field in fields:
        if field in CLASS_FIELDS:
            classes = class_of_skeletons(data)
            result[field] = [_readable(synapse_class(row, classes)) for row in rows]
            continue
        path = field[len(SKELETON_PREFIX) :] if field.startswith(SKELETON_PREFIX) else field
        on_skeleton = field.startswith(SKELETON_PREFIX) or not any(
            _lookup(row, field) is not None for row in rows
        )
        if not on_skeleton:
            result[field] = [_readable(_lookup(row, field)) for row in rows]
            continue
        if skeletons is None:
            wanted = sorted({row["skeleton_id"] for row in rows})
            skeletons = {d["skeleton_id"]: d for d in data[SKELETONS].find(
                {"skeleton_id": {"$in": wanted}}, {"_id": 0})}  # fmt: skip
        values = [_lookup(skeletons.get(row["skeleton_id"], {}), path) for row in rows]
        if rows and all(v is None for v in values):
            raise ConnectoError(
                f"--color-by {field!r}: no synapse or skeleton of {data.name} has this field "
                "(e.g. neurotransmitter, brain_region, splits.<split>, skeleton.nt_known)"
            )
        result[field] = [_readable(v) for v in values]
    return result


# ---------------------------------------------------------------- maps


def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates: UMAP (cosine metric) or PCA of standardised embeddings."""
    n = len(embeddings)
    if method == "pca":
        from sklearn.decomposition import PCA

        components = min(2, n, embeddings.shape[1])
        points = PCA(n_components=components, random_state=seed).fit_transform(embeddings)
        return np.pad(points, ((0, 0), (0, 2 - components)))
    if method == "umap":
        import warnings

        import umap

        if n < 4:
            raise ConnectoError(f"a UMAP needs at least 4 embedded synapses, not {n}")
        reducer = umap.UMAP(
            n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, init="random"
        )
        with warnings.catch_warnings():  # a seed makes umap single-threaded, and says so
            warnings.simplefilter("ignore")
            return np.asarray(reducer.fit_transform(embeddings))
    raise ConnectoError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def plot_map(points: np.ndarray, values: Sequence[Any], title: str, label: str, path: Path) -> Path:
    """A scatter PNG of `points` coloured by `values`: one colour per category (legend up
    to `MAX_CATEGORIES`), or a colour scale for many distinct numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6))
    size = max(2.0, min(30.0, 3000 / max(len(points), 1)))
    distinct = sorted(set(values), key=str)
    numeric = [v for v in values if _is_number(v)]
    if len(numeric) == len(values) and len(distinct) > MAX_CATEGORIES:
        scatter = ax.scatter(points[:, 0], points[:, 1], c=numeric, s=size, cmap="viridis")
        fig.colorbar(scatter, ax=ax, label=label)
    else:
        cmap = plt.get_cmap("tab10" if len(distinct) <= 10 else "tab20")
        index = {v: i for i, v in enumerate(distinct)}
        colours = [cmap(index[v] % cmap.N) for v in values]
        ax.scatter(points[:, 0], points[:, 1], c=colours, s=size, linewidths=0)
        if len(distinct) <= MAX_CATEGORIES:
            for value in distinct:
                ax.scatter([], [], color=cmap(index[value] % cmap.N), label=str(value))
            ax.legend(title=label, fontsize=8, markerscale=1.5, loc="best")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class EmbeddingMap:
    collection: str
    color_by: str
    synapses: int
    plots: list[Path]


def embedding_map(
    color_by: str = "neurotransmitter",
    database: str | None = None,
    collection: str | None = None,
    out_dir: Path | None = None,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
) -> EmbeddingMap:
    """UMAP and PCA scatter PNGs of the embeddings of `collection` of `database` (a data
    database or its `_embeddings` twin; default: the latest tracked, see
    `resolve_collection`), coloured by `color_by`; written to `out_dir` (default: the
    current directory) as `<collection>_<color_by>_<method>.png`."""
    for method in methods:
        if method not in METHODS:
            raise ConnectoError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
    source = embeddings_collection(database, collection)
    ids, embeddings = load_embeddings(source)
    values = synapse_fields(data_database(source), ids, [color_by])[color_by]
    out = Path(out_dir) if out_dir is not None else Path.cwd()
    stem = f"{source.name}_{color_by.replace('.', '-')}"
    plots = []
    for method in methods:
        points = project(embeddings, method, seed)
        title = f"{source.full_name}: {len(ids)} synapses, {method.upper()}, by {color_by}"
        plots.append(plot_map(points, values, title, color_by, out / f"{stem}_{method}.png"))
    return EmbeddingMap(source.full_name, color_by, len(ids), plots)


# ---------------------------------------------------------------- similarity search


def nearest(
    collection: Collection, query: np.ndarray, k: int, chunk: int = ID_CHUNK
) -> list[tuple[float, int]]:
    """The `k` (cosine similarity, synapse id) nearest to `query`, most similar first;
    the collection is read in chunks, so memory does not grow with it."""
    unit = query / (np.linalg.norm(query) or 1.0)
    best: list[tuple[float, int]] = []  # a min-heap of the k best so far

    def consider(ids: list[int], rows: list[list[float]]) -> None:
        matrix = np.asarray(rows, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1)
        similarity = matrix @ unit / np.where(norms > 0, norms, 1.0)
        for value, synapse_id in zip(similarity.tolist(), ids, strict=True):
            item = (value, -synapse_id)  # ties: the smaller id first
            if len(best) < k:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)

    ids: list[int] = []
    rows: list[list[float]] = []
    for doc in collection.find({"embedding": {"$exists": True}},
                               {"_id": 0, "synapse_id": 1, "embedding": 1}):  # fmt: skip
        ids.append(doc["synapse_id"])
        rows.append(doc["embedding"])
        if len(ids) == chunk:
            consider(ids, rows)
            ids, rows = [], []
    if ids:
        consider(ids, rows)
    return [(value, -negated) for value, negated in sorted(best, reverse=True)]


def similar(
    synapse_id: int,
    k: int = 10,
    database: str | None = None,
    collection: str | None = None,
    fields: Sequence[str] = DEFAULT_FIELDS,
) -> list[dict[str, Any]]:
    """The `k` synapses whose embeddings (in `collection` of `database`, default: see
    `resolve_collection`) are nearest to that of `synapse_id` by cosine similarity (the
    synapse itself first), each `{synapse_id, similarity, <fields>}`."""
    if k < 1:
        raise ConnectoError(f"-k {k}: must be at least 1")
    source = embeddings_collection(database, collection)
    found = source.find_one({"synapse_id": int(synapse_id)}, {"_id": 0, "embedding": 1})
    if found is None:
        raise ConnectoError(f"{source.full_name}: synapse {synapse_id} has no embedding")
    ranked = nearest(source, np.asarray(found["embedding"], dtype=np.float32), k)
    # the synapse itself leads, also when another synapse's embedding is as near (a tie)
    itself = [item for item in ranked if item[1] == int(synapse_id)]
    ranked = itself + [item for item in ranked if item[1] != int(synapse_id)][: k - len(itself)]
    ids = [synapse_id for _, synapse_id in ranked]
    values = synapse_fields(data_database(source), ids, list(fields))
    return [
        {"synapse_id": i, "similarity": s, **{f: values[f][n] for f in fields}}
        for n, (s, i) in enumerate(ranked)
    ]
