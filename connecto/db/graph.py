"""Segment graphs in MongoDB: funlib.persistence's `GraphDataBase` interface.

funlib.persistence ships graph databases for SQLite and PostgreSQL only; this one keeps a
graph in four collections of a MongoDB database, named `<prefix>nodes`, `<prefix>edges`,
`<prefix>meta` and `<prefix>blocks`:

- nodes: column chunks (`connecto.db.columns`) of `id` (the fragment id), `position`
  ([z, y, x] in world units), `size` and the other declared node attributes.
- edges: column chunks of `u`, `v` (u < v for undirected graphs) and the declared edge
  attributes (merge score, affinity statistics), located by the position of `u`.
- meta: one document describing the graph (layout, position attribute, attribute
  types, ROI).
- blocks: `{task, block_id}` of every finished block, so blockwise work resumes.

Each chunk holds the rows of one write (a block) with its id range and position bounds,
both indexed: ROI queries read the chunks whose bounds meet the ROI. An id (a `u`, `v`
pair) is stored once: a write skips the rows already stored (funlib's `INSERT OR
IGNORE`), or with `fail_if_exists` refuses them. As with funlib's databases, blockwise
writers write disjoint rows: a node, and an edge by its `u`, belongs to one block.
`MongoDB` is the volara-style db config that opens a graph.
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
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from volara.dbs import DB

from connecto import ConnectoError
from connecto.db.columns import ID_DTYPE, ChunkedTable, Columns, bounds, plain_value
from connecto.names import check_name

META_ID = "graph"
LAYOUT = "column-chunks-1"  # stored in meta: graphs of another layout are refused
COLLECTIONS = ("nodes", "edges", "meta", "blocks")


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
        else:
            meta = self.meta.find_one({"_id": META_ID})
            if meta is None:
                # volara's `DB.init` relies on this exception to decide to create
                raise RuntimeError(f"no graph '{prefix}' in database {db.name}")
            if meta.get("layout") != LAYOUT:
                raise ConnectoError(
                    f"graph '{prefix}' in database {db.name} has layout "
                    f"{meta.get('layout', 'one document per node and edge')!r}, not "
                    f"{LAYOUT!r}: rerun its fragments and agglomerate steps with --overwrite"
                )
            self.position_attribute = meta["position_attribute"]
            self.directed = meta["directed"] if directed is None else directed
            self.ndims = meta["ndims"]
            self.total_roi = Roi(meta["total_roi_offset"], meta["total_roi_shape"])
            stored_nodes = {k: _type_from_str(v) for k, v in meta["node_attrs"].items()}
            stored_edges = {k: _type_from_str(v) for k, v in meta["edge_attrs"].items()}
            # attributes declared now but not stored yet (a later task adds a score)
            self._node_attrs = {**stored_nodes, **(node_attrs or {})}
            self._edge_attrs = {**stored_edges, **(edge_attrs or {})}
        self.node_table = ChunkedTable(self.nodes, ("id",), self.ndims)
        self.edge_table = ChunkedTable(self.edges, ("u", "v"), self.ndims)
        if mode == "w":
            self._create()
        elif mode == "r+" and (self._node_attrs, self._edge_attrs) != (stored_nodes, stored_edges):
            self._store_meta()

    # ------------------------------------------------------------ schema

    def _create(self) -> None:
        self.node_table.create_indexes()
        self.edge_table.create_indexes()
        self.blocks.create_index(
            [("task", ASCENDING), ("block_id", ASCENDING)], unique=True, name="task_block"
        )
        self._store_meta()

    def _store_meta(self) -> None:
        self.meta.replace_one(
            {"_id": META_ID},
            {
                "layout": LAYOUT,
                "position_attribute": self.position_attribute,
                "directed": self.directed,
                "ndims": self.ndims,
                "total_roi_offset": plain_value(tuple(self.total_roi.offset)),
                "total_roi_shape": plain_value(tuple(self.total_roi.shape)),
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

    # ------------------------------------------------------------ positions

    def _roi_bounds(self, roi: Roi | None) -> tuple[list[float], list[float]]:
        """Inclusive lower and exclusive upper position bounds (infinite where open)."""
        if roi is None:
            return [-np.inf] * self.ndims, [np.inf] * self.ndims
        low = [-np.inf if b is None else float(b) for b in roi.begin]
        high = [np.inf if e is None else float(e) for e in roi.end]
        return low, high

    def _inside(self, positions: np.ndarray, roi: Roi | None) -> np.ndarray:
        """Which positions (n, ndims; NaN unknown) lie in the half-open `roi`."""
        if roi is None:
            return np.ones(positions.shape[0], dtype=bool)
        low, high = self._roi_bounds(roi)
        with np.errstate(invalid="ignore"):
            return np.all((positions >= low) & (positions < high), axis=1)

    def _positions(self, nodes: Columns) -> np.ndarray:
        """The position column as floats (n, ndims), NaN where unknown."""
        values = nodes[self.position_attribute]
        if values.dtype != object:
            return values.astype(np.float64).reshape(len(nodes), self.ndims)
        positions = np.full((len(nodes), self.ndims), np.nan)
        for i, value in enumerate(values.tolist()):
            if value is not None:
                positions[i] = value
        return positions

    def _position(self, data: dict[str, Any]) -> tuple | None:
        position = data.get(self.position_attribute)
        if position is None:
            return None
        return tuple(position) if self.ndims > 1 else (position,)

    # ------------------------------------------------------------ reading

    def read_node_columns(
        self,
        roi: Roi | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> Columns:
        """`id` and `read_attrs` (default: all) of the nodes whose position lies in
        `roi` (half-open) and whose attributes match `attr_filter`, as arrays."""
        attrs = list(self.node_attrs) if read_attrs is None else list(read_attrs)
        filters = attr_filter or {}
        needed = [*attrs, *filters, *([self.position_attribute] if roi is not None else [])]
        nodes = self.node_table.read(self.node_table.query(None, *self._roi_bounds(roi)), needed)
        keep = _matches(nodes, filters)
        if roi is not None:
            keep &= self._inside(self._positions(nodes), roi)
        return nodes.take(keep).select(["id", *attrs])

    def read_nodes(
        self,
        roi: Roi | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Nodes whose position lies in `roi` (half-open), as dicts with `id`."""
        attrs = list(self.node_attrs) if read_attrs is None else read_attrs
        return self.read_node_columns(roi, attr_filter, attrs).records(["id", *attrs])

    def read_edge_columns(
        self,
        roi: Roi | None = None,
        nodes: list[dict[str, Any]] | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> Columns:
        """As `read_edges`, as arrays."""
        attrs = list(self.edge_attrs) if read_attrs is None else list(read_attrs)
        filters = attr_filter or {}
        ids, query = None, {}
        if nodes is None and roi is not None:
            ids = self.read_node_columns(roi, read_attrs=[])["id"]
            query = self.edge_table.query(ids, *self._roi_bounds(roi))
        elif nodes is not None:
            ids = np.array([n["id"] for n in nodes], dtype=ID_DTYPE)
            query = self.edge_table.query(ids)
        if ids is not None and ids.size == 0:
            return Columns.concat([], ["u", "v", *attrs])
        edges = self.edge_table.read(query, [*attrs, *filters])
        keep = _matches(edges, filters)
        if ids is not None:
            keep &= np.isin(edges["u"], ids)
        return edges.take(keep).select(["u", "v", *attrs])

    def read_edges(
        self,
        roi: Roi | None = None,
        nodes: list[dict[str, Any]] | None = None,
        attr_filter: dict[str, Any] | None = None,
        read_attrs: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Edges whose `u` is one of `nodes` (default: the nodes in `roi`); all edges
        when both are None. `attr_filter` values match by equality, or membership for
        lists."""
        attrs = list(self.edge_attrs) if read_attrs is None else read_attrs
        return self.read_edge_columns(roi, nodes, attr_filter, attrs).records(["u", "v", *attrs])

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
        if roi is None:
            return self.node_table.count()
        return len(self.read_node_columns(roi, read_attrs=[]))

    def num_edges(self) -> int:
        return self.edge_table.count()

    def has_edges(self, roi: Roi | None = None) -> bool:
        return len(self.read_edge_columns(roi, read_attrs=[])) > 0

    # ------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self.mode == "r":
            raise RuntimeError("this graph database was opened read-only (mode 'r')")

    def _node_rows(
        self, nodes: Any, roi: Roi | None, attrs: list[str]
    ) -> tuple[Columns, np.ndarray]:
        """The nodes whose position lies in `roi`, with their positions."""
        names = list(dict.fromkeys(["id", self.position_attribute, *attrs]))
        rows = Columns.from_records([{**data, "id": n} for n, data in nodes.items()], names)
        rows.data["id"] = rows["id"].astype(ID_DTYPE)
        positions = self._positions(rows)
        inside = self._inside(positions, roi) if roi is not None else np.ones(len(rows), bool)
        return rows.take(inside).select(["id", *attrs]), positions[inside]

    def _edge_rows(
        self, nodes: Any, edges: Iterable, roi: Roi | None, attrs: list[str]
    ) -> tuple[Columns, np.ndarray]:
        """Edges (u < v when undirected) whose `u` lies in `roi` (each edge belongs to
        one block), with the positions of their `u` (NaN where unknown)."""
        records = []
        for u, v, data in edges:
            if not self.directed and u > v:
                u, v = v, u
            records.append({**data, "u": u, "v": v})
        rows = Columns.from_records(records, ["u", "v", *attrs])
        rows.data["u"], rows.data["v"] = rows["u"].astype(ID_DTYPE), rows["v"].astype(ID_DTYPE)
        unique, inverse = np.unique(rows["u"], return_inverse=True)
        known = np.full((unique.size, self.ndims), np.nan)
        for i, node_id in enumerate(unique.tolist()):
            position = self._position(nodes[node_id]) if node_id in nodes else None
            if position is not None:
                known[i] = position
        positions = known[inverse.reshape(-1)]
        inside = self._inside(positions, roi)
        return rows.take(inside), positions[inside]

    def write_nodes(
        self,
        nodes: Any,
        roi: Roi | None = None,
        attributes: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        """Append the nodes in `roi`; ids already stored are skipped (or refused with
        `fail_if_exists`). `delete` first removes the stored nodes in `roi`."""
        self._check_writable()
        attrs = list(self.node_attrs) if attributes is None else attributes
        rows, positions = self._node_rows(nodes, roi, [self.position_attribute, *attrs])
        if delete:
            self.delete_nodes(roi)
        if len(rows):
            existing = self.node_table.query(rows["id"])
            self.node_table.append(rows, positions, existing, fail_if_exists)

    def delete_nodes(self, roi: Roi | None = None) -> None:
        """Remove the stored nodes whose position lies in `roi` (all when None)."""
        self._check_writable()
        self.node_table.delete(
            self.node_table.query(None, *self._roi_bounds(roi)),
            lambda stored: self._inside(self._positions(stored), roi),
        )

    def write_edges(
        self,
        nodes: Any,
        edges: Any,
        roi: Roi | None = None,
        attributes: list[str] | None = None,
        fail_if_exists: bool = False,
        delete: bool = False,
    ) -> None:
        """Append the edges whose `u` lies in `roi`; pairs already stored are skipped
        (or refused with `fail_if_exists`). `delete` first removes every edge."""
        self._check_writable()
        attrs = list(self.edge_attrs) if attributes is None else attributes
        rows, positions = self._edge_rows(nodes, edges(data=True), roi, attrs)
        if delete:
            self.drop_edges()
        if len(rows):
            existing = self.edge_table.query(rows["u"], *bounds(positions), inclusive=True)
            self.edge_table.append(rows, positions, existing, fail_if_exists)

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
        """Update attributes of stored nodes and edges; nothing is added."""
        self._check_writable()
        if node_attrs:
            rows, _ = self._node_rows(graph.nodes, roi, node_attrs)
            if len(rows):
                self.node_table.update(rows, self.node_table.query(rows["id"]), node_attrs)
        if edge_attrs:
            rows, positions = self._edge_rows(graph.nodes, graph.edges(data=True), roi, edge_attrs)
            if len(rows):
                query = self.edge_table.query(rows["u"], *bounds(positions), inclusive=True)
                self.edge_table.update(rows, query, edge_attrs)

    # ------------------------------------------------------------ block bookkeeping

    def block_done(self, task: str, block_id: int) -> bool:
        return self.blocks.find_one({"task": task, "block_id": int(block_id)}) is not None

    def mark_block_done(self, task: str, block_id: int, **info: Any) -> None:
        self.blocks.update_one(
            {"task": task, "block_id": int(block_id)},
            {"$set": {k: plain_value(v) for k, v in info.items()}},
            upsert=True,
        )

    def blocks_done(self, task: str) -> int:
        return self.blocks.count_documents({"task": task})

    def reset_blocks(self, task: str) -> None:
        self.blocks.delete_many({"task": task})


def _matches(rows: Columns, attr_filter: dict[str, Any]) -> np.ndarray:
    """Rows whose attributes equal the filter's values (or are among them, for lists)."""
    keep = np.ones(len(rows), dtype=bool)
    for name, wanted in attr_filter.items():
        values = rows[name]
        many = isinstance(wanted, list | tuple | set)
        keep &= np.isin(values, list(wanted)) if many else values == wanted
    return keep


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
        """The graph's database; its name and prefix checked before anything is written."""
        if self.prefix:
            check_name("graph name", self.prefix.removesuffix("_"))
        return process_client(self.uri)[check_name("database name", self.name)]

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
