"""Barcode-aware agglomeration: fragments' mean features on the graph nodes (a vector
column in MongoDB), edge scores that combine affinity and feature distance, and a tiny
`connecto segment` run whose barcodes keep two touching neurons apart and join the two
halves of each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds, prepare_ds
from funlib.persistence.types import Vec
from pymongo import MongoClient

from connecto.data.ingest import create_volume
from connecto.db.graph import MongoDB, MongoDBGraphDataBase
from connecto.db.graph_documents import export_graph
from connecto.postprocess.agglomerate import mean_affinity_history, merge_scores
from connecto.postprocess.blockwise import apply_lut
from connecto.postprocess.features import (
    combined_scores,
    feature_agglomeration_history,
    feature_distance,
    fragment_feature_sums,
)
from connecto.tasks import load_train_config
from connecto.tasks.segmentation.config import load_segment_config
from connecto.tasks.segmentation.feature_agglomeration import (
    read_node_features,
    write_node_features,
)
from connecto.tasks.segmentation.steps import open_graph
from connecto.tasks.segmentation.workflow import lookup_table, read_edge_scores
from tests.conftest import REPO, run_connecto

# fragments 1..4 in a row: 1|2 one neuron (same barcode), 3|4 another; the boundary
# inside each neuron is weak (affinity 0.4), the one between the neurons leaky (0.7)
BARCODES = np.array([[np.nan] * 3, [1, 0, 1], [1, 0, 1], [0, 1, 0], [0, 1, 0]], dtype=float)
U, V = np.array([1, 2, 3]), np.array([2, 3, 4])
AFFINITY = np.array([0.4, 0.7, 0.4])
COUNTS = np.array([100.0, 100.0, 100.0])
SIZES = np.array([0, 1000, 1000, 1000, 1000], dtype=float)
WEIGHTS = (0.5, 0.5, 0.0)  # affinity_weight, feature_weight, feature_bias


def test_distances():
    a, b = np.array([[1, 0, 1], [1, 1, 0]]), np.array([[2, 0, 2], [0, 0, 1]])
    assert np.allclose(feature_distance(a, b, "cosine"), [0.0, 1.0])
    assert np.allclose(feature_distance(a, b, "euclidean"), [np.sqrt(2), np.sqrt(3)])
    assert np.allclose(feature_distance(np.zeros((1, 3)), a[:1], "cosine"), [1.0])


def test_same_barcode_weak_affinity_merges_before_different_barcode_strong_affinity():
    distances = feature_distance(BARCODES[U], BARCODES[V], "cosine")
    static = combined_scores(1 - AFFINITY, distances, *WEIGHTS)
    assert np.allclose(static, [0.3, 0.65, 0.3])  # 0.5 * 0.6 + 0; 0.5 * 0.3 + 0.5 * 1
    assert static[0] < static[1] and static[2] < static[1]
    # affinities alone merge the wrong pair first
    plain = merge_scores(4, mean_affinity_history(4, U, V, AFFINITY * COUNTS, COUNTS), U, V)
    assert np.allclose(plain, [0.6, 0.3, 0.6])
    history = feature_agglomeration_history(
        4, U, V, AFFINITY * COUNTS, COUNTS, BARCODES, SIZES, "cosine", *WEIGHTS
    )
    scores = merge_scores(4, history, U, V)
    assert np.allclose(scores, [0.3, 0.65, 0.3])
    segments = {tuple(sorted((h["a"], h["b"]))) for h in history if h["score"] < 0.5}
    assert segments == {(1, 2), (3, 4)}
    # the feature weight decides: without it the affinities' order comes back
    affinity_only = feature_agglomeration_history(
        4, U, V, AFFINITY * COUNTS, COUNTS, BARCODES, SIZES, "cosine", 1.0, 0.0
    )
    assert np.allclose(merge_scores(4, affinity_only, U, V), plain)


def test_region_features_are_size_weighted_means_after_a_merge():
    # 1 (big, barcode a) and 2 (small, a + b) merge first; the region is then close to a
    # and far from 3 (b): it stays apart, though 2 alone would be nearer to 3
    features = np.array([[np.nan] * 2, [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    sizes = np.array([0, 900, 100, 1000], dtype=float)
    u, v = np.array([1, 2]), np.array([2, 3])
    history = feature_agglomeration_history(
        3, u, v, np.array([90.0, 80.0]), np.array([100.0, 100.0]), features, sizes,
        "cosine", 0.5, 0.5,
    )  # fmt: skip
    assert (history[0]["a"], history[0]["b"]) in {(1, 2), (2, 1)}
    mean = (features[1] * 900 + features[2] * 100) / 1000
    expected = 0.5 * (1 - 0.8) + 0.5 * feature_distance(mean, features[3], "cosine")[0]
    assert history[1]["score"] == pytest.approx(expected)


def test_fragment_feature_sums_exclude_background():
    fragments = np.array([[[0, 1, 1, 2]]], dtype=np.uint64)
    features = np.array([[[[9, 1, 3, 5]]], [[[9, 0, 2, 4]]]], dtype=float)
    ids, sums, counts = fragment_feature_sums(fragments, features)
    assert ids.tolist() == [1, 2] and counts.tolist() == [2, 1]
    assert sums.tolist() == [[4, 2], [5, 4]]


def test_node_features_round_trip_through_mongodb(db_name: str, mongo_client: MongoClient):
    config = MongoDB(name=db_name, prefix="feat_")
    graph = _empty_graph(config)
    features = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    write_node_features(graph, np.array([5, 7], dtype=np.uint64), features, "mean_features")
    ids, values, sizes = read_node_features(config.open("r"))
    assert ids.tolist() == [5, 7, 9]
    assert np.allclose(values[:2], features) and np.isnan(values[2]).all()
    assert sizes.tolist() == [10, 20, 30]
    # the chunk stores the vectors as one binary column; the LSD document export has them
    nodes, _ = export_graph(config.open("r"), mongo_client[db_name], "lsd_nodes", "lsd_edges")
    assert nodes == 3
    doc = mongo_client[db_name]["lsd_nodes"].find_one({"id": 7})
    assert doc["mean_features"] == pytest.approx([0.4, 0.5, 0.6])
    assert "mean_features" not in mongo_client[db_name]["lsd_nodes"].find_one({"id": 9})


def _empty_graph(config: MongoDB) -> MongoDBGraphDataBase:
    graph = MongoDBGraphDataBase(
        config.database(), mode="w", prefix=config.prefix,
        node_attrs={"position": Vec(float, 3), "size": int, "mean_features": Vec(float, 3)},
    )  # fmt: skip
    graph.write_nodes({
        5: {"position": (0, 0, 0), "size": 10},
        7: {"position": (0, 0, 10), "size": 20},
        9: {"position": (0, 10, 0), "size": 30},
    })  # fmt: skip
    return graph


# ---------------------------------------------------------------- a tiny segment run

SHAPE = (8, 8, 64)  # four boxes of 16 voxels along x: neurons A = x < 32, B = x >= 32
BAND = {16: 0.4, 32: 0.7, 48: 0.4}  # affinities across each box boundary


def write_volumes(path: Path) -> None:
    """Ground truth (A, B), affinities with a weak boundary inside each neuron and a
    leaky one between them, and 3-channel barcodes (A: channels 0 and 2, B: channel 1)
    with noise, as the enhanced barcodes would be."""
    labels = np.ones(SHAPE, dtype=np.uint64)
    labels[..., 32:] = 2
    root = zarr.open_group(str(path), mode="w")
    create_volume(root, "labels", SHAPE, np.uint64, (10, 10, 10), (0, 0, 0))[:] = labels
    rng = np.random.default_rng(0)
    barcodes = np.array([[0, 0, 0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)
    features = barcodes[labels].transpose(3, 0, 1, 2) + rng.normal(0, 0.05, (3, *SHAPE))
    enhanced = prepare_ds(
        path / "enhanced", shape=(3, *SHAPE), offset=(0, 0, 0), voxel_size=(10, 10, 10),
        axis_names=["c^", "z", "y", "x"], units=["nm"] * 3, dtype=np.float32, mode="w",
    )  # fmt: skip
    enhanced[enhanced.roi] = features.astype(np.float32)
    affs = np.full((3, *SHAPE), 255, dtype=np.uint8)
    for x, value in BAND.items():  # every affinity touching the band's voxels x-1, x
        affs[:, :, :, x - 2 : x + 1] = round(value * 255)
    out = prepare_ds(
        path.parent / "segment.zarr" / "affs", shape=affs.shape, offset=(0, 0, 0),
        voxel_size=(10, 10, 10), axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        dtype=np.uint8, mode="w",
    )  # fmt: skip
    out._source_data.attrs["neighborhood"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    out[out.roi] = affs


def segment_config(directory: Path, db_name: str) -> Path:
    path = directory / "segment_config.toml"
    path.write_text(
        f'output_container = "{directory / "segment.zarr"}"\nblock_size = [8, 8, 32]\n'
        f'context = [2, 2, 2]\nnum_workers = 1\ndb_name = "{db_name}"\ngraph = "barcodes"\n'
        'boundary_threshold = 0.95\nmin_seed_distance = 4\nmerge_function = "mean"\n'
        f'thresholds = [0.5]\nfeatures_container = "{directory / "data.zarr"}"\n'
        'features_dataset = "enhanced"\nfeature_distance = "cosine"\n'
        "affinity_weight = 0.5\nfeature_weight = 0.5\n"
    )
    return path


def box_segments(segmentation: np.ndarray) -> list[int]:
    """The segment of each box's core (one id over it, else the test fails)."""
    cores = [segmentation[..., x : x + 12] for x in (2, 18, 34, 50)]
    assert all(np.unique(core).size == 1 for core in cores)
    return [int(core.ravel()[0]) for core in cores]


def test_segment_run_with_features_separates_neurons_by_barcode(tmp_path: Path, db_name: str):
    write_volumes(tmp_path / "data.zarr")
    config = segment_config(tmp_path, db_name)
    run = run_connecto("segment", "run", "-c", config, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "mean features (3 channels)" in run.stdout
    result = open_ds(tmp_path / "segment.zarr" / "segmentation" / "threshold_0.5")
    segmentation = result.to_ndarray(result.roi)
    a1, a2, b1, b2 = box_segments(segmentation)
    assert a1 == a2 and b1 == b2 and a1 != b1  # the ground truth: neurons A and B
    assert np.unique(segmentation).size == 2
    # the stored nodes hold the barcodes: A's fragments near (1, 0, 1), B's near (0, 1, 0)
    loaded, _ = load_segment_config(config)
    ids, features, _ = read_node_features(open_graph(loaded))
    assert ids.size >= 4 and np.all(np.abs(features - np.round(features)) < 0.1)
    # the same graph by affinities alone joins the neurons across the leaky boundary
    # and splits each at its weak one
    plain = lookup_table(read_edge_scores(open_graph(loaded), "mean"), 0.5)
    fragments = open_ds(tmp_path / "segment.zarr" / "fragments")
    p1, p2, p3, p4 = box_segments(apply_lut(fragments.to_ndarray(fragments.roi), plain))
    assert p2 == p3 and p1 != p2 and p4 != p3


def test_barcodes_template_configures_feature_agglomeration():
    template = REPO / "experiments" / "segmentation-barcodes"
    config, _ = load_segment_config(template / "segment_config.toml")
    assert config.features_container == str(template / "enhanced.zarr")
    assert (config.feature_distance, config.affinity_weight, config.feature_weight) == (
        "cosine", 0.5, 0.5,
    )  # fmt: skip
    train = load_train_config(template / "train_config.toml")
    assert train.in_channels == 18 and train.channel_augment is not None
    assert [6, 0, 0] in [list(o) for o in train.neighborhood]
    with pytest.raises(ValueError, match="both 0"):
        config.model_validate({**config.model_dump(), "affinity_weight": 0, "feature_weight": 0})
