"""Post-processing on real data: affinities computed from the NeuroProof ground truth
(perfect predictions) must give the ground truth back through fragments, the MongoDB
segment graph, agglomeration and extraction; interrupted blockwise runs resume."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds
from funlib.persistence.types import Vec
from pymongo import MongoClient
from volara.blockwise import AffAgglom
from volara.datasets import Affs, Labels
from volara.dbs import SQLite

from connecto import ConnectoError
from connecto.db.graph import MongoDBGraphDataBase
from connecto.postprocess.blockwise import apply_lut, boundary_mean_affinities
from connecto.tasks.segmentation.config import load_segment_config
from connecto.tasks.segmentation.evaluate import SegmentationScores, score_segmentation
from connecto.tasks.segmentation.steps import open_graph, open_volume
from connecto.tasks.segmentation.workflow import (
    MIN_VALIDATION_OBJECTS,
    ThresholdScore,
    lookup_table,
    select_threshold,
)
from tests.conftest import NEUROPROOF, needs_neuroproof

# a 64^3 crop (10 nm voxels) with 16 neurons; 8 blocks of 32^3
CROP = [[1000, 1000, 1000], [640, 640, 640]]


def write_config(directory: Path, db_name: str, **extra: object) -> Path:
    values = {
        "labels_container": str(NEUROPROOF),
        "roi": CROP,
        "block_size": [32, 32, 32],
        "context": [4, 4, 4],
        "num_workers": 1,
        "db_name": db_name,
        "graph": "neuroproof_gt",
        "thresholds": [0.25, 0.75],
        **extra,
    }
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in values.items() if v is not None]
    path = directory / "segment_config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_apply_lut_maps_listed_values_only():
    data = np.array([[5, 7], [9, 0]], dtype=np.uint64)
    lut = np.array([[9, 5], [1, 2]], dtype=np.uint64)
    assert apply_lut(data, lut).tolist() == [[2, 7], [1, 0]]


@needs_neuroproof
def test_done_when_gt_affinities_segment_run_and_evaluate(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, connecto
):
    config = write_config(tmp_path, db_name)
    made = connecto("segment", "gt-affinities", "-c", config, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    run = connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "predict: skipped" in run.stdout and "best threshold" in run.stdout
    assert "untrained" not in run.stdout  # perfect affinities separate every cell
    # the output container is a zarr group of the datasets
    container = zarr.open(str(tmp_path / "segment.zarr"), mode="r")
    assert {"affs", "fragments", "segmentation"} <= set(container.keys())
    assert set(container["segmentation"].keys()) == {"threshold_0.25", "threshold_0.75"}

    db = mongo_client[db_name]
    nodes, edges = db["neuroproof_gt_nodes"], db["neuroproof_gt_edges"]
    assert nodes.count_documents({}) == 8  # one node chunk per fragment block
    assert edges.count_documents({}) > 0
    assert db["neuroproof_gt_blocks"].count_documents({}) == 16  # 8 fragment + 8 edge blocks
    assert edges.count_documents({}) <= 8  # one edge chunk per block at most
    stored = MongoDBGraphDataBase(db, mode="r", prefix="neuroproof_gt_").read_edge_columns()
    assert np.all(stored["u"] < stored["v"])
    assert np.all((stored["merge_score"] >= 0) & (stored["merge_score"] <= 1))
    # perfect affinities (the training target: membranes two voxels thick, affinity 0):
    # fragments of two neurons touch only across a membrane
    mean = stored["mean_affinity"]
    assert np.all(stored["affinity_count"] > 0) and np.all((mean >= 0) & (mean <= 1))
    frags = open_ds(tmp_path / "segment.zarr" / "fragments").to_ndarray(Roi(*CROP))
    truth = open_volume(NEUROPROOF, "volumes/labels/neuron_ids").to_ndarray(Roi(*CROP))
    assert score_segmentation(frags, truth).voi_merge < 0.15  # a voxel's error, at most

    evaluated = connecto("segment", "evaluate", "-c", config, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "VOI split" in evaluated.stdout
    # no validation_roi: the best is chosen on what is reported, and it says so
    assert "chosen on the evaluated data itself" in evaluated.stdout
    scores = list(mongo_client[tracking_db]["scores"].find({"kind": "segmentation"}))
    assert len(scores) == 2 and sum(s["best"] for s in scores) == 1
    assert all(s["selected_on"] == "evaluated_roi" and s["selection_roi"] == CROP
               for s in scores)  # fmt: skip
    best = next(s for s in scores if s["best"])
    # the membranes' voxels go to one side or the other: about 0.1 of VOI each way
    assert best["voi_split"] + best["voi_merge"] <= 0.35
    assert best["arand"] < 0.03

    # the extracted volume really is the ground truth up to relabelling
    segmentation = open_ds(tmp_path / "segment.zarr" / "segmentation" / "threshold_0.25")
    assert segmentation.roi.shape == (640, 640, 640)
    assert len(np.unique(segmentation.to_ndarray(segmentation.roi))) >= 16

    rerun = connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "lookup tables reused" in rerun.stdout
    assert nodes.count_documents({}) == 8  # nothing written twice
    assert db["neuroproof_gt_blocks"].count_documents({}) == 16


@needs_neuroproof
def test_fragments_resume_after_partial_run(tmp_path: Path, db_name: str, connecto):
    # blockwise work runs in `connecto` subprocesses: daisy's runtime threads must not be
    # started in the test process, whose later forks (gunpowder's PreCache) they would hang
    path = write_config(tmp_path, db_name, num_workers=2)
    for step in ("gt-affinities", "fragments"):
        assert connecto("segment", step, "-c", path, cwd=tmp_path).returncode == 0
    config, _ = load_segment_config(path)
    graph = open_graph(config, "r+")
    task = "fragments-extract-frags"
    finished = {d["block_id"]: d["finished"] for d in graph.blocks.find({"task": task})}
    all_nodes = {n["id"]: n["size"] for n in graph.read_nodes()}
    assert len(finished) == 8 and sum(all_nodes.values()) > 0.99 * 64**3

    # an interrupted run: three blocks never finished, their nodes partly written
    lost = sorted(finished)[:3]
    for doc in graph.blocks.find({"task": task, "block_id": {"$in": lost}}):
        graph.delete_nodes(Roi(*doc["roi"]))
    graph.blocks.delete_many({"block_id": {"$in": lost}})
    assert graph.num_nodes() < len(all_nodes)

    assert connecto("segment", "fragments", "-c", path, cwd=tmp_path).returncode == 0
    again = {d["block_id"]: d["finished"] for d in graph.blocks.find({"task": task})}
    assert sorted(again) == sorted(finished)
    assert all(again[b] == finished[b] for b in finished if b not in lost)  # skipped
    assert all(again[b] > finished[b] for b in lost)  # redone
    assert {n["id"]: n["size"] for n in graph.read_nodes()} == all_nodes


def test_lookup_table_thresholds(mongo_client: MongoClient, db_name: str):
    graph = MongoDBGraphDataBase(
        mongo_client[db_name], mode="w", prefix="lut_",
        node_attrs={"position": Vec(float, 3), "size": int}, edge_attrs={"merge_score": float},
    )  # fmt: skip
    chain = nx.Graph()
    for i in (10, 20, 30, 40):
        chain.add_node(i, position=(0.0, 0.0, float(i)), size=1)
    chain.add_edge(20, 10, merge_score=0.1)
    chain.add_edge(20, 30, merge_score=0.6)
    chain.add_edge(30, 40, merge_score=0.9)
    graph.write_graph(chain)
    # segments are named by their smallest fragment
    assert lookup_table(graph, 0.05).tolist() == [[10, 20, 30, 40], [10, 20, 30, 40]]
    assert lookup_table(graph, 0.5).tolist() == [[10, 20, 30, 40], [10, 10, 30, 40]]
    assert lookup_table(graph, 0.95).tolist() == [[10, 20, 30, 40], [10, 10, 10, 10]]
    # mutex watershed agrees on a chain, but a strong repulsion outweighs a path of weak
    # attractions where connected components would merge everything
    assert lookup_table(graph, 0.5, "mutex_watershed").tolist()[1] == [10, 10, 30, 40]
    chain.add_edge(10, 40, merge_score=1.0)
    graph.write_graph(chain)
    assert lookup_table(graph, 0.92, "connected_components").tolist()[1] == [10, 10, 10, 10]
    split = lookup_table(graph, 0.92, "mutex_watershed").tolist()[1]
    assert split == [10, 10, 10, 40]


@pytest.mark.parametrize("id_base", [0, 2**33])
def test_boundary_mean_affinities_match_volara(tmp_path: Path, id_base: int):
    """connecto's edge scores are volara's `AffAgglom.agglomerate`, computed on the
    boundary voxels only: same pairs, same means (ids beyond 32 bits included)."""
    rng = np.random.default_rng(3)
    labels = np.repeat(rng.integers(0, 7, size=(12, 16, 8)), 2, axis=2).astype(np.uint64)
    frags = np.where(labels > 0, labels + np.uint64(id_base), 0).astype(np.uint64)
    neighborhood = [Coordinate(-1, 0, 0), Coordinate(0, -1, 0), Coordinate(0, 0, -1),
                    Coordinate(0, 0, -3)]  # fmt: skip
    affs = rng.random((4, *frags.shape)).astype(np.float32)
    volara = AffAgglom(
        db=SQLite(path=tmp_path / "g.db", edge_attrs={"mean_affinity": "float"}),
        affs_data=Affs(store=tmp_path / "a.zarr", neighborhood=neighborhood),
        frags_data=Labels(store=tmp_path / "f.zarr"), block_size=(8, 8, 8), context=(2, 2, 2),
        scores={"mean_affinity": neighborhood[:3], "long": neighborhood[3:]},
    )  # fmt: skip
    expected = nx.Graph()
    volara.agglomerate(affs, frags.copy(), expected)
    u, v, mean = boundary_mean_affinities(affs[:3], frags, [tuple(o) for o in neighborhood[:3]])
    ours = dict(zip(zip(u.tolist(), v.tolist(), strict=True), mean.tolist(), strict=True))
    theirs = {
        (min(a, b), max(a, b)): d["mean_affinity"]
        for a, b, d in expected.edges(data=True)
        if "mean_affinity" in d
    }
    assert len(ours) > 10 and ours.keys() == theirs.keys()
    assert all(ours[pair] == pytest.approx(theirs[pair], abs=1e-12) for pair in ours)


# the slab beside CROP (z 1640-1960 nm): validation ground truth disjoint from the test crop
VALIDATION = [[1640, 1000, 1000], [320, 640, 640]]


def test_validation_roi_must_be_disjoint_from_roi(tmp_path: Path):
    overlapping = write_config(
        tmp_path, "unused", validation_roi=[[1500, 1000, 1000], [320, 640, 640]]
    )
    with pytest.raises(ConnectoError, match="overlap"):
        load_segment_config(overlapping)
    alone = write_config(tmp_path, "unused", roi=None, validation_roi=VALIDATION)
    with pytest.raises(ConnectoError, match="validation_roi needs roi"):
        load_segment_config(alone)
    config, _ = load_segment_config(write_config(tmp_path, "unused", validation_roi=VALIDATION))
    assert config.total_roi == Roi((1000, 1000, 1000), (960, 640, 640))  # both processed


def test_select_threshold_on_validation_not_on_the_reported_scores():
    def scored(vois: list[float]) -> list[ThresholdScore]:
        return [ThresholdScore(t, f"segmentation/{t}", SegmentationScores(v, 0.0, 0.1, 10))
                for t, v in zip([0.3, 0.5, 0.7], vois, strict=True)]  # fmt: skip

    test, validation = scored([0.2, 0.9, 0.5]), scored([0.8, 0.4, 0.6])
    chosen, where = select_threshold(test, validation)
    assert (chosen.threshold, chosen.scores.voi, where) == (0.5, 0.9, "validation_roi")
    chosen, where = select_threshold(test, [])  # no validation: the reported data's own best
    assert (chosen.threshold, where) == (0.3, "evaluated_roi")


@needs_neuroproof
def test_threshold_chosen_on_validation_roi_and_reported_on_roi(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, connecto
):
    config = write_config(tmp_path, db_name, validation_roi=VALIDATION)
    assert connecto("segment", "gt-affinities", "-c", config, cwd=tmp_path).returncode == 0
    run = connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "validation_roi (chooses the threshold)" in run.stdout
    assert "chosen on validation_roi" in run.stdout
    assert "evaluated data itself" not in run.stdout

    scores = list(mongo_client[tracking_db]["scores"].find({"kind": "segmentation"}))
    validation = [s for s in scores if s["region"] == "validation_roi"]
    reported = [s for s in scores if s["region"] == "roi"]
    assert len(validation) == 2 and len(reported) == 2
    assert all(s["roi"] == VALIDATION for s in validation)
    assert all(s["roi"] == CROP for s in reported)
    # the threshold is the validation region's best, whatever the test region says
    chosen = min(validation, key=lambda s: (s["voi"], s["arand"]))["threshold"]
    assert [s["threshold"] for s in reported if s["best"]] == [chosen]
    assert all(s["selected_on"] == "validation_roi" and s["selection_roi"] == VALIDATION
               and s["chosen_threshold"] == chosen for s in scores)  # fmt: skip
    best = next(s for s in reported if s["best"])
    assert f"VOI {best['voi']:.4f}, ARAND {best['arand']:.4f}" in run.stdout

    # a 32 x 64 x 64 slab holds few neurons: the choice is noisy, and it says so
    truth = open_volume(NEUROPROOF, "volumes/labels/neuron_ids").to_ndarray(Roi(*VALIDATION))
    objects = len(np.unique(truth[truth != 0]))
    assert objects < MIN_VALIDATION_OBJECTS
    warning = [line for line in run.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert f"validation_roi holds {objects} ground-truth objects" in warning[0]
    assert f"fewer than {MIN_VALIDATION_OBJECTS}" in warning[0]


@needs_neuroproof
def test_untrained_affinities_are_named(tmp_path: Path, db_name: str, connecto):
    """Affinities of a model that has not learned boundaries (all high: every voxel
    connected): one fragment fills each block and every threshold gives one segment."""
    config = write_config(tmp_path, db_name)
    assert connecto("segment", "gt-affinities", "-c", config, cwd=tmp_path).returncode == 0
    affs = open_ds(tmp_path / "segment.zarr" / "affs", mode="r+")
    affs[affs.roi] = np.full(affs.shape, 255, dtype=np.uint8)
    run = connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, run.stdout
    assert "untrained or under-trained model" in warning[0]
    assert "covers 100% of the volume" in warning[0]
    assert "all 2 thresholds give one segment" in warning[0]
    assert "iterations" in warning[0]


def test_affinities_that_are_all_boundary_are_named(tmp_path: Path, db_name: str, connecto):
    """Affinities of about 0.5 everywhere (a model that learned nothing): no voxel is
    inside a cell, so no fragment grows; the one line says so (it said only that the
    graph had no fragments)."""
    config = write_config(tmp_path, db_name)
    assert connecto("segment", "gt-affinities", "-c", config, cwd=tmp_path).returncode == 0
    affs = open_ds(tmp_path / "segment.zarr" / "affs", mode="r+")
    affs[affs.roi] = np.full(affs.shape, 120, dtype=np.uint8)
    run = connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "mark every voxel as boundary" in run.stderr and "untrained" in run.stderr
