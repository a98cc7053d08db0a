"""Affinities from raw barcodes against affinities from enhanced barcodes (issue #15:
model 3 fed by model 1), each with and without barcode-aware agglomeration.

Data: 18 barcode channels rendered from the NeuroProof neurons (10 nm voxels), z slices
BENCH_BARCODE_INPUTS_Z (default 0:250) by BENCH_BARCODE_INPUTS_YX (default 0:128,0:128).
Training sees z 0-1500 nm only (the segmentation template's train slab); z 1500-2000 nm
chooses each row's threshold and feature weight (lowest VOI), z 2000-2500 nm is reported.

Models, on one budget each (BENCH_BARCODE_INPUTS_ITERATIONS="enhancement,mtlsd", default
200,3000), augmentations off, 2 torch threads. Measured so far: at 600 and at 3000
iterations both MTLSDs predicted nearly constant affinities (no boundaries, one merged
segment in every row), so this comparison still waits for an MTLSD that learns here:
- barcode enhancement as `make bench BENCH=prism` trains it (small channel-agnostic
  U-Net, lr 1e-3), then predicted over the whole volume (`enhanced`, float in [0, 1]);
- two MTLSDs of the segmentation-barcodes template (long-range neighbourhood, LSDs) with
  the same small U-Net (fmaps 6, factor 3, one (2,2,2) downsampling, 36^3 in), lr 5e-4:
  one reads the 18 raw channels, the other the 18 enhanced ones.
Each MTLSD's affinities are segmented as `make bench BENCH=barcodes` does (fragments and
edges in MongoDB once, then affinities alone, + raw barcodes, + enhanced barcodes, + true
barcodes). BENCH_BARCODE_INPUTS_KEEP=DIR keeps the work. About 30 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from funlib.geometry import Roi
from funlib.persistence import open_ds

from benchmarks.bench_barcodes import print_table, run_source, synthesize
from benchmarks.bench_prism import slab, timed_training, train_setup
from connecto.db.graph import process_client
from connecto.experiment import prepare_training
from connecto.tasks.barcode_enhancement.predict import predict_enhanced

Z_RANGE = os.environ.get("BENCH_BARCODE_INPUTS_Z", "0:250")
YX_RANGE = os.environ.get("BENCH_BARCODE_INPUTS_YX", "0:128,0:128")
KEEP = os.environ.get("BENCH_BARCODE_INPUTS_KEEP")
TRAIN_END, EVALUATED = 1500, (1500, 2500)  # nm along z
SMALL_MTLSD = {"fmaps": 6, "fmap_inc_factor": 3, "downsample_factors": [[2, 2, 2]],
               "input_shape": [36, 36, 36], "learning_rate": 5e-4, "augment": False,
               "save_every": 100000, "snapshot_every": 100000, "seed": 1,
               "worker.num_cpus": 3, "worker.num_cache_workers": 1}  # fmt: skip


def _budgets() -> tuple[int, int]:
    values = os.environ.get("BENCH_BARCODE_INPUTS_ITERATIONS", "200,3000").split(",")
    enhancement, mtlsd = (int(v) for v in values)
    return enhancement, mtlsd


def _roi(roi: Roi) -> list[list[int]]:
    return [list(roi.offset), list(roi.shape)]


def train_mtlsd(work: Path, data: Path, raw: tuple[str, str], train_id: int, iterations: int,
                rois: dict[str, Roi]) -> tuple[str, list, str]:  # fmt: skip
    """The segmentation-barcodes template on `raw` (container, dataset); (checkpoint, its
    neighbourhood, a line saying how it trained)."""
    values = {
        "raw_container": raw[0], "raw_dataset": raw[1], "labels_container": str(data),
        "unlabelled_container": str(data), "train_roi": _roi(rois["train"]),
        "validation_roi": _roi(rois["validation"]), "test_roi": _roi(rois["test"]),
        **SMALL_MTLSD,
    }  # fmt: skip
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    setup, _, _ = prepare_training(
        work / "runs", "bench_inputs", train_id, template="segmentation-barcodes",
        overrides=overrides,
    )  # fmt: skip
    line = timed_training(setup, iterations, f"MTLSD from {raw[1]}")
    neighborhood = [list(o) for o in setup.train_config().neighborhood]
    return str(setup.checkpoint(iterations)), neighborhood, line


def main() -> None:
    work = Path(KEEP) if KEEP else Path(tempfile.mkdtemp(prefix="bench-inputs-"))
    work.mkdir(parents=True, exist_ok=True)
    db_name = f"bench_inputs_{uuid.uuid4().hex[:8]}"
    try:
        run(work, db_name)
    finally:
        process_client().drop_database(db_name)
        if not KEEP:
            shutil.rmtree(work, ignore_errors=True)


def run(work: Path, db_name: str) -> None:
    enhancement_iterations, mtlsd_iterations = _budgets()
    data = synthesize(work, Z_RANGE, YX_RANGE)
    volume = open_ds(str(data / "labels"), mode="r").roi
    middle = (EVALUATED[0] + EVALUATED[1]) // 2
    rois = {"train": slab(volume, volume.offset[0], TRAIN_END),
            "held_out": slab(volume, *EVALUATED), "validation": slab(volume, EVALUATED[0], middle),
            "test": slab(volume, middle, EVALUATED[1])}  # fmt: skip
    print(f"train slab {rois['train']}, evaluated {rois['held_out']} (first half chooses, "
          f"second reported)", flush=True)  # fmt: skip
    lines = []
    enhancement, line = train_setup(work, data, "barcode-enhancement", 0,
                                    enhancement_iterations, rois)  # fmt: skip
    lines.append(line)
    start = time.perf_counter()
    enhanced = predict_enhanced(
        enhancement.checkpoint(enhancement_iterations), enhancement.train_config(), data, "raw",
        work / "enhanced.zarr",
    )  # fmt: skip
    print(f"enhanced the whole volume in {time.perf_counter() - start:.0f} s", flush=True)
    inputs = {"raw input": (str(data), "raw"),
              "enhanced input": (str(work / "enhanced.zarr"), "enhanced")}  # fmt: skip
    table = {}
    for train_id, (name, raw) in enumerate(inputs.items(), start=1):
        checkpoint, neighborhood, line = train_mtlsd(work, data, raw, train_id,
                                                     mtlsd_iterations, rois)  # fmt: skip
        lines.append(line)
        table[name] = run_source(work, data, name.replace(" ", "_"), db_name, checkpoint, raw,
                                 str(enhanced.path), rois["held_out"], neighborhood)  # fmt: skip
    print("\nbudgets: " + "; ".join(lines))
    print_table(table)


if __name__ == "__main__":
    main()
