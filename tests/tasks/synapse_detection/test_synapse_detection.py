"""Synapse detection: matching on hand-made point sets, connected components, target
rendering, detections in the real MongoDB server, neuron assignment, and a short training
through the driver with `connecto predict` and `connecto detections evaluate`."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from pymongo import MongoClient
from typer.testing import CliRunner

from connecto import ConnectoError
from connecto.config import WorkerConfig, write_config
from connecto.data.barcodes import BarcodeParameters, synthesize_barcodes
from connecto.db.schema import validator
from connecto.experiment import TrainSetup
from connecto.tasks import load_train_config
from connecto.tasks.synapse_detection.config import SynapseDetectionTrainConfig
from connecto.tasks.synapse_detection.detect import (
    Detections,
    GroundTruth,
    assign_neurons,
    find_detections,
    read_detections,
    read_ground_truth,
    write_detections,
)
from connecto.tasks.synapse_detection.evaluate import (
    evaluate_detections,
    match_points,
    pr_curve,
    score_detections,
    sweep_curve,
)
from connecto.tasks.synapse_detection.model import WeightedBceLoss
from connecto.tasks.synapse_detection.pipeline import (
    RAW,
    SYNAPSE_MASK,
    TARGET,
    WEIGHTS,
    batch_request,
    data_pipeline,
    open_detection_data,
    render_targets,
)
from tests.conftest import run_connecto
from tests.tasks.prism_fixtures import neuron_labels

VOXEL_SIZE = (10, 10, 10)
SMALL = {"input_shape": (24, 24, 24), "downsample_factors": [(2, 2, 2)], "fmaps": 2,
         "fmap_inc_factor": 2}  # fmt: skip  # 8^3 out


def points(*xs: float) -> np.ndarray:
    """Points on the x axis (z = y = 0)."""
    return np.array([[0.0, 0.0, x] for x in xs])


# ---------------------------------------------------------------- matching


def test_matching_counts_true_and_false_positives_within_the_tolerance():
    truth = points(0, 1000, 2000, 5000)
    detected = points(30, 1090, 2300, 8000, 8050)  # 2 within 100 nm, 2300 is 300 away
    scores = score_detections(detected, truth, tolerance_nm=100)
    assert scores.matches == [(0, 0), (1, 1)]
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (2, 3, 2)
    assert scores.precision == pytest.approx(2 / 5) and scores.recall == pytest.approx(2 / 4)
    assert scores.f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    wider = score_detections(detected, truth, tolerance_nm=300)  # the tolerance is inclusive
    assert wider.true_positives == 3
    assert score_detections(points(), truth, 100).recall == 0.0
    assert score_detections(points(), points(), 100).f1 == 1.0


def test_hungarian_matches_more_pairs_than_greedy():
    # truth at 0 and 10; detection 4 is closest to 0, but -6 can only reach 0: greedy
    # takes (4, 0) first and leaves -6 unmatched; Hungarian pairs 4-10 and -6-0
    truth = points(0, 10)
    detected = points(4, -6)
    assert match_points(detected, truth, 7, method="greedy") == [(0, 0)]
    assert match_points(detected, truth, 7, method="hungarian") == [(0, 1), (1, 0)]
    # with both feasible, Hungarian also minimises the total distance
    assert match_points(points(1, 9), truth, 20) == [(0, 0), (1, 1)]
    with pytest.raises(ConnectoError, match="greedy"):
        match_points(detected, truth, 7, method="nearest")


def test_pr_curve_best_threshold_and_correct_pairs(tmp_path: Path):
    truth = GroundTruth(points(0, 1000, 2000), np.array([1, 3, 5]), np.array([2, 4, 6]))
    detections = Detections(
        points(10, 1010, 2010, 4000), np.array([5, 5, 5, 5]), np.array([0.9, 0.8, 0.3, 0.6]),
        pre=np.array([1, 4, 5, 0]), post=np.array([2, 3, 7, 0]),
    )  # fmt: skip
    result = evaluate_detections(detections, truth, 50, "toy", plot_dir=tmp_path,
                                 thresholds=[0.2, 0.5, 0.7])  # fmt: skip
    by_threshold = {p["threshold"]: p for p in result.curve}
    assert by_threshold[0.2]["f1"] == pytest.approx(2 * 0.75 * 1 / 1.75)
    assert by_threshold[0.5]["true_positives"] == 2 and by_threshold[0.5]["detections"] == 3
    assert by_threshold[0.7]["precision"] == 1.0 and by_threshold[0.7]["recall"] == 1 / 3 * 2
    assert result.best["threshold"] == 0.2
    # matched at 0.2: (1,2) right, (4,3) reversed, (5,7) wrong
    assert by_threshold[0.2]["correct_pair_fraction"] == pytest.approx(1 / 3)
    assert by_threshold[0.2]["correct_unordered_pair_fraction"] == pytest.approx(2 / 3)
    assert result.plot == tmp_path / "toy_pr.png" and result.plot.read_bytes()[:4] == b"\x89PNG"
    assert "best F1 0.857 at threshold 0.20" in result.report()


# ---------------------------------------------------------------- components and targets


def test_connected_components_give_centres_sizes_and_scores():
    probability = np.zeros((10, 12, 14), dtype=np.float32)
    probability[2:5, 2:5, 2:5] = 0.8  # centre voxel (3, 3, 3)
    probability[3, 3, 3] = 0.95
    probability[6:8, 8:10, 10:12] = 0.6  # centre (6.5, 8.5, 10.5) in voxels
    probability[9, 0, 13] = 0.9  # one voxel: dropped by min_voxels
    probability[0, 11, 0] = 0.2  # below the threshold
    found = find_detections(probability, (40, 8, 8), (1000, 0, 80), 0.5, min_voxels=2)
    assert len(found) == 2
    order = np.argsort(found.centres[:, 0])
    centres, sizes, scores = found.centres[order], found.sizes[order], found.scores[order]
    assert np.allclose(centres[0], [1000 + 3.5 * 40, 3.5 * 8, 80 + 3.5 * 8])
    assert np.allclose(centres[1], [1000 + 7 * 40, 9 * 8, 80 + 11 * 8])
    assert sizes.tolist() == [27, 8]
    assert scores.tolist() == pytest.approx([0.95, 0.6])
    mean = find_detections(probability, (40, 8, 8), (0, 0, 0), 0.5, 2, score="mean")
    assert sorted(mean.scores.tolist()) == pytest.approx(sorted([0.6, (26 * 0.8 + 0.95) / 27]))
    assert len(find_detections(probability, (1, 1, 1), (0, 0, 0), 0.99)) == 0


def test_the_threshold_sweep_makes_detections_anew_at_each_threshold():
    # two blobs joined by a weaker bridge: one detection at a low threshold, two above it
    probability = np.zeros((5, 5, 30), dtype=np.float32)
    probability[1:4, 1:4, 2:8] = 0.9
    probability[1:4, 1:4, 20:26] = 0.9
    probability[2, 2, 8:20] = 0.3
    truth = GroundTruth(np.array([[25.0, 25.0, 50.0], [25.0, 25.0, 230.0]]), np.zeros(2),
                        np.zeros(2))  # fmt: skip
    curve = sweep_curve(probability, (10, 10, 10), (0, 0, 0), truth, 30, [0.2, 0.5])
    low, high = curve
    assert low["detections"] == 1 and low["true_positives"] == 0  # the merged centre is between
    assert high["detections"] == 2 and high["f1"] == 1.0
    # filtering one set of detections by score cannot split them
    merged = find_detections(probability, (10, 10, 10), (0, 0, 0), 0.2)
    assert [p["detections"] for p in pr_curve(merged, truth, 30, [0.2, 0.5])] == [1, 1]


def test_targets_are_balls_with_their_outline():
    roi = Roi((0, 0, 0), (200, 200, 200))
    mask, contour = render_targets(roi, Coordinate(VOXEL_SIZE), np.array([[100, 100, 100]]),
                                   radius_nm=40, contour_width=1)  # fmt: skip
    assert mask.shape == (20, 20, 20) and mask[10, 10, 10] == 1 and mask[10, 10, 15] == 0
    assert 4 / 3 * np.pi * 4**3 * 0.8 < mask.sum() < 4 / 3 * np.pi * 4**3 * 1.3
    assert contour[10, 10, 10] == 0 and contour.sum() > 0 and np.all(mask[contour > 0] == 1)
    # a ball cut by the ROI has no outline along the cut
    cut, cut_contour = render_targets(Roi((0, 0, 100), (200, 200, 100)), Coordinate(VOXEL_SIZE),
                                      np.array([[100, 100, 100]]), 40, 1)  # fmt: skip
    assert cut[10, 10, 0] == 1 and cut_contour[10, 10, 0] == 0
    # two overlapping balls: one mask, outlined where they meet (each voxel to the nearer)
    pair = np.array([[100, 100, 70], [100, 100, 130]])
    both, outline = render_targets(roi, Coordinate(VOXEL_SIZE), pair, 40, 1)
    assert both[10, 10, 4:16].all() and outline[10, 10, 9:11].all()  # the meeting plane
    assert outline[10, 10, 7] == 0 and outline[10, 10, 13] == 0  # the balls' insides


def test_touching_synapses_split_along_the_contour():
    """Two overlapping balls form one component of the mask; their contour, outlined
    where they meet, splits it into two detections at the right centres."""
    roi = Roi((0, 0, 0), (200, 200, 200))
    pair = np.array([[100, 100, 70], [100, 100, 130]])
    mask, contour = render_targets(roi, Coordinate(VOXEL_SIZE), pair, 40, 1)
    probability = mask.astype(np.float32) * 0.9
    assert len(find_detections(probability, VOXEL_SIZE, (0, 0, 0), 0.5)) == 1
    split = find_detections(probability, VOXEL_SIZE, (0, 0, 0), 0.5,
                            contour=contour.astype(np.float32))  # fmt: skip
    assert len(split) == 2
    assert np.allclose(np.sort(split.centres[:, 2]), [70, 130], atol=5)
    assert split.sizes.sum() == mask.sum()  # the outline voxels joined their cores


def test_the_weighted_bce_ignores_zero_weights():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, 5, generator=generator, requires_grad=True)
    target = (torch.rand(2, 2, 3, 4, 5, generator=generator) > 0.5).float()
    weights = (torch.rand(2, 2, 3, 4, 5, generator=generator) > 0.5).float() * 3
    loss = WeightedBceLoss()(logits, target, weights)
    loss.backward()
    assert torch.all(logits.grad[weights == 0] == 0) and torch.all(logits.grad[weights > 0] != 0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[weights > 0], target[weights > 0]
    )
    assert torch.isclose(loss, expected)


# ---------------------------------------------------------------- MongoDB and neurons


def test_detections_round_trip_through_mongodb(mongo_client: MongoClient, db_name: str):
    db = mongo_client[f"{db_name}_predictions"]
    found = Detections(np.array([[10.0, 20.0, 30.0], [400.0, 500.0, 600.0]]), np.array([7, 9]),
                       np.array([0.75, 0.5]), np.array([3, 0]), np.array([4, 0]))  # fmt: skip
    source = {"setup": "/x/02_train/setup_t0", "iteration": 2, "roi": [[0, 0, 0], [1, 1, 1]]}
    assert write_detections(db, "run_a", found, source) == 2
    assert "detections_run_a" in db.list_collection_names()
    back, back_source = read_detections(db, "detections_run_a")
    order = np.argsort(back.scores)[::-1]
    assert np.allclose(back.centres[order], found.centres)
    assert back.pre[order].tolist() == [3, 0] and back.post[order].tolist() == [4, 0]
    assert back.sizes[order].tolist() == [7, 9] and back_source == source
    high, _ = read_detections(db, "detections_run_a", min_score=0.6)
    assert len(high) == 1
    # the synapses schema holds: a document without skeleton_id is refused
    options = db["detections_run_a"].options()
    assert options["validator"] == validator("synapses")
    with pytest.raises(Exception, match="(?i)validation"):
        db["detections_run_a"].insert_one({"synapse_id": 1, "x": 0, "y": 0, "z": 0})
    # writing again replaces, never appends
    write_detections(db, "detections_run_a", Detections(np.zeros((0, 3)), np.zeros(0),
                                                        np.zeros(0)), source)  # fmt: skip
    assert db["detections_run_a"].count_documents({}) == 0
    with pytest.raises(ConnectoError, match="detections_run_a"):
        read_detections(db, "detections_missing")


def test_neurons_are_assigned_by_marker_side():
    labels = np.zeros((10, 10, 20), dtype=np.uint64)
    labels[:, :, :10], labels[:, :, 10:] = 5, 8
    markers = np.zeros((2, 10, 10, 20), dtype=np.uint8)
    markers[0, :, :, 6:10] = 200  # presynaptic marker in neuron 5
    markers[1, :, :, 10:14] = 200  # postsynaptic marker in neuron 8
    seg = Array(labels, offset=(0, 0, 0), voxel_size=VOXEL_SIZE)
    mark = Array(markers, offset=(0, 0, 0), voxel_size=VOXEL_SIZE)
    found = Detections(np.array([[50.0, 50.0, 100.0], [50.0, 50.0, 20.0]]), np.ones(2),
                       np.ones(2))  # fmt: skip
    assigned = assign_neurons(found, seg, mark, radius_nm=40)
    assert assigned.pre.tolist() == [5, 5] and assigned.post.tolist() == [8, 0]
    swapped = Array(markers[::-1].copy(), offset=(0, 0, 0), voxel_size=VOXEL_SIZE)
    assert assign_neurons(found, seg, swapped, 40).pre.tolist() == [8, 5]


# ---------------------------------------------------------------- training and prediction


def make_container(path: Path, db: object) -> Path:
    labels = neuron_labels((32, 48, 48), 14, np.random.default_rng(0))
    params = BarcodeParameters(channels=3, min_channels_on=1, max_channels_on=2, synapses=40,
                               synapse_min_distance_nm=100)  # fmt: skip
    synthesize_barcodes(labels, VOXEL_SIZE, params, path, db=db)  # type: ignore[arg-type]
    return path


def small_config(container: Path, db_name: str, **values: object) -> SynapseDetectionTrainConfig:
    defaults = {
        "container": str(container), "synapses_db": db_name, "synapse_radius_nm": 40,
        "train_roi": [[0, 0, 0], [320, 480, 240]],
        "validation_roi": [[0, 0, 240], [320, 480, 240]], "seed": 0,
        "detection_threshold": 0.05, "min_detection_voxels": 1, **SMALL,
    }  # fmt: skip
    return SynapseDetectionTrainConfig(**{**defaults, **values})


def test_batches_hold_markers_balanced_targets_and_reject_empty_ones(
    tmp_path: Path, mongo_client: MongoClient, db_name: str
):  # fmt: skip
    container = make_container(tmp_path / "syn.zarr", mongo_client[db_name])
    truth = read_ground_truth(mongo_client[db_name], str(container.resolve()))
    assert len(truth.centres) >= 5 and np.all(truth.pre != truth.post)
    config = small_config(container, db_name, augment=False, batch_size=2,
                          min_synapse_fraction=0.01, reject_probability=1.0)  # fmt: skip
    data = open_detection_data(config, "test")
    assert data.markers.shape[0] == 2
    pipeline = data_pipeline(config, data)
    with gp.build(pipeline):
        batch = pipeline.request_batch(batch_request(config, data.voxel_size, predictions=False))
    assert batch[RAW].data.shape == (2, 2, 24, 24, 24)
    assert batch[TARGET].data.shape == batch[WEIGHTS].data.shape == (2, 2, 8, 8, 8)
    for sample in range(2):
        mask = batch[SYNAPSE_MASK].data[sample]
        assert mask.mean() > 0.01  # Reject redrew the emptier ones
        assert np.array_equal(batch[TARGET].data[sample, 0], mask)
        weights = batch[WEIGHTS].data[sample, 0]
        # balanced: positives and negatives carry the same total weight (unless clipped)
        if 0.05 < mask.mean() < 0.95:
            assert weights[mask > 0].sum() == pytest.approx(weights[mask == 0].sum(), rel=1e-4)
    with pytest.raises(ConnectoError, match="marker_channels"):
        open_detection_data(small_config(container, db_name, marker_channels=(3, 9)), "test")


def test_training_through_the_driver_predict_and_evaluate(
    tmp_path: Path, mongo_client: MongoClient, db_name: str, tracking_db: str,
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    container = make_container(tmp_path / "syn.zarr", mongo_client[db_name])
    config = small_config(container, db_name, save_every=2, snapshot_every=2, log_every=1)
    setup = TrainSetup(tmp_path, "prism", 0)
    setup.path.mkdir(parents=True)
    write_config(setup.path / "train_config.toml", config)
    write_config(setup.path / "worker_config.toml", WorkerConfig(num_cpus=2, num_cache_workers=1))
    assert load_train_config(setup.path / "train_config.toml").task == "synapse-detection"
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    assert setup.checkpoints() == [2]

    from cli.main import app

    # in this process (the training above ran the real command in its own)
    monkeypatch.chdir(setup.path)
    predicted = CliRunner().invoke(app, ["predict", "--split", "validation"])
    assert predicted.exit_code == 0, predicted.output
    out = tmp_path / "prism" / "03_predict" / "synapse-detection_t0_validation_2.zarr"
    probability = open_ds(str(out / "synapse_probability"))
    assert probability.roi == Roi((0, 0, 240), (320, 480, 240)) and probability.shape[0] == 2
    collection = "detections_prism_t0_validation_2"
    assert f"{db_name}_predictions.{collection}" in predicted.output
    detections, source = read_detections(mongo_client[f"{db_name}_predictions"], collection)
    assert source["iteration"] == 2 and source["roi"] == [[0, 0, 240], [320, 480, 240]]
    assert len(detections) > 0  # an untrained model's output is ~0.5 everywhere

    result = CliRunner().invoke(app, ["detections", "evaluate", "--setup", str(setup.path),
                                      "--tolerance", "100"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert collection in result.output and "best F1" in result.output
    score = mongo_client[tracking_db]["scores"].find_one(
        {"kind": "synapse-detection", "key": f"{db_name}_predictions.{collection}"}
    )
    assert score is not None and 0 <= score["f1"] <= 1 and score["tolerance_nm"] == 100
    assert score["source"]["iteration"] == 2 and len(score["curve"]) > 1
    assert score["thresholds"] == "components per threshold"  # swept on the probabilities
    assert (tmp_path / "prism" / "04_evaluate" / f"{collection}_pr.png").exists()
