"""Column chunks: the storage layout of segment-graph nodes and edges in MongoDB.

A region adjacency graph has millions of fragments and several edges per fragment. One
document per node or edge makes every block write, every block's ROI read and the global
agglomeration read pay a per-document cost (parsing, `_id`, index entries). Nodes and
edges are therefore kept in *chunks*: one document per write (a block, or a compact slice
of a large write) holding its rows as columns, with the range of its key ids and the
bounding box of its positions, both indexed. A block writes one document and reads the
few that touch it; a whole graph reads as a handful of `np.frombuffer` calls.

A column of numbers (or of equal-length number vectors, e.g. positions) with every value
present is stored as little-endian binary (`dtype`, `shape`, `data`); any other column
(strings, missing values) as a BSON list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from bson import Binary
from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

ID_DTYPE = np.dtype("<u8")
MAX_ID = 2**63 - 1  # id ranges are BSON int64
CHUNK_ROWS = 20_000  # rows per chunk document: about 0.6 MB for an edge with two scores


@dataclass
class Columns:
    """Rows as named, equal-length arrays (object arrays hold None where missing)."""

    data: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def take(self, index: np.ndarray | slice) -> Columns:
        return Columns({name: values[index] for name, values in self.data.items()})

    def select(self, names: Sequence[str]) -> Columns:
        return Columns({name: self.data[name] for name in names if name in self.data})

    @classmethod
    def concat(cls, parts: Sequence[Columns], names: Sequence[str]) -> Columns:
        """One table from several; a column a part lacks is None there."""
        data = {}
        for name in names:
            pieces = [
                part.data[name] if name in part else np.full(len(part), None, dtype=object)
                for part in parts
            ]
            shapes = {piece.shape[1:] for piece in pieces if piece.dtype != object}
            if any(piece.dtype == object for piece in pieces) or len(shapes) > 1:
                pieces = [_objects(piece) for piece in pieces]
            data[name] = np.concatenate(pieces) if pieces else np.empty(0, dtype=object)
        return cls(data)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Columns:
        return cls(
            {name: typed_column([plain_value(r.get(name)) for r in records]) for name in names}
        )

    def records(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """One dict per row with the present values of `names` (as funlib returns)."""
        columns = [(name, self.data[name].tolist()) for name in names if name in self.data]
        return [
            {name: values[i] for name, values in columns if values[i] is not None}
            for i in range(len(self))
        ]


def _objects(values: np.ndarray) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values.tolist() if values.ndim > 1 else values
    return out


def plain_value(value: Any) -> Any:
    """BSON-encodable values: numpy scalars and arrays, Coordinates, tuples."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple | list):
        return [plain_value(v) for v in value]
    return value


def typed_column(values: list[Any]) -> np.ndarray:
    """A numeric array when every value is a number (or a number vector of one length);
    else an object array."""
    kinds = {type(value) for value in values}
    try:
        if kinds and kinds <= {bool}:
            return np.array(values, dtype=np.bool_)
        if kinds and kinds <= {int}:
            return np.array(values, dtype=np.int64)
        if kinds and kinds <= {int, float}:
            return np.array(values, dtype=np.float64)
        if kinds == {list} and len({len(v) for v in values}) == 1:
            array = np.array(values)
            if array.dtype.kind in "iuf":
                return array.astype(np.float64 if array.dtype.kind == "f" else np.int64)
    except (OverflowError, ValueError):
        pass
    return _objects(np.array(values + [None], dtype=object)[:-1])


def encode_column(values: np.ndarray) -> dict[str, Any]:
    if values.dtype == object:
        return {"list": values.tolist()}
    little = values.astype(values.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": little.dtype.str,
        "shape": list(values.shape[1:]),
        "data": Binary(little.tobytes()),
    }


def decode_column(column: Mapping[str, Any]) -> np.ndarray:
    if "list" in column:
        return _objects(np.array(column["list"] + [None], dtype=object)[:-1])
    values = np.frombuffer(column["data"], dtype=np.dtype(column["dtype"]))
    return values.reshape(-1, *column.get("shape", []))


def packed_pairs(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One uint64 per pair of ids below 2**32, ordered as the pairs: sorting these is
    much faster than sorting records."""
    return (u.astype(ID_DTYPE) << np.uint64(32)) | v.astype(ID_DTYPE)


def row_index(keys: Sequence[np.ndarray], among: Sequence[np.ndarray]) -> np.ndarray:
    """For each row of the key columns `keys` (one id, or a `u`, `v` pair), its index
    in `among`, or -1."""
    size = keys[0].size
    result = np.full(size, -1, dtype=np.int64)
    if size == 0 or among[0].size == 0:
        return result
    if len(keys) == 1:
        wanted, stored = keys[0], among[0]
        order = np.argsort(stored, kind="stable")
    elif max(int(k.max()) for k in (*keys, *among)) < 2**32:
        wanted, stored = packed_pairs(*keys), packed_pairs(*among)
        order = np.argsort(stored, kind="stable")
    else:
        pair = [("u", ID_DTYPE), ("v", ID_DTYPE)]
        wanted, stored = np.empty(size, dtype=pair), np.empty(among[0].size, dtype=pair)
        wanted["u"], wanted["v"], stored["u"], stored["v"] = *keys, *among
        order = np.lexsort((stored["v"], stored["u"]))
    position = np.minimum(np.searchsorted(stored[order], wanted), order.size - 1)
    found = stored[order][position] == wanted
    result[found] = order[position[found]]
    return result


def spatial_order(positions: np.ndarray) -> np.ndarray:
    """An order that keeps nearby positions together (Morton/Z-order of a 2^10 grid over
    their bounding box), so slices of a large write get small bounding boxes."""
    if positions.shape[0] == 0:
        return np.arange(0)
    finite = np.where(np.isfinite(positions), positions, 0.0)
    low, high = finite.min(axis=0), finite.max(axis=0)
    cells = ((finite - low) / np.maximum(high - low, 1e-9) * 1023).astype(np.uint64)
    code = np.zeros(positions.shape[0], dtype=np.uint64)
    dims = positions.shape[1]
    for bit in range(10):
        for d in range(dims):
            code |= ((cells[:, d] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bit * dims + d)
    return np.argsort(code, kind="stable")


def bounds(positions: np.ndarray) -> tuple[list[float], list[float]]:
    """Inclusive bounding box of `positions` (n, d); infinite if any is unknown (NaN),
    so queries always consider the rows."""
    dims = positions.shape[1]
    if positions.shape[0] == 0 or np.isnan(positions).any():
        return [-np.inf] * dims, [np.inf] * dims
    return positions.min(axis=0).tolist(), positions.max(axis=0).tolist()


class ChunkedTable:
    """The chunks of one collection. Rows are keyed by `keys` (`("id",)` for nodes,
    `("u", "v")` for edges) and located by one position per row."""

    def __init__(self, collection: Collection, keys: tuple[str, ...], ndims: int) -> None:
        self.collection = collection
        self.keys = keys
        self.ndims = ndims

    def create_indexes(self) -> None:
        self.collection.create_index([("id_min", ASCENDING), ("id_max", ASCENDING)], name="ids")
        self.collection.create_index([("low.0", ASCENDING), ("high.0", ASCENDING)], name="bounds")

    def query(
        self,
        ids: np.ndarray | None = None,
        low: Sequence[float] | None = None,
        high: Sequence[float] | None = None,
        inclusive: bool = False,
    ) -> dict[str, Any]:
        """Chunks that may hold a first key among `ids` at a position within `low` and
        `high` (exclusive unless `inclusive`; infinite or None: open)."""
        query: dict[str, Any] = {}
        if ids is not None and ids.size:
            query["id_min"] = {"$lte": int(ids.max())}
            query["id_max"] = {"$gte": int(ids.min())}
        for d in range(self.ndims):
            if high is not None and np.isfinite(high[d]):
                query[f"low.{d}"] = {"$lte" if inclusive else "$lt": float(high[d])}
            if low is not None and np.isfinite(low[d]):
                query[f"high.{d}"] = {"$gte": float(low[d])}
        return query

    def read(self, query: Mapping[str, Any], names: Sequence[str]) -> Columns:
        """The key columns and `names` of every chunk matching `query`."""
        names = list(dict.fromkeys([*self.keys, *names]))
        projection = {"_id": 0, **{f"columns.{name}": 1 for name in names}}
        chunks = [
            Columns({k: decode_column(v) for k, v in doc["columns"].items()})
            for doc in self.collection.find(query, projection)
        ]
        table = Columns.concat(chunks, names)
        for key in self.keys:
            table.data[key] = table[key].astype(ID_DTYPE, copy=False)
        return table

    def count(self) -> int:
        return sum(doc["count"] for doc in self.collection.find({}, {"count": 1}))

    def append(self, table: Columns, positions: np.ndarray, existing: Mapping[str, Any],
               fail_if_exists: bool) -> None:  # fmt: skip
        """Store the rows of `table` not stored yet (rows in chunks matching `existing`);
        with `fail_if_exists`, any stored row is an error and nothing is written."""
        keys = [table[k] for k in self.keys]
        first = row_index(keys, keys) == np.arange(len(table))
        table, positions = table.take(first), positions[first]
        stored = self.read(existing, [])
        exists = row_index([table[k] for k in self.keys], [stored[k] for k in self.keys]) >= 0
        if exists.any():
            if fail_if_exists:
                example = tuple(int(table[k][exists][0]) for k in self.keys)
                raise DuplicateKeyError(
                    f"{int(exists.sum())} of {len(table)} rows exist already in "
                    f"{self.collection.full_name}, e.g. {example}"
                )
            table, positions = table.take(~exists), positions[~exists]
        if len(table) > CHUNK_ROWS:
            order = spatial_order(positions)
            table, positions = table.take(order), positions[order]
        docs = [
            self._document(table.take(slice(s, s + CHUNK_ROWS)), positions[s : s + CHUNK_ROWS])
            for s in range(0, len(table), CHUNK_ROWS)
        ]
        if docs:
            self.collection.insert_many(docs)

    def _document(self, table: Columns, positions: np.ndarray) -> dict[str, Any]:
        first = table[self.keys[0]]
        if max(int(table[k].max()) for k in self.keys) > MAX_ID:
            raise ValueError(f"ids above {MAX_ID} cannot be stored")
        low, high = bounds(positions)
        return {
            "count": len(table),
            "id_min": int(first.min()),
            "id_max": int(first.max()),
            "low": low,
            "high": high,
            "columns": {name: encode_column(values) for name, values in table.data.items()},
        }

    def update(self, table: Columns, query: Mapping[str, Any], names: Sequence[str]) -> None:
        """Set the columns `names` of stored rows to their values in `table`."""
        for doc in self.collection.find(query, {"columns": 1}):
            stored = {k: decode_column(v) for k, v in doc["columns"].items()}
            keys = [stored[k].astype(ID_DTYPE, copy=False) for k in self.keys]
            index = row_index(keys, [table[k] for k in self.keys])
            hit = index >= 0
            if not hit.any():
                continue
            columns = dict(doc["columns"])
            for name in names:
                values = _objects(stored.get(name, np.full(hit.size, None, dtype=object)))
                values[hit] = _objects(table[name])[index[hit]]
                columns[name] = encode_column(typed_column(values.tolist()))
            self.collection.update_one({"_id": doc["_id"]}, {"$set": {"columns": columns}})

    def delete(self, query: Mapping[str, Any], drop: Callable[[Columns], np.ndarray]) -> None:
        """Remove the rows for which `drop(rows)` is true from the chunks matching
        `query`; a chunk's id range and bounds still bound what it keeps."""
        for doc in self.collection.find(query, {"columns": 1}):
            table = Columns({k: decode_column(v) for k, v in doc["columns"].items()})
            keep = ~drop(table)
            if not keep.any():
                self.collection.delete_one({"_id": doc["_id"]})
            elif not keep.all():
                kept = table.take(keep)
                columns = {name: encode_column(values) for name, values in kept.data.items()}
                self.collection.update_one(
                    {"_id": doc["_id"]}, {"$set": {"columns": columns, "count": len(kept)}}
                )
