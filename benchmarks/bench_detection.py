"""Synapse detection (task synapse-detection, issue #16) on held-out synthetic PRISM data.

Data: `synthesize_barcodes` on a crop of the NeuroProof truth (120 x 160 x 160 voxels of
10 nm; Voronoi neurons when the shared data is absent) with SYNAPSES synapses at neuron
contacts and the two marker channels; the ground truth goes to a throwaway database.
Training reads z < 800 nm, the held-out evaluation region is z >= 800 nm.

- The model trains through `connecto train` for a fixed CPU budget TRAIN_S (default 480 s
  wall clock on 2 CPU threads, stopped with SIGTERM: it checkpoints), then predicts the
  held-out region (`connecto predict --split validation`, in this process), detections
  are written to MongoDB and evaluated (`connecto detections evaluate`, Hungarian matching
  within TOLERANCE_NM).
- Printed: F1 (precision, recall) at the best threshold, the PR curve, and the fraction of
  matched detections assigned to the right (pre, post) neuron pair (and to the right pair
  in either order), from the true segmentation; then the same for the prediction's
  components split along the contour output (`split_by_contour`). For scale: the same
  metrics of a baseline without learning (connected components of the smoothed product of
  the two markers).

Whole benchmark: ~10 min on 2 CPU cores (training 480 s of it). BENCH_DETECTION_TRAIN_S
changes the budget.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
from funlib.geometry import Roi
from funlib.persistence import Array
from scipy import ndimage

from connecto.data.barcodes import BarcodeParameters, default_labels_path, synthesize_barcodes
from connecto.data.volumes import open_raw
from connecto.db.client import get_client
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks.synapse_detection.detect import read_ground_truth
from connecto.tasks.synapse_detection.evaluate import (
    DEFAULT_THRESHOLDS,
    best_point,
    evaluate_in_setup,
    sweep_curve,
)
from connecto.tasks.synapse_detection.predict import open_config_markers, predict_in_setup

TRAIN_S = float(os.environ.get("BENCH_DETECTION_TRAIN_S", "480"))
SYNAPSES = 400
TOLERANCE_NM = 100.0
SHAPE = (120, 160, 160)
VOXEL_SIZE = (10, 10, 10)
CPUS = min(2, os.cpu_count() or 1)
CONNECTO = [sys.executable, "-m", "cli.main"]
NEVER = 10**9
OVERRIDES = [
    "input_shape=[44,44,44]", "downsample_factors=[[2,2,2]]", "fmaps=8", "fmap_inc_factor=3",
    "batch_size=2", "learning_rate=0.0005", "synapse_radius_nm=50", "min_synapse_fraction=0.005",
    "reject_probability=0.9", "detection_threshold=0.5", "min_detection_voxels=3",
    "train_roi=[[0,0,0],[800,1600,1600]]", "validation_roi=[[800,0,0],[400,1600,1600]]",
    "test_roi=[[800,0,0],[400,1600,1600]]", f"save_every={NEVER}",
    f"snapshot_every={NEVER}", "log_every=20", "seed=1", f"worker.num_cpus={CPUS}",
    "worker.num_cache_workers=1", "worker.num_gpus=0",
]  # fmt: skip


def labels() -> tuple[np.ndarray, str]:
    path = default_labels_path()
    if path.is_file():
        import h5py

        with h5py.File(path, "r") as f:
            crop = f["volumes/labels/neuron_ids"][: SHAPE[0], : SHAPE[1], : SHAPE[2]]
        return np.asarray(crop, dtype=np.uint64), f"NeuroProof crop {SHAPE}"
    from tests.tasks.prism_fixtures import neuron_labels

    return neuron_labels(SHAPE, 150, np.random.default_rng(0)), f"Voronoi neurons {SHAPE}"


def train_for(setup: TrainSetup, seconds: float) -> tuple[int, float]:
    """`connecto train` stopped with SIGTERM (it checkpoints) after `seconds`."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [*CONNECTO, "train", str(NEVER)], cwd=setup.path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=300)
    done = setup.checkpoints()
    if not done:
        raise RuntimeError(f"`connecto train` in {setup.path} saved no checkpoint:\n{errors}")
    return done[-1], time.perf_counter() - start


def print_curve(curve: list[dict]) -> None:
    print("  threshold  detections  precision  recall  F1     right pair  either order")
    for p in curve:
        pair = "n/a" if p["correct_pair_fraction"] is None else f"{p['correct_pair_fraction']:.3f}"
        either = p["correct_unordered_pair_fraction"]
        either = "n/a" if either is None else f"{either:.3f}"
        print(f"  {p['threshold']:9.2f}  {p['detections']:10d}  {p['precision']:9.3f}  "
              f"{p['recall']:6.3f}  {p['f1']:.3f}  {pair:>10}  {either:>12}")  # fmt: skip


def baseline(config: Any, roi: Roi, tolerance: float, db_name: str, container: Path) -> None:
    """No learning: components of the smoothed sqrt(pre * post) marker product (minus its
    median, scaled to [0, 1] by its maximum), swept over the same thresholds."""
    markers = open_config_markers(config)
    data = markers.to_ndarray(roi).astype(np.float32) / 255
    product = np.sqrt(ndimage.gaussian_filter(data[0], 1) * ndimage.gaussian_filter(data[1], 1))
    product = np.clip(product - np.median(product), 0, None)
    product /= max(float(product.max()), 1e-6)
    segmentation = open_raw(container, "labels")
    in_memory = Array(segmentation.to_ndarray(roi), offset=roi.offset, voxel_size=VOXEL_SIZE)
    marks = Array(markers.to_ndarray(roi), offset=roi.offset, voxel_size=VOXEL_SIZE)
    truth = read_ground_truth(get_client()[db_name], str(container.resolve())).inside(roi)
    curve = sweep_curve(product, VOXEL_SIZE, roi.offset, truth, tolerance, DEFAULT_THRESHOLDS,
                        3, "max", in_memory, marks, config.assign_radius_nm)  # fmt: skip
    b = best_point(curve)
    print(f"baseline (marker product, no learning): best F1 {b['f1']:.3f} at {b['threshold']:.2f}"
          f" (precision {b['precision']:.3f}, recall {b['recall']:.3f}); right pair "
          f"{b['correct_pair_fraction']}, either order "
          f"{b['correct_unordered_pair_fraction']}")  # fmt: skip
    print_curve(curve)


def run(base: Path, db_name: str) -> None:
    label_data, what = labels()
    container = base / "barcodes.zarr"
    params = BarcodeParameters(channels=3, min_channels_on=1, max_channels_on=2,
                               synapses=SYNAPSES, seed=0)  # fmt: skip
    report = synthesize_barcodes(label_data, VOXEL_SIZE, params, container,
                                 db=get_client()[db_name])  # fmt: skip
    print(f"data: {what}, {report.neurons} neurons, {report.synapses} synapses; "
          f"{CPUS} CPU threads, training budget {TRAIN_S:.0f} s", flush=True)  # fmt: skip
    overrides = [*OVERRIDES, f"container={container}", f"synapses_db={db_name}"]
    setup, config, _ = prepare_training(base, "det", 0, template="synapse-detection",
                                        overrides=overrides)  # fmt: skip
    iterations, wall = train_for(setup, TRAIN_S)
    print(f"training: {iterations} iterations in {wall:.0f} s", flush=True)
    start = time.perf_counter()
    for line in predict_in_setup(setup.path, "validation", [iterations], False, True):
        print(line)
    print(f"prediction + detection: {time.perf_counter() - start:.0f} s", flush=True)
    for result in evaluate_in_setup(setup.path, TOLERANCE_NM):
        print(result.report())
        print_curve(result.curve)
    # the same prediction, its components split along the contour output
    config_path = setup.path / "train_config.toml"
    values = tomllib.loads(config_path.read_text())
    config_path.write_text(tomli_w.dumps({**values, "split_by_contour": True}))
    for result in evaluate_in_setup(setup.path, TOLERANCE_NM, store=False):
        print("split along the contour output: " + result.report())
        print_curve(result.curve)
    roi = Roi((800, 0, 0), (400, 1600, 1600))
    baseline(config, roi, TOLERANCE_NM, db_name, container)


def main() -> None:
    client = get_client()
    db_name = f"bench_detection_{uuid.uuid4().hex[:6]}"
    tracking = f"{db_name}_tracking"
    os.environ["CONNECTO_TRACKING_DB"] = tracking
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), db_name)
    finally:
        for name in (db_name, f"{db_name}_predictions", tracking):
            client.drop_database(name)


if __name__ == "__main__":
    main()
