"""The segment graph as one document per node and per edge: the layout of the LSD
ecosystem (lsd's `MongoDbGraphProvider`, daisy and funlib tools, the mongo shell).

The column chunks of `connecto.db.graph` are what connecto writes and reads (a block
writes one document, agglomeration reads every score as one array); this module copies a
graph to and from the per-document layout for the tools and people that expect it:

- nodes: `{id, center_z, center_y, center_x, size, ...}`, unique index on `id`
- edges: `{u, v, merge_score, ...}`, unique index on `(u, v)`

Ids are BSON int64 (the chunks keep uint64; fragment ids stay below 2**63 in practice).
A missing attribute value is a missing field, as in the chunks' records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from bson.int64 import Int64
from funlib.persistence.graphs.graph_database import AttributeType
from funlib.persistence.types import Vec
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.columns import CHUNK_ROWS, MAX_ID, Columns
from connecto.db.graph import COLLECTIONS, META_ID, MongoDBGraphDataBase

BATCH_DOCS = 10_000  # documents per insert_many: a few MB per round trip
IMPORT_ROWS = 5 * CHUNK_ROWS  # rows per graph write: split spatially into chunk documents
CENTER = ("center_z", "center_y", "center_x")


def _check_not_chunks(collection: Collection) -> None:
    """Refuse a collection of a column-chunk graph (this one's, or that of a graph whose
    prefix makes the name): it holds chunks, and overwriting it would destroy that graph."""
    db, name = collection.database, collection.name
    for suffix in ("nodes", "edges", "meta", "blocks"):
        if name.endswith(suffix):
            prefix = name[: -len(suffix)]
            if db[f"{prefix}meta"].find_one({"_id": META_ID}, {"_id": 1}) is not None:
                raise ConnectoError(
                    f"collection {collection.full_name} holds column chunks of the segment "
                    f"graph '{prefix}'; choose other --nodes/--edges names"
                )


def _check_ids(values: np.ndarray, what: str) -> None:
    if values.size and int(values.max()) > MAX_ID:
        raise ConnectoError(
            f"{what} {int(values.max())} is above 2**63 - 1 and cannot be stored as int64"
        )


def _fields(columns: Columns, names: Sequence[str]) -> list[tuple[str, list[Any]]]:
    return [(name, columns[name].tolist()) for name in names if name in columns]


def _centers(positions: np.ndarray) -> list[tuple[str, list[Any]]]:
    """`center_z/y/x` fields of 3d positions; any other (2d) stays a `position` list."""
    if positions.dtype != object and positions.ndim == 2 and positions.shape[1] == len(CENTER):
        return [(name, positions[:, d].tolist()) for d, name in enumerate(CENTER)]
    axes: list[list[Any]] = [[] for _ in CENTER]
    other: list[Any] = []
    for value in positions.tolist():  # missing (None) or of another length
        three = value is not None and len(value) == len(CENTER)
        for d, axis in enumerate(axes):
            axis.append(value[d] if three else None)
        other.append(None if three else value)
    return [*zip(CENTER, axes, strict=True), ("position", other)]


def _documents(
    table: Columns, keys: Sequence[str], attrs: Sequence[str], position: str | None = None
) -> Iterator[dict[str, Any]]:
    """One document per row, converted a batch at a time: int64 keys, then each present
    (not None) attribute."""
    for start in range(0, len(table), BATCH_DOCS):
        part = table.take(slice(start, start + BATCH_DOCS))
        ids = [(key, [Int64(i) for i in part[key].tolist()]) for key in keys]
        fields = _fields(part, attrs)
        if position is not None and position in part:
            fields += _centers(part[position])
        for i in range(len(part)):
            doc: dict[str, Any] = {key: values[i] for key, values in ids}
            for name, values in fields:
                if values[i] is not None:
                    doc[name] = values[i]
            yield doc


def _insert(collection: Collection, docs: Iterator[dict[str, Any]]) -> int:
    """Unordered batches: the server need not stop at each document's acknowledgement."""
    written, batch = 0, []
    for doc in docs:
        batch.append(doc)
        if len(batch) == BATCH_DOCS:
            written += len(collection.insert_many(batch, ordered=False).inserted_ids)
            batch = []
    if batch:
        written += len(collection.insert_many(batch, ordered=False).inserted_ids)
    return written


def export_graph(
    graph: MongoDBGraphDataBase,
    target_db: Database,
    nodes_collection: str,
    edges_collection: str,
    overwrite: bool = False,
) -> tuple[int, int]:
    """Write `graph` as one document per node and per edge (the LSD layout); returns
    (nodes, edges). Non-empty targets are refused unless `overwrite`, which drops them."""
    if nodes_collection == edges_collection:
        raise ConnectoError(f"nodes and edges cannot share the collection {nodes_collection!r}")
    targets = [target_db[nodes_collection], target_db[edges_collection]]
    for target in targets:
        _check_not_chunks(target)
        if not overwrite and target.find_one({}, {"_id": 1}) is not None:
            raise ConnectoError(
                f"collection {target.full_name} is not empty: use --overwrite to replace it"
            )
    position = graph.position_attribute
    nodes = graph.read_node_columns()
    edges = graph.read_edge_columns()
    _check_ids(nodes["id"], "node id")
    _check_ids(edges["u"], "edge u")
    _check_ids(edges["v"], "edge v")
    for target in targets:
        target.drop()
    nodes_out, edges_out = targets
    nodes_out.create_index([("id", ASCENDING)], unique=True, name="id")
    edges_out.create_index([("u", ASCENDING), ("v", ASCENDING)], unique=True, name="u_v")
    node_attrs = [name for name in graph.node_attrs if name != position]
    n_nodes = _insert(nodes_out, _documents(nodes, ["id"], node_attrs, position))
    n_edges = _insert(edges_out, _documents(edges, ["u", "v"], list(graph.edge_attrs)))
    return n_nodes, n_edges


def _attribute_type(name: str, values: list[Any]) -> AttributeType:
    """The funlib attribute type of a document field, from its values."""
    kinds = {type(v) for v in values}
    if kinds <= {bool}:
        return bool
    if kinds <= {int, Int64}:
        return int
    if kinds <= {int, Int64, float}:
        return float
    if kinds <= {str}:
        return str
    if kinds <= {list} and len({len(v) for v in values}) == 1:
        inner = {type(x) for v in values for x in v}
        if inner <= {int, Int64, float}:
            return Vec(int if inner <= {int, Int64} else float, len(values[0]))
    raise ConnectoError(
        f"attribute {name!r} has values of types {sorted(k.__name__ for k in kinds)}: "
        "only numbers, booleans, strings and number vectors can be imported"
    )


def _declare(
    declared: dict[str, AttributeType], rows: list[dict[str, Any]], skip: set[str]
) -> dict[str, AttributeType]:
    """Types of the fields the graph does not declare yet."""
    found: dict[str, list[Any]] = {}
    for row in rows:
        for name, value in row.items():
            if name not in skip and name not in declared and value is not None:
                found.setdefault(name, []).append(value)
    return {name: _attribute_type(name, values) for name, values in found.items()}


def check_documents(
    source_db: Database,
    nodes_collection: str,
    edges_collection: str,
    into: tuple[str, str] | None = None,
) -> None:
    """Refuse sources that are not per-document graphs (chunks, or no nodes at all), or
    that are collections of the graph (database, prefix) `into`, so a caller can check
    before creating or replacing that graph (which drops its collections)."""
    for name in (nodes_collection, edges_collection):
        _check_not_chunks(source_db[name])
        if into is not None and into[0] == source_db.name:
            if name in {f"{into[1]}{suffix}" for suffix in COLLECTIONS}:
                raise ConnectoError(
                    f"collection {source_db.name}.{name} belongs to the graph '{into[1]}' it "
                    "would be imported into: choose another graph or --nodes/--edges"
                )
    nodes = source_db[nodes_collection]
    if nodes.find_one({}, {"_id": 1}) is None:
        raise ConnectoError(f"collection {nodes.full_name} has no nodes")


def _key(doc: dict[str, Any], name: str, collection: Collection) -> int:
    """An id; integral doubles too (the mongo shell's numbers are doubles)."""
    value = doc.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ConnectoError(
            f"a document of {collection.full_name} has {name} {value!r}: "
            "ids must be integers from 0 to 2**63 - 1"
        )
    return int(value)


def import_graph(
    source_db: Database,
    nodes_collection: str,
    edges_collection: str,
    graph: MongoDBGraphDataBase,
) -> tuple[int, int]:
    """Read a graph in the LSD layout (`center_z/y/x`, or `position`) into the empty
    column-chunk `graph`, declaring the attributes it finds; returns (nodes, edges)."""
    if graph.mode == "r":
        raise ConnectoError(f"graph '{graph.prefix}' was opened read-only")
    if graph.num_nodes() or graph.num_edges():
        raise ConnectoError(
            f"graph '{graph.prefix}' in database {graph.db.name} is not empty: "
            "use --overwrite to replace it"
        )
    check_documents(source_db, nodes_collection, edges_collection, (graph.db.name, graph.prefix))
    nodes_in, edges_in = source_db[nodes_collection], source_db[edges_collection]
    position = graph.position_attribute
    nodes: dict[int, dict[str, Any]] = {}
    for doc in nodes_in.find({}, {"_id": 0}):
        node_id = _key(doc, "id", nodes_in)
        del doc["id"]
        if all(name in doc for name in CENTER):
            doc[position] = [doc.pop(name) for name in CENTER]
        nodes[node_id] = doc
    edges = []
    for doc in edges_in.find({}, {"_id": 0}):
        u, v = _key(doc, "u", edges_in), _key(doc, "v", edges_in)
        del doc["u"], doc["v"]
        edges.append((u, v, doc))
    node_rows, edge_rows = list(nodes.values()), [data for _, _, data in edges]
    # declare what the documents hold (stored in the graph's meta) by reopening it
    graph = MongoDBGraphDataBase(
        graph.db,
        mode="r+",
        prefix=graph.prefix,
        node_attrs=_declare(graph.node_attrs, node_rows, {position}),
        edge_attrs=_declare(graph.edge_attrs, edge_rows, set()),
    )
    # writes in id order, so each write's duplicate check meets few stored chunks
    order = sorted(nodes)
    for start in range(0, len(order), IMPORT_ROWS):
        batch = {node_id: nodes[node_id] for node_id in order[start : start + IMPORT_ROWS]}
        graph.write_nodes(batch)
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    for start in range(0, len(edges), IMPORT_ROWS):
        batch_edges = edges[start : start + IMPORT_ROWS]
        graph.write_edges(nodes, lambda data=True, rows=batch_edges: rows)
    return graph.num_nodes(), graph.num_edges()
