"""The MongoDB segment graph on the real server: round trips, ROI queries, duplicates,
attribute updates, block bookkeeping and the volara-style `MongoDB` config."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from funlib.geometry import Roi
from funlib.persistence.types import Vec
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from connecto import ConnectoError
from connecto.db.columns import Columns, decode_column, row_index, spatial_order
from connecto.db.graph import MongoDB, MongoDBGraphDataBase

NODE_ATTRS = {"position": Vec(float, 3), "size": int}
EDGE_ATTRS = {"merge_score": float, "mean_affinity": float}


def _graph() -> nx.Graph:
    graph = nx.Graph()
    # a 4 x 4 x 4 grid of nodes 10 nm apart, ids 1..64
    for i in range(64):
        z, y, x = i // 16, (i // 4) % 4, i % 4
        graph.add_node(i + 1, position=(z * 10.0, y * 10.0, x * 10.0), size=i + 5)
    for i in range(1, 64):
        graph.add_edge(i + 1, i, merge_score=i / 64, mean_affinity=1 - i / 64)
    return graph


@pytest.fixture
def graph_db(mongo_client: MongoClient, db_name: str) -> MongoDBGraphDataBase:
    return MongoDBGraphDataBase(
        mongo_client[db_name], mode="w", prefix="vol_run_", node_attrs=NODE_ATTRS,
        edge_attrs=EDGE_ATTRS,
    )  # fmt: skip


def test_round_trip(graph_db: MongoDBGraphDataBase, mongo_client: MongoClient, db_name: str):
    graph = _graph()
    graph_db.write_graph(graph)
    reopened = MongoDBGraphDataBase(mongo_client[db_name], mode="r", prefix="vol_run_")
    assert reopened.node_attrs == NODE_ATTRS and reopened.edge_attrs == EDGE_ATTRS
    back = reopened.read_graph()
    assert set(back.nodes) == set(graph.nodes)
    assert back.nodes[7] == {"position": [0.0, 10.0, 20.0], "size": 11}
    assert {tuple(sorted(e)) for e in back.edges} == {tuple(sorted(e)) for e in graph.edges}
    assert back.edges[3, 4] == pytest.approx({"merge_score": 3 / 64, "mean_affinity": 61 / 64})
    # one chunk document each, columns with their id range and position bounds
    (doc,) = mongo_client[db_name]["vol_run_edges"].find()
    chunk = Columns({k: decode_column(v) for k, v in doc["columns"].items()})
    assert (doc["count"], doc["id_min"], doc["id_max"]) == (63, 1, 63)
    # stored undirected as u < v
    assert list(zip(chunk["u"].tolist(), chunk["v"].tolist(), strict=True))[2] == (3, 4)
    assert chunk["merge_score"].dtype == np.float64
    (doc,) = mongo_client[db_name]["vol_run_nodes"].find()
    assert (doc["low"], doc["high"]) == ([0, 0, 0], [30, 30, 30])
    assert decode_column(doc["columns"]["position"]).shape == (64, 3)
    assert set(mongo_client[db_name].list_collection_names()) >= {
        "vol_run_nodes", "vol_run_edges", "vol_run_meta", "vol_run_blocks",
    }  # fmt: skip


def test_roi_queries_are_half_open(graph_db: MongoDBGraphDataBase):
    graph_db.write_graph(_graph())
    roi = Roi((0, 0, 0), (20, 20, 10))  # z in {0, 10}, y in {0, 10}, x = 0
    sub = graph_db.read_graph(roi)
    # as in funlib's SQL graphs, edges leaving the ROI bring their other end without data
    inside = {n: d["position"] for n, d in sub.nodes(data=True) if "position" in d}
    assert sorted(map(tuple, inside.values())) == [(0, 0, 0), (0, 10, 0), (10, 0, 0), (10, 10, 0)]
    assert sorted(n["id"] for n in graph_db.read_nodes(roi)) == sorted(inside)
    assert graph_db.num_nodes(roi) == 4
    # edges are those whose u is inside: (1, 2) has u=1 at the origin
    assert (1, 2) in sub.edges
    assert graph_db.read_nodes(Roi((100, 0, 0), (10, 10, 10))) == []
    assert not graph_db.has_edges(Roi((100, 0, 0), (10, 10, 10)))
    assert (
        graph_db.read_graph(Roi((0, 0, 0), (10, 10, 10)), read_edges=False).number_of_nodes() == 1
    )


def test_write_restricted_to_roi_and_duplicates(graph_db: MongoDBGraphDataBase):
    graph = _graph()
    first_half = Roi((0, 0, 0), (20, 40, 40))
    graph_db.write_graph(graph, first_half)
    assert graph_db.num_nodes() == 32
    # edges belong to the block holding u: (16, 17) has u=16 at z=0, written now
    assert graph_db.num_edges() == 32
    graph_db.write_graph(graph)  # a rerun of everything skips what exists
    assert (graph_db.num_nodes(), graph_db.num_edges()) == (64, 63)
    assert len(graph_db.read_edges()) == 63
    with pytest.raises(DuplicateKeyError, match="64 of 64 rows exist already"):
        graph_db.write_graph(graph, fail_if_exists=True)
    with pytest.raises(DuplicateKeyError, match="63 of 63 rows exist already"):
        graph_db.write_graph(graph, write_nodes=False, fail_if_exists=True)
    assert (graph_db.num_nodes(), graph_db.num_edges()) == (64, 63)
    graph_db.delete_nodes(first_half)
    assert graph_db.num_nodes() == 32 and graph_db.num_nodes(first_half) == 0


def test_large_writes_split_into_compact_chunks(
    graph_db: MongoDBGraphDataBase, monkeypatch: pytest.MonkeyPatch
):
    """A write of more than one chunk of edges is split spatially, so ROI reads touch
    few chunks, and reads back exactly (ids above 2**32 take the slow pair path)."""
    monkeypatch.setattr("connecto.db.columns.CHUNK_ROWS", 300)  # small chunks, small graph
    rng = np.random.default_rng(0)
    side, base = 12, 2**40
    graph = nx.Graph()
    for i in range(side**3):
        z, y, x = i // side**2, (i // side) % side, i % side
        graph.add_node(base + i, position=(z * 10.0, y * 10.0, x * 10.0), size=1)
    for i in range(side**3 - 1):
        graph.add_edge(base + i, base + i + 1, merge_score=float(rng.random()))
    graph_db.write_graph(graph)
    assert graph_db.edges.count_documents({}) == -(-graph.number_of_edges() // 300)
    assert graph_db.nodes.count_documents({}) == -(-graph.number_of_nodes() // 300)
    assert graph_db.num_edges() == graph.number_of_edges()
    roi = Roi((0, 0, 0), (50, 50, 50))
    edges = graph_db.read_edge_columns(roi, read_attrs=["merge_score"])
    assert graph_db.num_nodes(roi) == 5**3
    expected = {(min(e), max(e)) for e in graph.edges if max(graph.nodes[min(e)]["position"]) < 50}
    assert set(zip(edges["u"].tolist(), edges["v"].tolist(), strict=True)) == expected
    for u, v, score in zip(edges["u"], edges["v"], edges["merge_score"], strict=True):
        assert graph.edges[int(u), int(v)]["merge_score"] == score
    for table in (graph_db.node_table, graph_db.edge_table):
        touching = table.query(None, *graph_db._roi_bounds(roi))
        assert table.collection.count_documents(touching) < table.collection.count_documents({})


def test_edge_attr_filter_and_missing_values(graph_db: MongoDBGraphDataBase):
    graph = _graph()
    del graph.edges[1, 2]["mean_affinity"]
    graph_db.write_graph(graph)
    back = graph_db.read_graph()
    assert "mean_affinity" not in back.edges[1, 2] and "mean_affinity" in back.edges[2, 3]
    assert graph_db.read_edges(attr_filter={"merge_score": 2 / 64}) == [
        {"u": 2, "v": 3, "merge_score": 2 / 64, "mean_affinity": 62 / 64}
    ]
    found = graph_db.read_edges(attr_filter={"merge_score": [1 / 64, 3 / 64]}, read_attrs=[])
    assert found == [{"u": 1, "v": 2}, {"u": 3, "v": 4}]


def test_row_index_and_spatial_order():
    u, v = np.array([5, 1, 2**40, 3], dtype=np.uint64), np.array([6, 2, 1, 4], dtype=np.uint64)
    among_u = np.array([3, 2**40, 1], dtype=np.uint64)
    among_v = np.array([4, 1, 3], dtype=np.uint64)
    assert row_index([u, v], [among_u, among_v]).tolist() == [-1, -1, 1, 0]
    small = [0, 1, 3]  # ids below 2**32: the packed path
    assert row_index([u[small], v[small]], [among_u[[0, 2]], among_v[[0, 2]]]).tolist() == [
        -1, -1, 0,
    ]  # fmt: skip
    assert row_index([u], [among_u]).tolist() == [-1, 2, 1, 0]  # ids alone
    positions = np.array([[0, 0, 0], [100, 100, 100], [1, 1, 1], [99, 99, 99]], dtype=float)
    order = spatial_order(positions).tolist()
    assert abs(order.index(0) - order.index(2)) == 1 and abs(order.index(1) - order.index(3)) == 1


def test_graph_of_another_layout_is_refused(graph_db: MongoDBGraphDataBase):
    graph_db.meta.update_one({"_id": "graph"}, {"$unset": {"layout": ""}})
    with pytest.raises(ConnectoError, match="rerun its fragments and agglomerate"):
        MongoDBGraphDataBase(graph_db.db, mode="r", prefix="vol_run_")


def test_write_attrs_updates_in_place(graph_db: MongoDBGraphDataBase):
    graph = _graph()
    graph_db.write_graph(graph)
    for _, _, data in graph.edges(data=True):
        data["merge_score"] = 0.5
    graph.nodes[1]["size"] = 1000
    graph_db.write_attrs(graph, node_attrs=["size"], edge_attrs=["merge_score"])
    back = graph_db.read_graph()
    assert back.nodes[1]["size"] == 1000
    assert {d["merge_score"] for _, _, d in back.edges(data=True)} == {0.5}
    assert graph_db.num_edges() == 63  # updated in place, nothing added
    assert back.edges[1, 2]["mean_affinity"] == pytest.approx(1 - 1 / 64)


def test_read_only_and_missing(mongo_client: MongoClient, db_name: str):
    with pytest.raises(RuntimeError, match="no graph"):
        MongoDBGraphDataBase(mongo_client[db_name], mode="r", prefix="absent_")
    MongoDBGraphDataBase(mongo_client[db_name], mode="w", node_attrs=NODE_ATTRS)
    read_only = MongoDBGraphDataBase(mongo_client[db_name], mode="r")
    with pytest.raises(RuntimeError, match="read-only"):
        read_only.write_graph(_graph())


def test_block_bookkeeping(graph_db: MongoDBGraphDataBase):
    assert not graph_db.block_done("frags", 3)
    graph_db.mark_block_done("frags", 3, num_nodes=12)
    graph_db.mark_block_done("frags", 3, num_nodes=12)
    assert graph_db.block_done("frags", 3) and not graph_db.block_done("edges", 3)
    assert graph_db.blocks_done("frags") == 1
    graph_db.reset_blocks("frags")
    assert graph_db.blocks_done("frags") == 0


def test_volara_style_config(db_name: str, mongo_client: MongoClient):
    config = MongoDB(name=db_name, prefix="np_", edge_attrs={"merge_score": "float"})
    config.init()  # creates: volara's DB.init opens 'r', falls back to 'w'
    graph = config.open("r+")
    assert "position" in graph.node_attrs and "merge_score" in graph.edge_attrs
    graph.write_graph(_graph())
    config.drop_edges()
    assert (graph.num_nodes(), graph.num_edges()) == (64, 0)
    config.drop()
    assert "np_nodes" not in mongo_client[db_name].list_collection_names()
