"""The MongoDB segment graph on the real server: round trips, ROI queries, duplicates,
attribute updates, block bookkeeping, the volara-style `MongoDB` config, and the export to
(and import from) one document per node and edge."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

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


# ---------------------------------------------------------------- one document per node and edge


def _large_id_graph() -> nx.Graph:
    """300 nodes with ids above 2**32 and ~400 edges with random scores; one edge
    lacks its mean affinity (a missing field, not a null)."""
    rng = np.random.default_rng(3)
    base = 2**33
    graph = nx.Graph()
    for i in range(300):
        position = tuple(float(p) for p in rng.uniform(0, 1000, 3).round(1))
        graph.add_node(base + i, position=position, size=int(rng.integers(1, 500)))
    while graph.number_of_edges() < 400:
        u, v = (base + int(i) for i in rng.integers(0, 300, 2))
        if u != v:
            score = float(rng.random())
            graph.add_edge(u, v, merge_score=score, mean_affinity=1 - score)
    del graph.edges[next(iter(graph.edges))]["mean_affinity"]
    return graph


def _sorted_columns(columns: Columns, keys: list[str]) -> dict[str, list]:
    order = np.lexsort([columns[k] for k in reversed(keys)])
    return {name: values[order].tolist() for name, values in columns.data.items()}


def test_export_and_import_documents_round_trip(
    graph_db: MongoDBGraphDataBase, mongo_client: MongoClient, db_name: str
):
    from connecto.db.graph_documents import export_graph, import_graph

    graph = _large_id_graph()
    graph_db.write_graph(graph)
    db = mongo_client[db_name]
    assert export_graph(graph_db, db, "lsd_nodes", "lsd_edges") == (300, 400)

    nodes, edges = db["lsd_nodes"], db["lsd_edges"]
    node_id = min(graph.nodes)
    node = nodes.find_one({"id": node_id}, {"_id": 0})
    z, y, x = graph.nodes[node_id]["position"]
    assert node == {
        "id": node_id, "center_z": z, "center_y": y, "center_x": x,
        "size": graph.nodes[node_id]["size"],
    }  # fmt: skip
    assert nodes.count_documents({"id": {"$type": "long"}}) == 300
    u = min(min(e) for e in graph.edges)
    expected = sorted(max(e) for e in graph.edges(u))
    found = list(edges.find({"u": u}))
    assert sorted(doc["v"] for doc in found) == expected
    assert all(doc["merge_score"] == graph.edges[u, doc["v"]]["merge_score"] for doc in found)
    low = {(min(a, b), max(a, b)) for a, b, s in graph.edges(data="merge_score") if s < 0.3}
    assert {(d["u"], d["v"]) for d in edges.find({"merge_score": {"$lt": 0.3}})} == low
    assert len(low) > 50
    assert edges.count_documents({"mean_affinity": {"$exists": False}}) == 1
    node_index, edge_index = nodes.index_information()["id"], edges.index_information()["u_v"]
    assert node_index["unique"] and node_index["key"] == [("id", 1)]
    assert edge_index["unique"] and edge_index["key"] == [("u", 1), ("v", 1)]

    copy = MongoDBGraphDataBase(db, mode="w", prefix="copy_", node_attrs=NODE_ATTRS)
    assert import_graph(db, "lsd_nodes", "lsd_edges", copy) == (300, 400)
    back = MongoDBGraphDataBase(db, mode="r", prefix="copy_")
    # attributes the documents hold are declared, with their types
    assert back.node_attrs == NODE_ATTRS and back.edge_attrs == EDGE_ATTRS
    for original, imported, keys in (
        (graph_db.read_node_columns(), back.read_node_columns(), ["id"]),
        (graph_db.read_edge_columns(), back.read_edge_columns(), ["u", "v"]),
    ):
        assert imported["id" if keys == ["id"] else "u"].dtype == np.uint64
        assert _sorted_columns(imported, keys) == _sorted_columns(original, keys)
    assert back.read_graph(Roi((0, 0, 0), (500, 500, 500))).number_of_nodes() > 0


def test_export_refuses_non_empty_targets(
    graph_db: MongoDBGraphDataBase, mongo_client: MongoClient, db_name: str
):
    from connecto.db.graph_documents import export_graph, import_graph

    graph_db.write_graph(_graph())
    db = mongo_client[db_name]
    db["lsd_edges"].insert_one({"u": 1, "v": 2, "merge_score": 0.9})
    with pytest.raises(ConnectoError, match=f"{db_name}.lsd_edges is not empty"):
        export_graph(graph_db, db, "lsd_nodes", "lsd_edges")
    assert db["lsd_edges"].count_documents({}) == 1
    assert "lsd_nodes" not in db.list_collection_names()
    assert export_graph(graph_db, db, "lsd_nodes", "lsd_edges", overwrite=True) == (64, 63)
    assert db["lsd_edges"].count_documents({"merge_score": 0.9}) == 0
    # the graph's own chunk collections are never a target, even with overwrite
    with pytest.raises(ConnectoError, match="column chunks of the segment graph 'vol_run_'"):
        export_graph(graph_db, db, "vol_run_nodes", "lsd_edges", overwrite=True)
    assert graph_db.num_nodes() == 64
    # an import into a graph that holds rows is refused, as are ids int64 cannot hold
    with pytest.raises(ConnectoError, match="'vol_run_' .* is not empty"):
        import_graph(db, "lsd_nodes", "lsd_edges", graph_db)
    db["big_nodes"].insert_one({"id": -1, "center_z": 0, "center_y": 0, "center_x": 0})
    empty = MongoDBGraphDataBase(db, mode="w", prefix="empty_", node_attrs=NODE_ATTRS)
    with pytest.raises(ConnectoError, match="has id -1: ids must be integers from 0"):
        import_graph(db, "big_nodes", "lsd_edges", empty)


def test_import_accepts_position_and_shell_documents(mongo_client: MongoClient, db_name: str):
    """Documents as the mongo shell writes them (ids as doubles) with `position` instead of
    `center_*` and attributes the graph does not declare yet."""
    from connecto.db.graph_documents import check_documents, import_graph

    db = mongo_client[db_name]
    db["shell_nodes"].insert_many([
        {"id": 1.0, "position": [0.0, 10.0, 20.0], "size": 3, "filtered": False},
        {"id": 2, "center_z": 5, "center_y": 5, "center_x": 5, "size": 4, "filtered": True},
    ])  # fmt: skip
    db["shell_edges"].insert_one({"u": 2, "v": 1, "merge_score": 0.25, "kind": "z"})
    graph = MongoDBGraphDataBase(db, mode="w", prefix="copy_", node_attrs=NODE_ATTRS)
    assert import_graph(db, "shell_nodes", "shell_edges", graph) == (2, 1)
    back = MongoDBGraphDataBase(db, mode="r", prefix="copy_")
    assert back.node_attrs == {**NODE_ATTRS, "filtered": bool}
    assert back.edge_attrs == {"merge_score": float, "kind": str}
    assert back.read_nodes() == [
        {"id": 1, "position": [0.0, 10.0, 20.0], "size": 3, "filtered": False},
        {"id": 2, "position": [5.0, 5.0, 5.0], "size": 4, "filtered": True},
    ]
    assert back.read_edges() == [{"u": 1, "v": 2, "merge_score": 0.25, "kind": "z"}]
    # documents named like a graph's collections: creating that graph would drop them
    with pytest.raises(ConnectoError, match="belongs to the graph 'shell_' it would be"):
        check_documents(db, "shell_nodes", "shell_edges", into=(db_name, "shell_"))


def test_export_refuses_ids_above_int64(
    graph_db: MongoDBGraphDataBase, mongo_client: MongoClient, db_name: str,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    """The chunks keep uint64 ids; the documents' int64 cannot hold the top half."""
    from connecto.db.graph_documents import export_graph

    huge = Columns({"id": np.array([2**63 + 5], dtype=np.uint64), "size": np.array([1])})
    monkeypatch.setattr(graph_db, "read_node_columns", lambda: huge)
    with pytest.raises(ConnectoError, match=r"node id 9223372036854775813 is above 2\*\*63"):
        export_graph(graph_db, mongo_client[db_name], "lsd_nodes", "lsd_edges")
    assert "lsd_nodes" not in mongo_client[db_name].list_collection_names()


def test_cli_export_and_import_graph(
    graph_db: MongoDBGraphDataBase,
    mongo_client: MongoClient,
    db_name: str,
    tmp_path: Path,
    connecto: Callable[..., subprocess.CompletedProcess[str]],
):
    """`connecto segment export-graph | import-graph` on the graph a config names."""
    graph_db.write_graph(_graph())  # the graph 'vol_run' of the config below
    config = tmp_path / "segment_config.toml"
    config.write_text(f'db_name = "{db_name}"\ngraph = "vol_run"\n')
    exported = connecto("segment", "export-graph", "-c", config)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == (
        f"exported 64 nodes to {db_name}.vol_run_lsd_nodes and "
        f"63 edges to {db_name}.vol_run_lsd_edges"
    )
    assert mongo_client[db_name]["vol_run_lsd_edges"].find_one({"u": 3}, {"_id": 0}) == {
        "u": 3, "v": 4, "merge_score": 3 / 64, "mean_affinity": 61 / 64,
    }  # fmt: skip

    copy = tmp_path / "copy.toml"
    copy.write_text(f'db_name = "{db_name}"\ngraph = "copy"\n')
    names = ["--nodes", "vol_run_lsd_nodes", "--edges", "vol_run_lsd_edges"]
    imported = connecto("segment", "import-graph", "-c", copy, *names)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == (
        f"imported 64 nodes and 63 edges into the graph 'copy' of database {db_name}"
    )
    back = MongoDBGraphDataBase(mongo_client[db_name], mode="r", prefix="copy_").read_graph()
    assert back.nodes[7] == {"position": [0.0, 10.0, 20.0], "size": 11}
    assert back.number_of_edges() == 63
    refused = connecto("segment", "import-graph", "-c", copy, *names)
    assert refused.returncode == 1 and "'copy_' in database" in refused.stderr
