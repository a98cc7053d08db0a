"""Segmentation: connecto's MongoDB segment graph against volara's SQLite graph, and the
quality of a short CPU training on the NeuroProof volume.

1. Speed, whole 250^3 volume, affinities computed from the ground truth, block size 64^3,
   2 workers: fragments + edges (volara's ExtractFrags + AffAgglom) writing to MongoDB
   (connecto) and to SQLite (volara's own tasks); graph write throughput on 50k edges.
2. Quality: MTLSD trained for BENCH_SEGMENT_ITERATIONS (default 300) on the template's
   train ROI (or the checkpoint BENCH_SEGMENT_CHECKPOINT), predicted blockwise on its test
   ROI, VOI/ARAND/ERL at the best threshold, next to the shipped watershed supervoxels as
   the baseline, with each stage's share: other fragments, waterz on the whole volume, and
   ground-truth affinities through the same post-processing.
BENCH_SEGMENT_PARTS=speed,throughput,quality chooses the parts.

The MongoDB server is the configured one (CONNECTO_MONGO_URI), else the embedded one.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import networkx as nx
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds
from funlib.persistence.graphs import SQLiteGraphDataBase
from funlib.persistence.types import Vec
from pymongo.collection import Collection
from pymongo.database import Database
from volara.blockwise import AffAgglom, ExtractFrags
from volara.datasets import Affs, Labels
from volara.dbs import SQLite

from connecto.data.ingest import ingest
from connecto.db.graph import MongoDBGraphDataBase, process_client
from connecto.experiment import prepare_training
from connecto.postprocess.agglomerate import MERGE_FUNCTIONS, quiet_stdout, waterz_affinities
from connecto.postprocess.blockwise import MEAN_AFFINITY, run_task
from connecto.resources import resource_dir
from connecto.tasks import load_train_config
from connecto.tasks.segmentation.config import STEPS, SegmentConfig, load_segment_config
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.steps import logs_in, open_graph, open_volume
from connecto.tasks.segmentation.workflow import (
    agglomerate,
    best_threshold,
    fragments,
    gt_affinities,
    run_steps,
)
from connecto.train import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "neuroproof_medulla_ts2"
H5 = DATA / "neuroproof_ts2_raw_gt.h5"
BLOCK = (64, 64, 64)
CONTEXT = (8, 8, 8)
WORKERS = 2
NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]


def _timed(function, *args, **kwargs) -> tuple[float, object]:  # noqa: ANN001
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def speed(work: Path, db_name: str) -> None:
    config = SegmentConfig(
        labels_container=str(H5), output_container=str(work / "connecto.zarr"),
        block_size=BLOCK, context=CONTEXT, num_workers=WORKERS, db_name=db_name,
        graph="neuroproof_gt", thresholds=[0.5],
    )  # fmt: skip
    gt_affinities(config)
    t_frags, _ = _timed(fragments, config, work)
    t_edges, _ = _timed(agglomerate, config, work)
    graph = open_graph(config)
    nodes, edges = graph.num_nodes(), graph.num_edges()

    neighborhood = [Coordinate(o) for o in config.neighborhood]
    affs = Affs(store=work / "connecto.zarr" / "affs", neighborhood=neighborhood)
    sqlite = SQLite(path=work / "volara.db", edge_attrs={MEAN_AFFINITY: "float"})
    volara_frags = ExtractFrags(
        db=sqlite, affs_data=affs, frags_data=Labels(store=work / "volara.zarr" / "fragments"),
        block_size=BLOCK, context=CONTEXT, bias=[-0.5] * 3, num_workers=WORKERS,
    )  # fmt: skip
    volara_edges = AffAgglom(
        db=sqlite, affs_data=affs, frags_data=Labels(store=work / "volara.zarr" / "fragments"),
        block_size=BLOCK, context=CONTEXT, scores={MEAN_AFFINITY: neighborhood},
        num_workers=WORKERS,
    )  # fmt: skip
    with logs_in(work / "volara_logs"):
        v_frags, _ = _timed(run_task, volara_frags, "volara fragments")
        v_edges, _ = _timed(run_task, volara_edges, "volara edges")
    sqlite_graph = sqlite.open("r").read_graph()

    connecto_total, volara_total = t_frags + t_edges, v_frags + v_edges
    print("segment graph, NeuroProof 250^3, ground-truth affinities, 64^3 blocks, 2 workers")
    print(f"  connecto (MongoDB): {nodes} nodes, {edges} edges; fragments {t_frags:.1f} s, "
          f"edges {t_edges:.1f} s, total {connecto_total:.1f} s")  # fmt: skip
    print(f"  volara (SQLite):    {sqlite_graph.number_of_nodes()} nodes, "
          f"{sqlite_graph.number_of_edges()} edges; fragments {v_frags:.1f} s, "
          f"edges {v_edges:.1f} s, total {volara_total:.1f} s")  # fmt: skip
    print(f"  ratio volara/connecto: {volara_total / connecto_total:.2f} (goal >= 1.0)")


def _document_writes(db: Database, graph: nx.Graph) -> tuple[float, float]:
    """Seconds to write the graph as one document per node and per edge (the LSD layout,
    unique `id` and `(u, v)` indexes created first, unordered `insert_many` of 10k): the
    alternative the column chunks are measured against."""
    nodes, edges = db["throughput_lsd_nodes"], db["throughput_lsd_edges"]
    nodes.create_index("id", unique=True)
    edges.create_index([("u", 1), ("v", 1)], unique=True)

    def insert(collection: Collection, docs: list[dict]) -> None:
        for start in range(0, len(docs), 10_000):
            collection.insert_many(docs[start : start + 10_000], ordered=False)

    def node_docs() -> list[dict]:
        return [
            {"id": n, "center_z": p[0], "center_y": p[1], "center_x": p[2], "size": d["size"]}
            for n, d in graph.nodes(data=True)
            for p in [d["position"]]
        ]

    def edge_docs() -> list[dict]:
        return [{"u": min(u, v), "v": max(u, v), **d} for u, v, d in graph.edges(data=True)]

    t_nodes, _ = _timed(lambda: insert(nodes, node_docs()))
    t_edges, _ = _timed(lambda: insert(edges, edge_docs()))
    nodes.drop()
    edges.drop()
    return t_nodes, t_edges


def throughput(work: Path, db_name: str, n_nodes: int = 20_000, n_edges: int = 50_000) -> None:
    rng = np.random.default_rng(0)
    graph = nx.Graph()
    positions = rng.uniform(0, 2500, size=(n_nodes, 3))
    for i, p in enumerate(positions, start=1):
        graph.add_node(i, position=tuple(p), size=int(rng.integers(1, 1000)))
    pairs = np.sort(rng.integers(1, n_nodes + 1, size=(2 * n_edges, 2)), axis=1)
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    pairs = pairs[rng.permutation(len(pairs))[:n_edges]]
    scores = rng.random((n_edges, 2))
    graph.add_edges_from(
        (int(u), int(v), {"merge_score": float(a), "mean_affinity": float(b)})
        for (u, v), (a, b) in zip(pairs, scores, strict=True)
    )
    node_attrs = {"position": Vec(float, 3), "size": int}
    edge_attrs = {"merge_score": float, "mean_affinity": float}
    mongo = MongoDBGraphDataBase(
        process_client()[db_name], mode="w", prefix="throughput_",
        node_attrs=node_attrs, edge_attrs=edge_attrs,
    )  # fmt: skip
    sqlite = SQLiteGraphDataBase(
        work / "throughput.db", position_attribute="position", mode="w",
        node_attrs=node_attrs, edge_attrs=edge_attrs,
    )  # fmt: skip
    print(f"graph writes, {n_nodes} nodes and {n_edges} edges, one bulk write each")
    for name, db in (("MongoDB", mongo), ("SQLite", sqlite)):
        t_nodes, _ = _timed(db.write_graph, graph, write_edges=False)
        t_edges, _ = _timed(db.write_graph, graph, write_nodes=False)
        t_read, _ = _timed(db.read_graph, Roi((0, 0, 0), (500, 500, 500)))
        t_all, _ = _timed(db.read_graph)
        print(f"  {name:8s} nodes {n_nodes / t_nodes:9.0f}/s  edges {n_edges / t_edges:9.0f}/s"
              f"  ROI read (1/125 of the volume) {t_read * 1000:4.0f} ms"
              f"  whole graph read {t_all * 1000:5.0f} ms")  # fmt: skip
    t_nodes, t_edges = _document_writes(process_client()[db_name], graph)
    print(f"  MongoDB, one document per node and edge (LSD layout, unique indexes): "
          f"nodes {n_nodes / t_nodes:.0f}/s  edges {n_edges / t_edges:.0f}/s")  # fmt: skip
    t_columns, _ = _timed(mongo.read_edge_columns, None, None, None, ["merge_score"])
    print(
        f"  MongoDB  all edge scores as arrays (the agglomeration read) {t_columns * 1000:.0f} ms"
    )
    print("  goal: MongoDB edge writes >= 50000/s")


def _trained_setup(work: Path, data: Path, iterations: int) -> tuple[Path, str]:
    """A checkpoint: BENCH_SEGMENT_CHECKPOINT if set (trained before, e.g. on a GPU),
    else `iterations` of CPU training now. Returns it and a line saying how it was made."""
    given = os.environ.get("BENCH_SEGMENT_CHECKPOINT")
    if given:
        return Path(given), f"checkpoint {given} (trained before this run)"
    setup, _, _ = prepare_training(
        work / "runs", "bench", 0, task="segmentation",
        overrides=[f'raw_container="{data}"', "fmaps=6", "fmap_inc_factor=3", "augment=false",
                   f"save_every={iterations}", f"snapshot_every={iterations}", "seed=1",
                   "learning_rate=5e-4", "worker.num_cache_workers=2"],
    )  # fmt: skip
    t_train, result = _timed(train, setup, iterations, progress=False)
    return setup.checkpoint(iterations), (
        f"{iterations} CPU iterations (training {t_train:.0f} s, last loss {result.last_loss:.4f})"
    )


def quality(work: Path, db_name: str, iterations: int) -> None:
    """MTLSD on the test slab, and where the error comes from: the same affinities
    through other fragments and through waterz on the whole volume, the ground-truth
    affinities through the same post-processing, and the shipped supervoxels."""
    import tomli_w
    import waterz

    data = work / "neuroproof.zarr"
    ingest(H5, data, datasets=["volumes/raw", "volumes/labels/neuron_ids"], progress=False)
    template = load_train_config(resource_dir("experiments") / "segmentation" / "train_config.toml")
    checkpoint, how = _trained_setup(work, data, iterations)
    config, _ = load_segment_config(
        resource_dir("experiments") / "segmentation" / "segment_config.toml"
    )
    base = config.model_dump(mode="json", exclude_none=True)
    base.update(
        raw_container=str(data), labels_container=str(H5), roi=template.test_roi,
        output_container=str(work / "segment.zarr"), db_name=db_name, num_workers=WORKERS,
        thresholds=[round(0.05 * i, 2) for i in range(1, 20)],
    )  # fmt: skip

    def variant(name: str, steps: tuple[str, ...], **values: object) -> tuple[float, object]:
        path = work / f"segment_{name}.toml"
        path.write_text(tomli_w.dumps({**base, "graph": name, **values}))
        elapsed, report = _timed(run_steps, path, steps)
        return elapsed, best_threshold(report.scores)

    print(f"quality on the test ROI {template.test_roi} (nm): {how}")
    print(f"  {'':38s} {'thr':>5s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI':>7s} "
          f"{'ARAND':>7s} {'ERL nm':>7s} {'time s':>7s}", flush=True)  # fmt: skip
    rows = _Rows()
    t_model, model = variant("mtlsd", STEPS, checkpoint=str(checkpoint))
    rows.append(("MTLSD affinities, connecto defaults", model, t_model))
    steps = ("fragments", "agglomerate", "extract", "evaluate")
    for name, values in (
        ("mutex", {"fragments_method": "mutex_watershed"}),
        ("hist_quant_50", {"merge_function": "hist_quant_50", "context": [16, 16, 16]}),
    ):
        datasets = {"fragments_dataset": f"fragments_{name}",
                    "segmentation_dataset": f"segmentation_{name}"}  # fmt: skip
        elapsed, result = variant(name, steps, **datasets, **values)
        rows.append((f"MTLSD affinities, {name}", result, elapsed))
    test_roi = Roi(*template.test_roi)
    truth = open_volume(H5, "volumes/labels/neuron_ids").to_ndarray(test_roi)
    affs = open_ds(work / "segment.zarr" / "affs").to_ndarray(test_roi).astype(np.float32)
    start = time.perf_counter()
    with quiet_stdout():
        segmentations = waterz.agglomerate(
            waterz_affinities(affs / 255.0, NEIGHBORHOOD), base["thresholds"],
            scoring_function=MERGE_FUNCTIONS["hist_quant_50"], discretize_queue=256,
        )  # fmt: skip
        scored = [
            (score_segmentation(segmentation, truth), threshold)
            for segmentation, threshold in zip(segmentations, base["thresholds"], strict=True)
        ]
    anchor = min(scored, key=lambda pair: pair[0].voi)
    rows.append(("MTLSD affinities, waterz whole volume", anchor, time.perf_counter() - start))
    gt_values = {"output_container": str(work / "gt.zarr")}
    gt_affinities(load_segment_config(_write(work / "gt.toml", {**base, **gt_values}))[0])
    elapsed, perfect = variant("gt", steps, **gt_values)
    rows.append(("ground-truth affinities, defaults", perfect, elapsed))
    supervoxels = open_volume(H5, "volumes/labels/watershed_supervoxels").to_ndarray(test_roi)
    rows.append(("watershed supervoxels (baseline)", score_segmentation(supervoxels, truth), 0.0))


class _Rows(list):
    """Rows of the quality table, each printed as it comes (a crash keeps the rest)."""

    def append(self, row: tuple) -> None:
        name, result, elapsed = row
        if isinstance(result, tuple):  # (scores, threshold)
            s, threshold, erl = result[0], f"{result[1]:.2f}", "-"
        elif hasattr(result, "scores"):
            s, threshold = result.scores, f"{result.threshold:.2f}"
            erl = f"{result.run_length.erl:.0f}" if result.run_length else "-"
        else:
            s, threshold, erl = result, "-", "-"
        print(f"  {name:38s} {threshold:>5s} {s.voi_split:9.3f} {s.voi_merge:9.3f} {s.voi:7.3f} "
              f"{s.arand:7.3f} {erl:>7s} {elapsed:7.1f}", flush=True)  # fmt: skip
        super().append(row)


def _write(path: Path, values: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(values))
    return path


def main() -> None:
    if not H5.is_file():
        print(f"bench_segment: the NeuroProof volume is not at {H5}; nothing measured")
        return
    db_name = f"bench_segment_{uuid.uuid4().hex[:8]}"
    iterations = int(os.environ.get("BENCH_SEGMENT_ITERATIONS", "300"))
    try:
        with tempfile.TemporaryDirectory(prefix="bench_segment_") as tmp:
            work = Path(tmp)
            parts = os.environ.get("BENCH_SEGMENT_PARTS", "speed,throughput,quality")
            if "speed" in parts:
                speed(work, db_name)
            if "throughput" in parts:
                throughput(work, db_name)
            if "quality" in parts and (iterations > 0 or "BENCH_SEGMENT_CHECKPOINT" in os.environ):
                quality(work, db_name, iterations)
    finally:
        process_client().drop_database(db_name)


if __name__ == "__main__":
    main()
