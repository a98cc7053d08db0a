"""PRISM barcode enhancement and barcode expression (issue #15, models 1 and 2) on a
held-out region of synthetic barcoded data, against the raw data.

Data: `connecto.data.barcodes` renders 18 barcode channels (default parameters, seed 0)
from the NeuroProof neurons (250^3 at 10 nm), resampled by BENCH_PRISM_DOWNSAMPLE
(default 2,4,4: 125 x 62 x 62 voxels of 20 x 40 x 40 nm, anisotropic like light
microscopy; 335 neurons). Split along z:
- train slab: z 0 - BENCH_PRISM_TRAIN_NM (default 1600 nm); training draws its outputs
  only there, and its inputs (the U-Net's context, 8 voxels = 160 nm in z) end
  at 1760 nm at most;
- held-out slab: z BENCH_PRISM_HELD_OUT_NM (default 1800) to 2500 nm, never seen in
  training, predicted tile by tile (`connecto predict --split test` in each setup).
Neurons evaluated: those with more than half of their voxels (in the whole volume) in the
held-out slab and at least BENCH_PRISM_MIN_VOXELS (default 100) voxels there; their means
are taken over their held-out voxels. The train slab's neurons chosen the same way (more
than half in the train slab) set the baselines' thresholds.

Models: both tasks' templates with a small channel-agnostic U-Net (fmaps 6, factor 3, one
(2,2,2) downsampling, input 36^3 -> output 20^3 voxels, every channel a batch item),
Adam at BENCH_PRISM_LEARNING_RATE (default 1e-3: the templates' 5e-5 / 1e-4 are for long
GPU runs), augmentations off (BENCH_PRISM_AUGMENT=1 turns on the templates' yx flips and
channel augmentations), trained for BENCH_PRISM_ITERATIONS="enhancement,expression"
(default 100,100) with 2 torch threads (one iteration is 18 single-channel 36^3 samples).
Expression reads raw (the template's default), not the enhanced volume.

Measured on the held-out neurons:
- enhancement: per-neuron Pearson correlation (over the 18 channels) between the neuron's
  mean signal and its true barcode, mean and median, raw against enhanced. The target,
  `average_barcode`, is the mean of raw over each neuron, so on whole neurons raw's mean
  already is the perfect enhancement's; hence also the per-voxel figure: per neuron, the
  mean over its voxels of the correlation of the voxel's 18 values with the barcode
  (what a fragment or a single voxel shows, where enhancement should help);
- barcode calls, per-bit accuracy and exact-barcode accuracy, from (a) raw neuron means
  over one threshold (the best per-bit accuracy on the train slab's neurons), (a') raw
  means over one threshold per channel (same choice, per channel: knows each channel's
  gain), (b) the expression model (mean probability > its call_threshold 0.5), (b') the
  same over a threshold chosen on the train slab as (a)'s, and (c) enhanced means over a
  threshold chosen so (BENCH_PRISM_TRAIN_PREDICTIONS=0 skips predicting the train slab
  for (b') and (c)).
About 10 minutes on 2 idle cores with the defaults (twice that on a busy machine);
BENCH_PRISM_KEEP=DIR keeps the work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from funlib.geometry import Roi
from funlib.persistence import open_ds

from connecto.data.barcodes import BarcodeParameters, synthesize_barcodes_from_file
from connecto.experiment import TrainSetup, prepare_training
from connecto.tasks.barcode_enhancement.evaluate import (
    barcode_correlation,
    container_barcodes,
    neuron_means,
)
from connecto.tasks.barcode_enhancement.predict import output_container, predict_enhanced
from connecto.tasks.barcode_enhancement.predict import predict_in_setup as predict_enhancement
from connecto.tasks.barcode_expression.evaluate import barcode_calls
from connecto.tasks.barcode_expression.predict import predict_expression
from connecto.tasks.barcode_expression.predict import predict_in_setup as predict_calls
from connecto.train import train

DOWNSAMPLE = tuple(int(f) for f in os.environ.get("BENCH_PRISM_DOWNSAMPLE", "2,4,4").split(","))
TRAIN_NM = int(os.environ.get("BENCH_PRISM_TRAIN_NM", "1600"))
HELD_OUT_NM = int(os.environ.get("BENCH_PRISM_HELD_OUT_NM", "1800"))
MIN_VOXELS = int(os.environ.get("BENCH_PRISM_MIN_VOXELS", "100"))
LEARNING_RATE = float(os.environ.get("BENCH_PRISM_LEARNING_RATE", "1e-3"))
AUGMENT = os.environ.get("BENCH_PRISM_AUGMENT", "0") == "1"
TRAIN_PREDICTIONS = os.environ.get("BENCH_PRISM_TRAIN_PREDICTIONS", "1") == "1"
KEEP = os.environ.get("BENCH_PRISM_KEEP")
NETWORK = {"fmaps": 6, "fmap_inc_factor": 3, "downsample_factors": [[2, 2, 2]],
           "input_shape": [36, 36, 36]}  # fmt: skip
THREADS = 2
CANDIDATE_THRESHOLDS = np.linspace(0.0, 1.0, 201)


def _budgets() -> dict[str, int]:
    values = os.environ.get("BENCH_PRISM_ITERATIONS", "100,100").split(",")
    return dict(zip(("enhancement", "expression"), (int(v) for v in values), strict=True))


def synthesize(work: Path) -> Path:
    out = work / "barcodes.zarr"
    start = time.perf_counter()
    report = synthesize_barcodes_from_file(
        out, None, BarcodeParameters(), downsample=DOWNSAMPLE, progress=False
    )
    print(f"data: {report.shape} voxels of {report.voxel_size} nm, {report.channels} "
          f"channels, {report.neurons} neurons ({report.shared} share a barcode, "
          f"{report.weak} weak); {time.perf_counter() - start:.0f} s")  # fmt: skip
    return out


def slab(volume: Roi, z_begin: int, z_end: int) -> Roi:
    return Roi((z_begin, *volume.offset[1:]), (z_end - z_begin, *volume.shape[1:]))


def mostly_inside(labels: np.ndarray, part: tuple[slice, ...]) -> dict[int, int]:
    """{neuron: voxels in `part`} of the neurons with more than half of their voxels (in
    `labels`) inside `part` and at least MIN_VOXELS there."""
    ids, totals = np.unique(labels, return_counts=True)
    inside_ids, inside = np.unique(labels[part], return_counts=True)
    total = dict(zip(ids.tolist(), totals.tolist(), strict=True))
    return {
        i: c for i, c in zip(inside_ids.tolist(), inside.tolist(), strict=True)
        if i != 0 and c >= MIN_VOXELS and c > total[i] / 2
    }  # fmt: skip


def train_setup(work: Path, data: Path, task: str, train_id: int, iterations: int,
                rois: dict[str, Roi]) -> tuple[TrainSetup, str]:  # fmt: skip
    """Train `task` for `iterations` on the train slab; (setup path, a line saying how)."""

    def roi(r: Roi) -> str:
        return f"[{list(r.offset)}, {list(r.shape)}]"

    overrides = [
        f'container="{data}"', f"train_roi={roi(rois['train'])}",
        f"validation_roi={roi(rois['train'])}", f"test_roi={roi(rois['held_out'])}",
        f"augment={'true' if AUGMENT else 'false'}", f"learning_rate={LEARNING_RATE}",
        f"save_every={iterations}", f"snapshot_every={iterations}", "seed=1",
        f"worker.num_cpus={THREADS + 1}", "worker.num_cache_workers=1",
    ] + [f"{k}={v}" for k, v in NETWORK.items()]  # fmt: skip
    setup, _, _ = prepare_training(work / "runs", "bench_prism", train_id, task=task,
                                   overrides=overrides)  # fmt: skip
    return setup, timed_training(setup, iterations, task)


def timed_training(setup: TrainSetup, iterations: int, what: str) -> str:
    """Train `setup` to `iterations`; the printed line saying how long it took."""
    start = time.perf_counter()
    result = train(setup, iterations, progress=False)
    elapsed = time.perf_counter() - start
    line = (f"{what}: {iterations} iterations in {elapsed:.0f} s "
            f"({elapsed / iterations:.2f} s/it), last loss {result.last_loss:.4f}")  # fmt: skip
    print(line, flush=True)
    return line


def best_threshold(means: np.ndarray, truth: np.ndarray, per_channel: bool) -> np.ndarray:
    """The threshold(s) with the best per-bit accuracy of `means > threshold` (n, C)."""
    if per_channel:
        return np.array([best_threshold(means[:, [c]], truth[:, [c]], False)[0]
                         for c in range(means.shape[1])])  # fmt: skip
    accuracy = [((means > t) == truth).mean() for t in CANDIDATE_THRESHOLDS]
    return np.array([CANDIDATE_THRESHOLDS[int(np.argmax(accuracy))]])


def voxel_correlation(values: np.ndarray, labels: np.ndarray, barcodes: dict) -> np.ndarray:
    """Per neuron of `barcodes` (rows in sorted id order): the mean over its voxels of the
    Pearson correlation between the voxel's channel values and the neuron's barcode."""
    ids = np.array(sorted(int(n) for n in barcodes))
    inside = np.isin(labels, ids)
    voxel_ids = labels[inside]
    row = np.searchsorted(ids, voxel_ids)
    truth = np.array([barcodes[str(i)] for i in ids], dtype=np.float32)[row]  # (n voxels, C)
    signal = values[:, inside].T.astype(np.float32)  # (n voxels, C); scale does not matter
    truth -= truth.mean(axis=1, keepdims=True)
    signal -= signal.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(truth, axis=1) * np.linalg.norm(signal, axis=1)
    correlation = np.where(norms > 0, (truth * signal).sum(axis=1) / np.maximum(norms, 1e-12), 0)
    sums = np.bincount(row, weights=correlation, minlength=len(ids))
    return sums / np.maximum(np.bincount(row, minlength=len(ids)), 1)


def train_means(values: np.ndarray, labels: np.ndarray, neurons: dict[int, int],
                barcodes: dict) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(means, true barcodes) of `neurons` over `values`/`labels` (the train slab)."""
    ids, _, means = neuron_means(values, labels)
    keep = np.isin(ids, list(neurons))
    truth = np.array([barcodes[str(int(i))] for i in ids[keep]], dtype=np.uint8)
    return means[keep], truth


def main() -> None:
    budgets = _budgets()
    work = Path(KEEP) if KEEP else Path(tempfile.mkdtemp(prefix="bench-prism-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(work, budgets)
    finally:
        if not KEEP:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, budgets: dict[str, int]) -> None:
    data = synthesize(work)
    labels_ds = open_ds(str(data / "labels"), mode="r")
    raw_ds = open_ds(str(data / "raw"), mode="r")
    volume = labels_ds.roi
    voxel = labels_ds.voxel_size
    rois = {
        "train": slab(volume, 0, TRAIN_NM),
        "held_out": slab(volume, HELD_OUT_NM, volume.end[0]),
    }
    barcodes = container_barcodes(data) or {}
    labels = labels_ds.to_ndarray(volume)
    z_train, z_held = TRAIN_NM // voxel[0], HELD_OUT_NM // voxel[0]
    held_neurons = mostly_inside(labels, (slice(z_held, None),))
    train_neurons = mostly_inside(labels, (slice(0, z_train),))
    held_barcodes = {str(n): barcodes[str(n)] for n in held_neurons}
    print(f"train slab z 0-{TRAIN_NM} nm ({len(train_neurons)} neurons mostly in it), "
          f"held-out slab z {HELD_OUT_NM}-{volume.end[0]} nm ({len(held_neurons)} neurons "
          f"mostly in it, >= {MIN_VOXELS} voxels there: the evaluated ones)")  # fmt: skip

    lines = []
    enhancement, line = train_setup(work, data, "barcode-enhancement", 0,
                                    budgets["enhancement"], rois)  # fmt: skip
    lines.append(line)
    expression, line = train_setup(work, data, "barcode-expression", 1,
                                   budgets["expression"], rois)  # fmt: skip
    lines.append(line)

    start = time.perf_counter()
    for setup, predict in ((enhancement, predict_enhancement), (expression, predict_calls)):
        print("  " + "\n  ".join(predict(setup.path, "test", [], False, False)), flush=True)
    t_predict = time.perf_counter() - start
    enhanced_path = output_container(enhancement, "barcode-enhancement", "test",
                                     budgets["enhancement"]) / "enhanced"  # fmt: skip
    expression_path = output_container(expression, "barcode-expression", "test",
                                       budgets["expression"]) / "predicted_expression"  # fmt: skip
    held = rois["held_out"]
    held_labels = labels_ds.to_ndarray(held)
    held_raw = raw_ds.to_ndarray(held)
    enhanced = open_ds(str(enhanced_path), mode="r").to_ndarray(held)
    probabilities = open_ds(str(expression_path), mode="r").to_ndarray(held)
    print(f"prediction of the held-out slab ({held.shape} nm): {t_predict:.0f} s", flush=True)

    # thresholds of the baselines, from the train slab's neurons
    train_roi = rois["train"]
    train_labels = labels_ds.to_ndarray(train_roi)
    raw_means, raw_truth = train_means(raw_ds.to_ndarray(train_roi), train_labels,
                                       train_neurons, barcodes)  # fmt: skip
    raw_threshold = best_threshold(raw_means, raw_truth, False)
    raw_channel_thresholds = best_threshold(raw_means, raw_truth, True)
    # the models' thresholds the same way: their prediction of the train slab
    train_thresholds: dict[str, float] = {}
    if TRAIN_PREDICTIONS:
        start = time.perf_counter()
        for name, setup, predict, iterations in (
            ("enhanced", enhancement, predict_enhanced, budgets["enhancement"]),
            ("expression", expression, predict_expression, budgets["expression"]),
        ):
            prediction = predict(setup.checkpoint(iterations), setup.train_config(), data, "raw",
                                 work / f"{name}_train.zarr", train_roi)  # fmt: skip
            means, truth = train_means(open_ds(str(prediction.path), mode="r").to_ndarray(
                train_roi), train_labels, train_neurons, barcodes)  # fmt: skip
            train_thresholds[name] = float(best_threshold(means, truth, False)[0])
        print(f"prediction of the train slab for the thresholds of (b') and (c): "
              f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip

    print(f"\nheld-out neurons: {len(held_neurons)}; budgets: " + "; ".join(lines))
    print("enhancement: per-neuron correlation of mean signal and true barcode")
    print(f"  {'input':10s} {'neurons':>7s} {'neuron mean: mean':>17s} {'median':>6s} "
          f"{'per voxel: mean':>15s} {'median':>6s}")  # fmt: skip
    for name, values in (("raw", held_raw), ("enhanced", enhanced)):
        scores = barcode_correlation(values, held_labels, held_barcodes)
        voxels = voxel_correlation(values, held_labels, held_barcodes)
        print(f"  {name:10s} {len(scores.correlation):7d} {scores.mean:17.3f} "
              f"{float(np.median(scores.correlation)):6.3f} {voxels.mean():15.3f} "
              f"{float(np.median(voxels)):6.3f}", flush=True)  # fmt: skip
    print("barcode calls")
    print(f"  {'calls from':44s} {'neurons':>7s} {'per-bit':>7s} {'exact':>6s}")
    rows = [
        (f"(a) raw means > {raw_threshold[0]:.3f}", held_raw, raw_threshold[0]),
        (f"(a') raw means > per-channel thr ({raw_channel_thresholds.min():.2f}-"
         f"{raw_channel_thresholds.max():.2f})", held_raw, raw_channel_thresholds),
        ("(b) expression model, mean prob > 0.5", probabilities, 0.5),
    ]  # fmt: skip
    if train_thresholds:
        chosen = train_thresholds["expression"]
        rows.append((f"(b') expression model, mean prob > {chosen:.3f}", probabilities, chosen))
        chosen = train_thresholds["enhanced"]
        rows.append((f"(c) enhanced means > {chosen:.3f}", enhanced, chosen))
    for name, values, threshold in rows:
        calls = barcode_calls(values, held_labels, held_barcodes, threshold)  # type: ignore[arg-type]
        summary = calls.summary()
        print(f"  {name:44s} {summary['scored_neurons']:7d} {calls.bit_accuracy:7.3f} "
              f"{calls.exact_accuracy:6.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
