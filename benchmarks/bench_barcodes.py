"""Barcode-aware agglomeration (issue #15, model 4): VOI/ARAND on a held-out region of
synthetic barcoded data, affinities alone against affinities + fragment barcodes.

Data: `connecto.data.barcodes` renders 18 barcode channels from the NeuroProof neurons
(10 nm voxels), z slices BENCH_BARCODES_Z (default 150:250) by BENCH_BARCODES_YX
(default 0:160,0:160; ":,:" for all): the first half in z (1500-2000 nm) chooses the
threshold and feature weight (lowest VOI), the second (2000-2500 nm, the segmentation
template's test slab) is reported.

Affinities: from the ground truth, degraded as predictions are (`connecto.data.degrade`:
BENCH_BARCODES_DEGRADATIONS, default "mild,strong": blur, noise, leaks between cells);
or, with BENCH_BARCODES_CHECKPOINT, predicted by a trained multi-channel MTLSD
checkpoint (the segmentation-barcodes template; in_channels 18) from the raw channels.

Per affinity source one graph (`connecto segment` fragments and edges in MongoDB), then
the agglomerations, each thresholded in this process (lookup table, relabel, VOI/ARAND):
- `affinities`: mean-affinity agglomeration (the EM pipeline),
- `raw barcodes`: + fragment means of the raw channels (cosine distance),
- `enhanced`: + fragment means of BENCH_BARCODES_ENHANCED (`container.zarr/dataset`, the
  enhancement task's prediction over the same region), when given,
- `true barcodes`: + fragment means of `average_barcode` (the per-neuron mean of the raw:
  what a perfect enhancement gives; an upper bound).
Feature weights BENCH_BARCODES_FEATURE_WEIGHTS (default 0.5,0.75; affinity weight =
1 - feature weight). About 10 minutes on 2 cores with the defaults.

The MongoDB server is the configured one (CONNECTO_MONGO_URI), else the embedded one.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from funlib.geometry import Roi

from connecto.data.barcodes import BarcodeParameters, parse_crop, synthesize_barcodes_from_file
from connecto.db.graph import process_client
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks.segmentation.config import load_segment_config
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.feature_agglomeration import (
    feature_edge_scores,
    store_fragment_features,
)
from connecto.tasks.segmentation.steps import open_graph, open_volume
from connecto.tasks.segmentation.workflow import (
    EdgeScores,
    gt_affinities,
    lookup_table,
    read_edge_scores,
    run_steps,
)

Z_RANGE = os.environ.get("BENCH_BARCODES_Z", "150:250")
YX_RANGE = os.environ.get("BENCH_BARCODES_YX", "0:160,0:160")  # ":,:" for all 250 x 250
DEGRADATIONS = os.environ.get("BENCH_BARCODES_DEGRADATIONS", "mild,strong").split(",")
CHECKPOINT = os.environ.get("BENCH_BARCODES_CHECKPOINT")
ENHANCED = os.environ.get("BENCH_BARCODES_ENHANCED")
FEATURE_WEIGHTS = [
    float(w) for w in os.environ.get("BENCH_BARCODES_FEATURE_WEIGHTS", "0.5,0.75").split(",")
]  # affinity_weight = 1 - feature_weight
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
WORKERS = 2


def toml_value(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')


def write_config(path: Path, values: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in values.items()))
    return path


def synthesize(work: Path, z_range: str = Z_RANGE, yx_range: str = YX_RANGE) -> Path:
    """The barcoded container of the chosen z slices and y-x extent."""
    out = work / "barcodes.zarr"
    start = time.perf_counter()
    report = synthesize_barcodes_from_file(
        out, None, BarcodeParameters(), crop=parse_crop(f"{z_range},{yx_range}"), progress=False
    )
    print(f"synthesized {out.name}: {report} ({time.perf_counter() - start:.0f} s)")
    return out


def variants(data: Path, enhanced: str | None) -> list[tuple[str, dict]]:
    """(name, feature settings) per agglomeration, affinities alone first."""
    found: list[tuple[str, dict]] = [
        ("affinities", {}),
        ("raw barcodes", {"features_container": str(data), "features_dataset": "raw"}),
    ]
    if enhanced:
        container, dataset = enhanced.split(".zarr/", 1)
        found.append(("enhanced", {"features_container": container + ".zarr",
                                   "features_dataset": dataset}))  # fmt: skip
    found.append(("true barcodes", {"features_container": str(data),
                                    "features_dataset": "average_barcode"}))  # fmt: skip
    return found


def regions(data: Path, evaluated: Roi | None = None) -> tuple[Roi, Roi]:
    """The test and validation regions: the second and first half (z) of the volume, or
    of its `evaluated` part."""
    roi = evaluated or open_volume(data, "labels").roi
    half = roi.shape[0] // 2 // 10 * 10  # on the 10 nm grid
    validation = Roi(roi.offset, (half, *roi.shape[1:]))
    test = Roi((roi.offset[0] + half, *roi.offset[1:]), (roi.shape[0] - half, *roi.shape[1:]))
    return test, validation


def best(scores: EdgeScores, frags: list[np.ndarray], truth: list[np.ndarray]) -> tuple:
    """(validation (VOI, ARAND), threshold, test scores) at the threshold with the lowest
    validation VOI."""
    found = []
    for threshold in THRESHOLDS:
        lut = lookup_table(scores, threshold)
        test, validation = (score_segmentation(apply_lut(f, lut), t)
                            for f, t in zip(frags, truth, strict=True))  # fmt: skip
        found.append(((validation.voi, validation.arand), threshold, test))
    return min(found, key=lambda item: item[0])


def run_source(
    work: Path, data: Path, source: str, db_name: str, checkpoint: str | None = None,
    raw: tuple[str, str] | None = None, enhanced: str | None = ENHANCED,
    evaluated: Roi | None = None, neighborhood: list | None = None,
) -> list[tuple[str, tuple]]:  # fmt: skip
    """One affinity source (a degradation name, or `checkpoint` predicting from `raw`,
    default the data's raw channels): fragments and edges once, then every variant (and
    feature weight) scored on the same graph; the threshold and weight chosen on the
    validation half, the test half reported. `neighborhood`: the checkpoint's (default
    the nearest neighbours)."""
    test_roi, validation_roi = regions(data, evaluated)
    raw_container, raw_dataset = raw or (str(data), "raw")
    values = {
        "raw_container": raw_container, "raw_dataset": raw_dataset,
        "labels_container": str(data), "labels_dataset": "labels",
        "output_container": str(work / source / "segment.zarr"),
        "roi": [list(test_roi.offset), list(test_roi.shape)],
        "validation_roi": [list(validation_roi.offset), list(validation_roi.shape)],
        "neighborhood": neighborhood or [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "block_size": [64, 64, 64], "context": [8, 8, 8], "num_workers": WORKERS,
        "min_seed_distance": 4, "merge_function": "mean", "db_name": db_name,
        "graph": f"barcodes_{source}", "thresholds": THRESHOLDS,
    }  # fmt: skip
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    path = write_config(work / source / "segment_config.toml", values)
    start = time.perf_counter()
    config, base = load_segment_config(path)
    if checkpoint is None:
        gt_affinities(config, degradation=source, seed=0)
    run_steps(path, ["predict", "fragments", "agglomerate"])
    print(f"  {source}: affinities, fragments, edges ({time.perf_counter() - start:.0f} s)")
    fragments = open_volume(config.output_container, config.fragments_dataset)
    labels = open_volume(data, "labels")
    frags = [fragments.to_ndarray(test_roi), fragments.to_ndarray(validation_roi)]
    truth = [labels.to_ndarray(test_roi), labels.to_ndarray(validation_roi)]
    graph = open_graph(config)
    results = []
    for name, features in variants(data, enhanced):
        start = time.perf_counter()
        if not features:
            chosen = (*best(read_edge_scores(graph, "mean"), frags, truth), None)
        else:
            with_features = config.model_copy(update=features)
            store_fragment_features(with_features)
            candidates = []
            for weight in FEATURE_WEIGHTS:
                weighted = with_features.model_copy(
                    update={"affinity_weight": 1 - weight, "feature_weight": weight}
                )
                scores = EdgeScores(*feature_edge_scores(graph, weighted))
                candidates.append((*best(scores, frags, truth), weight))
            chosen = min(candidates, key=lambda item: item[0])
        (_, threshold, test, weight) = chosen
        print(
            f"  {source:>10} | {name:<14} | feature weight {weight} threshold {threshold:.2f} | "
            f"VOI split {test.voi_split:.3f} merge {test.voi_merge:.3f} total {test.voi:.3f} | "
            f"ARAND {test.arand:.3f} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        results.append((name, chosen))
    return results


def main() -> None:
    sources = ["checkpoint"] if CHECKPOINT else DEGRADATIONS
    db_name = f"bench_barcodes_{uuid.uuid4().hex[:8]}"
    print(f"affinities: {', '.join(sources)}; feature weights {FEATURE_WEIGHTS}; z slices "
          f"{Z_RANGE}: threshold chosen on the first half, the second reported")  # fmt: skip
    table: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-barcodes-") as tmp:
        work = Path(tmp)
        data = synthesize(work)
        try:
            for source in sources:
                checkpoint = CHECKPOINT if source == "checkpoint" else None
                table[source] = run_source(work, data, source, db_name, checkpoint)
        finally:
            process_client().drop_database(db_name)
    print_table(table)


def print_table(table: dict[str, list]) -> None:
    print("\nVOI (lower is better) and ARAND on the test half; ratio = variant / affinities")
    for source, results in table.items():
        baseline = results[0][1][2]
        for name, (_, threshold, test, weight) in results:
            ratio = test.voi / baseline.voi if baseline.voi else float("nan")
            print(f"  {source:>10} | {name:<14} | VOI {test.voi:.3f} (x{ratio:.2f}) | "
                  f"ARAND {test.arand:.3f} | threshold {threshold} weight {weight}")  # fmt: skip


if __name__ == "__main__":
    main()
