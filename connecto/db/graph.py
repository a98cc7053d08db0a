"""Segment graphs in MongoDB: funlib.persistence's `GraphDataBase` interface.

funlib.persistence ships graph databases for SQLite and PostgreSQL only; this one keeps a
graph in three collections of a MongoDB database, named `<prefix>nodes`, `<prefix>edges`
and `<prefix>meta` (plus `<prefix>blocks` for block-progress bookkeeping):

- nodes: `_id` (the fragment id, hence unique), `position` ([z, y, x] in world units),
  `size` and any other declared node attributes; a compound index on the position
  components answers ROI queries.
- edges: `u`, `v` (u < v for undirected graphs, a unique pair) and the declared edge
  attributes (merge score, affinity statistics).
- meta: one document describing the graph (position attribute, attribute types, ROI).
- blocks: `{task, block_id}` of every finished block, so blockwise work resumes.

Writes are unordered bulk inserts; duplicates are skipped (funlib's `INSERT OR IGNORE`)
unless `fail_if_exists`. `MongoDB` is the volara-style db config that opens it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from funlib.geometry import Roi
from funlib.persistence.graphs.graph_database import AttributeType, GraphDataBase
from funlib.persistence.types import Vec, type_to_str
from networkx import DiGraph, Graph
from pymongo import ASCENDING, MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError
from volara.dbs import DB

from connecto import ConnectoError

DUPLICATE_KEY = 11000
BATCH = 10_000  # documents per bulk call: bounded message size, steady progress
META_ID = "graph"
COLLECTIONS = ("nodes", "edges", "meta", "blocks")


def _plain(value: Any) -> Any:
    """BSON-encodable values: numpy scalars and arrays, Coordinates, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple | list):
        return [_plain(v) for v in value]
    return value


def _type_from_str(text: str) -> AttributeType:
    """Inverse of funlib's `type_to_str` without `eval`: `int`, `float`, `Vec(float, 3)`."""
    builtins = {"int": int, "float": float, "bool": bool, "str": str}
    if text.startswith("Vec(") and text.endswith(")"):
        dtype, size = text[4:-1].split(",")
        return Vec(builtins[dtype.strip()], int(size))
    return builtins.get(text, text)


def drop_graph(db: Database, prefix: str) -> None:
    """Remove a graph: its nodes, edges, meta and block bookkeeping."""
    for suffix in COLLECTIONS:
        db[f"{prefix}{suffix}"].drop()


class MongoDBGraphDataBase(GraphDataBase):
    """A graph in MongoDB. Modes as in funlib: `r` (read), `r+` (read and write an
    existing graph), `w` (create, dropping any existing graph of that prefix)."""

    def __init__(
        self,
        db: Database,
        mode: str = "r+",
        prefix: str = "",
        position_attribute: str = "position",
        directed: bool | None = None,
        total_roi: Roi | None = None,
        node_attrs: dict[str, AttributeType] | None = None,
        edge_attrs: dict[str, AttributeType] | None = None,
    ) -> None:
        if mode not in ("r", "r+", "w"):
            raise ValueError(f"mode {mode!r} is not one of r, r+, w")
        self.db = db
        self.mode = mode
        self.prefix = prefix
        self.nodes: Collection = db[f"{prefix}nodes"]
        self.edges: Collection = db[f"{prefix}edges"]
        self.meta: Collection = db[f"{prefix}meta"]
        self.blocks: Collection = db[f"{prefix}blocks"]
        if mode == "w":
            if node_attrs is None or position_attribute not in node_attrs:
                raise ValueError(f"node_attrs must declare the position '{position_attribute}'")
            self.drop()
            self.position_attribute = position_attribute
            self.directed = bool(directed)
            position_type = node_attrs[position_attribute]
            self.ndims = position_type.size if isinstance(position_type, Vec) else 1
            self.total_roi = total_roi or Roi((None,) * self.ndims, (None,) * self.ndims)
            self._node_attrs = dict(node_attrs)
            self._edge_attrs = dict(edge_attrs or {})
            self._create()
        else:
            meta = self.meta.find_one({"_id": META_ID})
            if meta is None:
                # volara's `DB.init` relies on this exception to decide to create
                raise RuntimeError(f"no graph '{prefix}' in database {db.name}")
            self.position_attribute = meta["position_attribute"]
            self.directed = meta["directed"] if directed is None else directed
            self.ndims = meta["ndims"]
            self.total_roi = Roi(meta["total_roi_offset"], meta["total_roi_shape"])
            stored_nodes = {k: _type_from_str(v) for k, v in meta["node_attrs"].items()}
            stored_edges = {k: _type_from_str(v) for k, v in meta["edge_attrs"].items()}
            # attributes declared now but not stored yet (a later task adds a score)
            self._node_attrs = {**stored_nodes, **(node_attrs or {})}
            self._edge_attrs = {**stored_edges, **(edge_attrs or {})}
            if (self._node_attrs, self._edge_attrs) != (stored_nodes, stored_edges):
                if mode == "r+":
                    self._store_meta()

    # ------------------------------------------------------------ schema

    def _create(self) -> None:
        position = [(f"{self.position_attribute}.{d}", ASCENDING) for d in range(self.ndims)]
        if self.ndims == 1:
            position = [(self.position_attribute, ASCENDING)]
        self.nodes.create_index(position, name="position")
        self.edges.create_index([("u", ASCENDING), ("v", ASCENDING)], unique=True, name="uv")
        self.blocks.create_index(
            [("task", ASCENDING), ("block_id", ASCENDING)], unique=True, name="task_block"
        )
        self._store_meta()

    def _store_meta(self) -> None:
        self.meta.replace_one(
            {"_id": META_ID},
            {
                "position_attribute": self.position_attribute,
                "directed": self.directed,
                "ndims": self.ndims,
                "total_roi_offset": _plain(tuple(self.total_roi.offset)),
                "total_roi_shape": _plain(tuple(self.total_roi.shape)),
                "node_attrs": {k: type_to_str(v) for k, v in self._node_attrs.items()},
                "edge_attrs": {k: type_to_str(v) for k, v in self._edge_attrs.items()},
            },
            upsert=True,
        )

    def drop(self) -> None:
        drop_graph(self.db, self.prefix)

    def drop_edges(self) -> None:
        self.edges.delete_many({})

    @property
    def node_attrs(self) -> dict[str, AttributeType]:
        return self._node_attrs

    @property
    def edge_attrs(self) -> dict[str, AttributeType]:
        return self._edge_attrs

    # ------------------------------------------------------------ reading

    def _roi_filter(self, roi: Roi | None) -> dict[str, Any]:
        if roi is None:
            return {}
        query: dict[str, Any] = {}
        for d in range(self.ndims):
            key = self.position_attribute if self.ndims == 1 else f"{self.position_attribute}.{d}"
            bounds = {}
            if roi.begin[d] is not None:
                bounds["$gte"] = roi.begin[d]
            if roi.end[d] is not None:
                bounds["$lt"] = roi.end[d]
            if bounds:
                query[key] = bounds
        return query

    def read_nodes(
        self,
        roi: Roi | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Nodes whose position lies in `roi` (half-open), as dicts with `id`."""
        attrs = list(self.node_attrs) if read_attrs is None else read_attrs
        query = {**self._roi_filter(roi), **(attr_filter or {})}
        found = self.nodes.find(query, {a: 1 for a in attrs})
        return [{"id": doc.pop("_id"), **doc} for doc in found]

    def read_edges(
        self,
        roi: Roi | None = None,
        nodes: list[dict[str, Any]] | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Edges whose `u` is one of `nodes` (default: the nodes in `roi`); all edges
        when both are None."""
        attrs = list(self.edge_attrs) if read_attrs is None else read_attrs
        query: dict[str, Any] = dict(attr_filter or {})
        if nodes is None and roi is not None:
            nodes = self.read_nodes(roi, read_attrs=[])
        if nodes is not None:
            if not nodes:
                return []
            query["u"] = {"$in": [int(n["id"]) for n in nodes]}
        projection = {"_id": 0, "u": 1, "v": 1, **{a: 1 for a in attrs}}
        return list(self.edges.find(query, projection))

    def read_graph(
        self,
        roi: Roi | None = None,
        read_edges: bool = True,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
        nodes_filter: dict[str, Any] | None = None,
        edges_filter: dict[str, Any] | None = None,
    ) -> Graph:
        graph: Graph = DiGraph() if self.directed else Graph()
        nodes = self.read_nodes(roi, attr_filter=nodes_filter, read_attrs=node_attrs)
        graph.add_nodes_from((n.pop("id"), n) for n in nodes)
        if read_edges:
            if roi is None and nodes_filter is None:
                edges = self.read_edges(attr_filter=edges_filter, read_attrs=edge_attrs)
            else:
                edges = self.read_edges(
                    nodes=[{"id": n} for n in graph.nodes],
                    attr_filter=edges_filter,
                    read_attrs=edge_attrs,
                )
            graph.add_edges_from((e.pop("u"), e.pop("v"), e) for e in edges)
        return graph

    def num_nodes(self, roi: Roi | None = None) -> int:
        return self.nodes.count_documents(self._roi_filter(roi))

    def num_edges(self) -> int:
        return self.edges.count_documents({})

    def has_edges(self, roi: Roi | None = None) -> bool:
        return bool(self.read_edges(roi))

    # ------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise RuntimeError("this graph database was opened read-only (mode 'r')")

    def _position(self, data: dict[str, Any]) -> tuple | None:
        position = data.get(self.position_attribute)
        if position is None:
            return None
        return tuple(position) if self.ndims > 1 else (position,)

    def _insert(self, collection: Collection, docs: list[dict[str, Any]], fail: bool) -> None:
        """Unordered bulk inserts; duplicate keys are skipped unless `fail`."""
        for start in range(0, len(docs), BATCH):
            try:
                collection.insert_many(docs[start : start + BATCH], ordered=False)
            except BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                if fail or any(e.get("code") != DUPLICATE_KEY for e in errors):
                    raise

    def write_nodes(
        self,
        nodes: Any,
        roi: Roi | None = None,
        attributes: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        self._check_writable()
        attrs = list(self.node_attrs) if attributes is None else attributes
        docs = []
        for node_id, data in nodes.items():
            position = self._position(data)
            if roi is not None and (position is None or not roi.contains(position)):
                continue
            doc = {"_id": int(node_id)}
            doc.update({a: _plain(data[a]) for a in attrs if data.get(a) is not None})
            docs.append(doc)
        if delete:
            self.nodes.delete_many(self._roi_filter(roi))
        if docs:
            self._insert(self.nodes, docs, fail_if_exists)

    def _edge_docs(
        self, nodes: Any, edges: Iterable, roi: Roi | None, attrs: list[str]
    ) -> list[dict[str, Any]]:
        """Edge documents whose `u` lies in `roi` (each edge belongs to one block)."""
        docs = []
        for u, v, data in edges:
            if not self.directed and u > v:
                u, v = v, u
            if roi is not None:
                position = self._position(nodes[u]) if u in nodes else None
                if position is None or not roi.contains(position):
                    continue
            doc = {"u": int(u), "v": int(v)}
            doc.update({a: _plain(data[a]) for a in attrs if data.get(a) is not None})
            docs.append(doc)
        return docs

    def write_edges(
        self,
        nodes: Any,
        edges: Any,
        roi: Roi | None = None,
        attributes: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        self._check_writable()
        attrs = list(self.edge_attrs) if attributes is None else attributes
        docs = self._edge_docs(nodes, edges(data=True), roi, attrs)
        if delete:
            self.edges.delete_many({})
        if docs:
            self._insert(self.edges, docs, fail_if_exists)

    def write_graph(
        self,
        graph: Graph,
        roi: Roi | None = None,
        write_nodes: bool = True,
        write_edges: bool = True,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        if write_nodes:
            self.write_nodes(graph.nodes, roi, node_attrs, fail_if_exists, delete)
        if write_edges:
            self.write_edges(graph.nodes, graph.edges, roi, edge_attrs, fail_if_exists, delete)

    def write_attrs(
        self,
        graph: Graph,
        roi: Roi | None = None,
        node_attrs: list[str] | None = None,
        edge_attrs: list[str] | None = None,
    ) -> None:
        """Update attributes of existing nodes and edges (upserts only here)."""
        self._check_writable()
        node_ops = []
        for node_id, data in graph.nodes(data=True):
            position = self._position(data)
            if roi is not None and (position is None or not roi.contains(position)):
                continue
            values = {a: _plain(data.get(a)) for a in node_attrs or []}
            if values:
                node_ops.append(UpdateOne({"_id": int(node_id)}, {"$set": values}))
        edge_ops = [
            UpdateOne({"u": d["u"], "v": d["v"]}, {"$set": d})
            for d in self._edge_docs(graph.nodes, graph.edges(data=True), roi, edge_attrs or [])
            if len(d) > 2
        ]
        for collection, ops in ((self.nodes, node_ops), (self.edges, edge_ops)):
            for start in range(0, len(ops), BATCH):
                collection.bulk_write(ops[start : start + BATCH], ordered=False)

    # ------------------------------------------------------------ block bookkeeping

    def block_done(self, task: str, block_id: int) -> bool:
        return self.blocks.find_one({"task": task, "block_id": int(block_id)}) is not None

    def mark_block_done(self, task: str, block_id: int, **info: Any) -> None:
        self.blocks.update_one(
            {"task": task, "block_id": int(block_id)},
            {"$set": {k: _plain(v) for k, v in info.items()}},
            upsert=True,
        )

    def blocks_done(self, task: str) -> int:
        return self.blocks.count_documents({"task": task})

    def reset_blocks(self, task: str) -> None:
        self.blocks.delete_many({"task": task})


# ---------------------------------------------------------------- connections per process

_CLIENTS: dict[tuple[int, str], MongoClient] = {}


def process_client(uri: str | None = None) -> MongoClient:
    """A client for this process: blockwise workers are forked, and a MongoClient must not
    cross a fork, so each process opens its own (once)."""
    from connecto.db.client import connect, resolve_uri
    from connecto.settings import load_settings

    settings = load_settings()
    uri = uri or resolve_uri(settings)
    key = (os.getpid(), uri)
    if key not in _CLIENTS:
        _CLIENTS[key] = connect(uri, settings.mongo_timeout_s)
    return _CLIENTS[key]


class MongoDB(DB):
    """A MongoDB graph for volara-style blockwise tasks (the counterpart of volara's
    `SQLite` and `PostgreSQL` configs). `uri` None: the connecto settings decide."""

    db_type: Literal["mongodb"] = "mongodb"
    name: str
    prefix: str = ""
    uri: str | None = None

    @property
    def id(self) -> str:
        return f"{self.name}.{self.prefix}".rstrip("_.")

    def database(self) -> Database:
        return process_client(self.uri)[self.name]

    def open(self, mode: str = "r") -> MongoDBGraphDataBase:
        node_attrs, edge_attrs = self.graph_attrs
        return MongoDBGraphDataBase(
            self.database(),
            mode=mode,
            prefix=self.prefix,
            position_attribute="position",
            node_attrs=node_attrs,
            edge_attrs=edge_attrs,
        )

    def drop(self) -> None:
        drop_graph(self.database(), self.prefix)

    def drop_edges(self) -> None:
        try:
            self.open("r+").drop_edges()
        except RuntimeError:
            pass

    def spoof(self, nodes: bool = True) -> MongoDB:
        raise ConnectoError("a MongoDB graph cannot be spoofed; benchmark on a scratch prefix")
