"""Dense 3D segmentation from sparse 2D labels (issue #14) on the NeuroProof volume.

Every row is scored on the template's test slab (z 2000-2500 nm) against the dense truth,
VOI/ARAND/ERL at the best threshold of the same sweep, each through connecto's own
fragments -> agglomerate -> extract -> evaluate:
- dense MTLSD trained on the train slab (z 0-1500 nm) with all its labels;
- the sparse chain (`connecto bootstrap run`) from (a) one section in 20 of the train slab
  (5 %) and (b) disk_N (N disks of radius R per section of the train slab): round 0 (2D
  model -> stacked 2D predictions -> 2D->3D affinities) and one bootstrapped round (3D
  MTLSD on round 0's filtered segments), its pseudo labels from each of SOURCES
  (`[rounds] source`: round 0's fragments joined again under the painting's constraints,
  or its segmentation as is), each source a chain of its own reusing the first one's 2D
  and 2D->3D models, with the pseudo labels scored against the truth of the train slab;
- the shipped watershed supervoxels (the baseline the issue names).
The chain runs on the train slab only (its `roi`): the painting, every model it trains
and every pseudo label lie there, as for the dense model; the test slab is predicted
afterwards with the chain's checkpoints (2D -> 2D->3D for round 0, the round's MTLSD for
round 1) and segmented with the same settings as the dense row. The 2D->3D model never
sees labels: it is trained once on synthetic data at the volume's voxel size and reused
by both sparse chains. Budgets (iterations, and the wall seconds
each training took on this machine) are printed with the rows, and the labelled fraction
(of the volume's voxels) next to each result. The 2D and round models train with the dense
model's learning rate (5e-4) and, like it, without augmentation.

BENCH_SPARSE_ITERATIONS="2d,3d,round,dense" (default 600,600,400,1000) sets the budgets;
BENCH_SPARSE_DISKS="N,R" (default 5,200) the disks; BENCH_SPARSE_SPARSITY="sections,disks"
(the default) which sparse label sets run; BENCH_SPARSE_DENSE_CHECKPOINT=PATH scores a dense
MTLSD checkpoint trained before (`make bench BENCH=segment`'s, same settings) instead of
training one now, BENCH_SPARSE_AFFS_CHECKPOINT=PATH a 2D->3D checkpoint (synthetic data at
10 nm); BENCH_SPARSE_KEEP=DIR keeps the work; BENCH_SPARSE_BOUNDARY_WEIGHTS="0.5,0.9" adds
rows segmenting the same affinities with those `watershed_boundary_weight`s;
BENCH_SPARSE_SOURCES="segmentation" chooses the sources; BENCH_SPARSE_ROUNDS=0 stops the
chains at round 0 (with BENCH_SPARSE_KEEP, a later run with rounds continues them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import zarr

from benchmarks.bench_segment import H5, _Rows, _timed, _trained_setup
from connecto import ConnectoError
from connecto.bootstrap.chain import Chain, load_bootstrap_config
from connecto.data.ingest import ingest
from connecto.data.sparsify import sparsify
from connecto.db.client import tracking_database
from connecto.resources import resource_dir
from connecto.tasks import load_train_config
from connecto.tasks.segmentation.config import STEPS, load_segment_config
from connecto.tasks.segmentation.evaluate import score_segmentation
from connecto.tasks.segmentation.steps import open_volume
from connecto.tasks.segmentation.workflow import best_threshold, run_steps

TRUTH = "volumes/labels/neuron_ids"
THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]
SEGMENT_STEPS = ("fragments", "agglomerate", "extract", "evaluate")
# the dense model's settings (bench_segment's `_trained_setup`): a budget compares alike
SAME_AS_DENSE = {"learning_rate": 5e-4, "augment": False}
SMALL_3D = {"fmaps": 6, "fmap_inc_factor": 3, "worker.num_cache_workers": 2, **SAME_AS_DENSE}
# isotropic 10 nm: the 2D->3D network downsamples in z too
AFFS_FROM_2D = {"input_shape": [76, 76, 76], "downsample_factors": [[2, 2, 2], [2, 2, 2]],
                "fmaps": 6, "fmap_inc_factor": 3, "neurite_diameter": [150.0, 600.0],
                "worker.num_cache_workers": 2}  # fmt: skip
# where round 1's pseudo labels come from, each a chain of its own (the first trains the
# 2D and 2D->3D models, the others reuse them)
SOURCES = ("painted-agglomeration", "segmentation")
MODEL_2D = {"batch_size": 2, "worker.num_cache_workers": 2, **SAME_AS_DENSE}


def _budgets() -> dict[str, int]:
    values = os.environ.get("BENCH_SPARSE_ITERATIONS", "600,600,400,1000").split(",")
    return dict(zip(("2d", "3d", "round", "dense"), (int(v) for v in values), strict=True))


def _train_slab_only(container: Path, dataset: str, depth_voxels: int) -> float:
    """Zero the sparse labels beyond the train slab; the labelled fraction of the volume."""
    labels = zarr.open(str(container / dataset), mode="r+")
    labels[depth_voxels:] = 0
    data = labels[:]
    return float(np.count_nonzero(data)) / data.size


def _sparse_labels(work: Path, data: Path, name: str, train_depth: int) -> (
    tuple[Path, float, str]
):  # fmt: skip
    out = work / f"sparse_{name}.zarr"
    if name == "sections":
        report = sparsify(
            data, out, TRUTH, "labels", sections=list(range(0, train_depth, 20)), overwrite=True
        )
    else:
        count, radius = (float(v) for v in os.environ.get("BENCH_SPARSE_DISKS", "5,200").split(","))
        report = sparsify(
            data, out, TRUTH, "labels", disks=int(count), radius_nm=radius, seed=1, overwrite=True
        )
    fraction = _train_slab_only(out, "labels", train_depth)
    return out, fraction, report.mode.describe()


def _run_chain(chain: Chain) -> float:
    """`connecto bootstrap run` (resuming), each step's line with the seconds since the
    previous one; the total seconds."""
    start = last = time.perf_counter()

    def log(line: str) -> None:
        nonlocal last
        now = time.perf_counter()
        print(f"    {line} [{now - last:.0f} s]", flush=True)
        last = now

    chain.run(None, log=log)
    return time.perf_counter() - start


def _score_affinities(work: Path, name: str, affs_container: Path, base: dict[str, Any]) -> (
    object
):  # fmt: skip
    """Segment `affs_container/affs` on the test slab with the threshold sweep; the best."""
    values = {**base, "output_container": str(affs_container), "graph": name,
              "fragments_dataset": f"fragments_{name}",
              "segmentation_dataset": f"segmentation_{name}"}  # fmt: skip
    path = work / f"segment_{name}.toml"
    path.write_text(tomli_w.dumps(values))
    report = run_steps(path, SEGMENT_STEPS, overwrite=True)
    return best_threshold(report.scores)


def _boundary_weight_rows(rows: list, work: Path, name: str, label: str, container: Path,
                          base: dict[str, Any]) -> None:  # fmt: skip
    """`label`'s affinities segmented again with each asked-for boundary weight."""
    weights = os.environ.get("BENCH_SPARSE_BOUNDARY_WEIGHTS", "")
    for weight in (float(w) for w in weights.split(",") if w):
        values = {**base, "watershed_boundary_weight": weight}
        best = _score_affinities(work, f"{name}_w{weight:g}".replace(".", ""), container, values)
        rows.append((f"{label}, boundary weight {weight:g}", best, 0.0))


def main() -> None:
    if not H5.is_file():
        print(f"bench_sparse: the NeuroProof volume is not at {H5}; nothing measured")
        return
    budgets = _budgets()
    keep = os.environ.get("BENCH_SPARSE_KEEP")
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench_sparse_"))
    work.mkdir(parents=True, exist_ok=True)
    db_name = f"bench_sparse_{uuid.uuid4().hex[:8]}"
    try:
        _measure(work, db_name, budgets)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _measure(work: Path, db_name: str, budgets: dict[str, int]) -> None:
    template = load_train_config(resource_dir("experiments") / "segmentation" / "train_config.toml")
    voxel = template.voxel_size[0]
    train_depth = template.train_roi[1][0] // voxel
    data = work / "neuroproof.zarr"
    if not data.exists():
        ingest(H5, data, datasets=["volumes/raw", TRUTH], progress=False)
    config, _ = load_segment_config(
        resource_dir("experiments") / "segmentation" / "segment_config.toml"
    )
    base = config.model_dump(mode="json", exclude_none=True)
    base.update(raw_container=str(data), raw_dataset="volumes/raw", labels_container=str(H5),
                labels_dataset=TRUTH, roi=template.test_roi, db_name=db_name, num_workers=2,
                thresholds=THRESHOLDS)  # fmt: skip
    print(f"budgets (iterations): {json.dumps(budgets)}; test slab {template.test_roi} nm; "
          f"train slab {template.train_roi} nm", flush=True)  # fmt: skip
    rows = _Rows()
    print(f"  {'':38s} {'thr':>5s} {'VOI split':>9s} {'VOI merge':>9s} {'VOI':>7s} "
          f"{'ARAND':>7s} {'ERL nm':>7s} {'time s':>7s}  labelled", flush=True)  # fmt: skip
    truth = open_volume(H5, TRUTH)
    test_truth = truth.to_ndarray(truth.roi.intersect(_roi(template.test_roi)))
    supervoxels = open_volume(H5, "volumes/labels/watershed_supervoxels")
    rows.append(("watershed supervoxels (baseline)", score_segmentation(
        supervoxels.to_ndarray(_roi(template.test_roi)), test_truth), 0.0))  # fmt: skip

    # dense MTLSD: every label of the train slab (trained now unless given, see the docstring)
    os.environ.pop("BENCH_SEGMENT_CHECKPOINT", None)
    if os.environ.get("BENCH_SPARSE_DENSE_CHECKPOINT"):
        os.environ["BENCH_SEGMENT_CHECKPOINT"] = os.environ["BENCH_SPARSE_DENSE_CHECKPOINT"]
    checkpoint, how = _trained_setup(work / "dense", data, budgets["dense"])
    print(f"    dense MTLSD: {how}", flush=True)
    elapsed, best = _timed(_predict_and_score, work, "dense", checkpoint, work / "dense.zarr", base)
    dense_fraction = float(np.count_nonzero(truth.to_ndarray(_roi(template.train_roi))))
    rows.append(("dense MTLSD", best, elapsed))
    _boundary_weight_rows(rows, work, "dense", "dense MTLSD", work / "dense.zarr", base)
    print(f"    (dense labelled fraction {dense_fraction / np.prod(truth.shape):.3f})")

    affs_checkpoint = os.environ.get("BENCH_SPARSE_AFFS_CHECKPOINT")
    sources = os.environ.get("BENCH_SPARSE_SOURCES", ",".join(SOURCES)).split(",")
    train_truth = truth.to_ndarray(_roi(template.train_roi))
    for name in os.environ.get("BENCH_SPARSE_SPARSITY", "sections,disks").split(","):
        labels, fraction, described = _sparse_labels(work, data, name, train_depth)
        print(f"  sparse ({name}): {described}, labelled fraction {fraction:.4f}", flush=True)
        models: dict[str, str] = {}  # the first chain's checkpoints, reused by the others
        for source in sources:
            tag = name if not models else f"{name}_{source}"
            chain = _chain_of(work, tag, data, labels, budgets, affs_checkpoint,
                              template.train_roi, source, models)  # fmt: skip
            try:
                seconds = _run_chain(chain)
            except ConnectoError as error:  # a row fails, the others still run
                print(f"    chain stopped: {error}", flush=True)
                seconds = 0.0
            record = {d["step"]: d for d in chain.lineage()}
            if record.get("train-3d", {}).get("state") == "done":
                affs_checkpoint = affs_checkpoint or record["train-3d"]["stats"]["checkpoint"]
            steps = ((0, "predict-3d"), (1, "round-1-segment")) if not models else (
                (1, "round-1-segment"),
            )  # fmt: skip
            if not models and record.get("train-2d", {}).get("state") == "done":
                models = {
                    key: record[key]["stats"]["checkpoint"] for key in ("train-2d", "train-3d")
                }
            for r, step in steps:
                if record.get(step, {}).get("state") != "done":
                    print(f"    round {r}: not scored ({step} did not finish)", flush=True)
                    continue
                label = f"sparse {name}, " + ("2D -> 2D->3D" if r == 0 else f"round 1, {source}")
                container = work / f"{tag}_round{r}_test.zarr"
                try:
                    if r == 0:
                        _round_0_on_test(work, name, record, data, base, container)
                        best = _score_affinities(work, f"{name}_round{r}", container, base)
                    else:
                        checkpoint = record["round-1-train"]["stats"]["checkpoint"]
                        best = _predict_and_score(work, f"{tag}_round1", checkpoint, container,
                                                  base)  # fmt: skip
                except ConnectoError as error:
                    print(f"    {label}: not scored: {error}", flush=True)
                    continue
                rows.append((label, best, seconds if r == 1 else 0.0))
                _boundary_weight_rows(rows, work, f"{tag}_round{r}", label, container, base)
                print(f"    labelled fraction {fraction:.4f}", flush=True)
            kept = record.get("round-1-pseudo-labels", {})
            print(f"    round 1 pseudo labels ({source}): {kept.get('stats', {})}", flush=True)
            if kept.get("state") == "done":
                _score_pseudo_labels(Path(kept["outputs"]["labels"]), train_truth)


def _score_pseudo_labels(path: Path, truth: np.ndarray) -> None:
    """The pseudo labels against the dense truth, over the voxels they keep."""
    from funlib.persistence import open_ds

    pseudo = open_ds(path)
    kept = pseudo.to_ndarray(pseudo.roi)
    labelled = kept > 0
    scores = score_segmentation(kept[labelled], truth[labelled])
    print(f"    pseudo labels against the truth: {labelled.mean():.1%} of the train slab kept, "
          f"VOI split {scores.voi_split:.3f}, merge {scores.voi_merge:.3f}, "
          f"ARAND {scores.arand:.3f} over the kept voxels", flush=True)  # fmt: skip


def _roi(roi: list[list[int]]) -> Any:
    from funlib.geometry import Roi

    return Roi(roi[0], roi[1])


def _round_0_on_test(work: Path, name: str, record: dict[str, Any], data: Path,
                     base: dict[str, Any], out: Path) -> None:  # fmt: skip
    """The chain's 2D model on the test slab and the validation slab the segmentation
    chooses its threshold on (and the sections around them, the 3D network's context),
    then its 2D->3D model: `out`/affs."""
    from funlib.geometry import Coordinate

    from connecto.experiment import checkpoint_config
    from connecto.tasks.affinities_from_2d.config import AffinitiesFrom2dTrainConfig
    from connecto.tasks.affinities_from_2d.predict import predict_affinities
    from connecto.tasks.segmentation_2d.predict import predict_sections, train_config_of

    checkpoint_2d = Path(record["train-2d"]["stats"]["checkpoint"])
    checkpoint_3d = Path(record["train-3d"]["stats"]["checkpoint"])
    config_3d = checkpoint_config(checkpoint_3d, AffinitiesFrom2dTrainConfig, "affinities-from-2d")
    voxel_size = Coordinate(config_3d.voxel_size)
    context = (Coordinate(config_3d.input_shape) - Coordinate(config_3d.network_output_shape)) / 2
    roi = _roi(base["roi"])
    if base.get("validation_roi"):
        roi = roi.union(_roi(base["validation_roi"]))
    stack_roi = roi.grow(context * voxel_size, context * voxel_size)
    stack_roi = stack_roi.intersect(open_volume(data, "volumes/raw").roi)
    stack = work / f"{name}_test_2d.zarr"
    predict_sections(checkpoint_2d, train_config_of(checkpoint_2d), data, "volumes/raw", stack,
                     stack_roi, overwrite=True)  # fmt: skip
    predict_affinities(checkpoint_3d, config_3d, stack, out, roi)


def _predict_and_score(work: Path, name: str, checkpoint: str | Path, out: Path,
                       base: dict[str, Any]) -> Any:  # fmt: skip
    """An MTLSD checkpoint predicted on the test slab into `out`, segmented and scored
    (every `connecto segment` step); the best threshold's scores."""
    values = {**base, "checkpoint": str(checkpoint), "graph": name, "output_container": str(out)}
    path = work / f"segment_{name}.toml"
    path.write_text(tomli_w.dumps(values))
    return best_threshold(run_steps(path, STEPS, overwrite=True).scores)


def _chain_of(work: Path, name: str, data: Path, labels: Path, budgets: dict[str, int],
              affs_checkpoint: str | None, roi: list[list[int]], source: str,
              models: dict[str, str]) -> Chain:  # fmt: skip
    """The chain `sparse_<name>`; `models`: trained 2D and 2D->3D checkpoints to reuse."""
    affs_checkpoint = models.get("train-3d", affs_checkpoint)
    config = {
        "experiment": f"sparse_{name}", "base": str(work / "runs"), "roi": roi,
        "raw_container": str(data), "raw_dataset": "volumes/raw",
        "labels_container": str(labels), "labels_dataset": "labels",
        "segment": {"block_size": [64, 64, 64], "num_workers": 2},
        "model_2d": (
            {"checkpoint": models["train-2d"]} if models
            else {"iterations": budgets["2d"], "set": MODEL_2D}
        ),
        "affinities_from_2d": (
            {"checkpoint": affs_checkpoint} if affs_checkpoint
            else {"iterations": budgets["3d"], "set": AFFS_FROM_2D}
        ),
        "rounds": {"count": int(os.environ.get("BENCH_SPARSE_ROUNDS", "1")),
                   "iterations": budgets["round"], "set": SMALL_3D, "source": source,
                   "filter": {"min_size": 500, "min_sections": 3, "outlier_std": 3.0}},
    }  # fmt: skip
    path = work / f"bootstrap_{name}.toml"
    path.write_text(tomli_w.dumps(config))
    return Chain(load_bootstrap_config(path), tracking_database(), progress=False)


if __name__ == "__main__":
    main()
