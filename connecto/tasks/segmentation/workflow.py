"""The segmentation steps, in the order `connecto segment run` takes them:

predict (affinities from a checkpoint, or `gt_affinities` from labels) -> fragments
(nodes) -> agglomerate (edges) -> extract (one segmentation per threshold) -> evaluate.
Each step skips the work a previous run finished (block bookkeeping, existing outputs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import mwatershed as mws
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from volara.datasets import Affs, Labels
from volara.lut import LUT

from connecto import ConnectoError
from connecto.data.degrade import DEGRADATIONS, degrade_affinities, target_affinities
from connecto.data.volumes import prepare_volume
from connecto.db.client import tracking_database
from connecto.db.graph import MongoDBGraphDataBase
from connecto.db.tracking import git_commit, store_score
from connecto.postprocess.agglomerate import UNMERGED, mean_affinity_history, merge_scores
from connecto.postprocess.blockwise import (
    AFFINITY_COUNT,
    GLOBAL_MEAN,
    MEAN_AFFINITY,
    MERGE_SCORE,
    GraphAffAgglom,
    GraphExtractFrags,
    SegmentRelabel,
    run_task,
)
from connecto.tasks.segmentation.config import STEPS, SegmentConfig, load_segment_config
from connecto.tasks.segmentation.evaluate import SegmentationScores, score_segmentation
from connecto.tasks.segmentation.feature_agglomeration import (
    feature_edge_scores,
    store_fragment_features,
)
from connecto.tasks.segmentation.run_length import (
    RunLengthScores,
    Skeleton,
    expected_run_length,
    skeletonize_labels,
)
from connecto.tasks.segmentation.steps import (
    NO_FRAGMENTS,
    StepResult,
    dataset_exists,
    dataset_path,
    ensure_container,
    ensure_group,
    graph_config,
    logs_in,
    open_graph,
    open_volume,
    work_roi,
)

# fewer ground-truth objects than this in validation_roi make the chosen threshold noisy
MIN_VALIDATION_OBJECTS = 50
# the largest fragment of each block covering this share of the volume on average: the
# affinities separate nothing (the ground truth itself gives about 0.65 at 32^3 blocks,
# 0.5 at 64^3 on NeuroProof)
FILLED_BLOCKS = 0.9
SELECTED_ON_VALIDATION = "validation_roi"
SELECTED_ON_EVALUATED = "evaluated_roi"  # no validation_roi: chosen on what is reported


@dataclass(frozen=True)
class ThresholdScore:
    threshold: float
    dataset: str
    scores: SegmentationScores
    run_length: RunLengthScores | None = None  # None: no skeleton in the region


# ---------------------------------------------------------------- affinities


def gt_affinities(
    config: SegmentConfig, overwrite: bool = False, degradation: str | None = None, seed: int = 0
) -> StepResult:
    """Affinities computed from the ground-truth labels (uint8) over the ROI: the
    post-processing's test without a network. Perfect ones (what a network trained by
    connecto learns to predict: boundaries grown by a voxel on each side), or with
    `degradation` (a name in `DEGRADATIONS`) degraded as predictions are."""
    if degradation is not None and degradation not in DEGRADATIONS:
        raise ConnectoError(f"degradation {degradation!r} is not one of {', '.join(DEGRADATIONS)}")
    path = dataset_path(config, config.affs_dataset)
    if dataset_exists(path) and not overwrite:
        return StepResult("gt-affinities", True, f"{path} exists")
    if config.labels_container is None:
        raise ConnectoError("labels_container is not set in the segment config")
    labels = open_volume(config.labels_container, config.labels_dataset)
    voxel_size = Coordinate(labels.voxel_size)
    roi = work_roi(config, labels.roi, f"{config.labels_container}/{config.labels_dataset}")
    reach = Coordinate(max(abs(o[d]) for o in config.neighborhood) for d in range(3))
    grown = roi.grow(reach * voxel_size, reach * voxel_size)
    segmentation = labels.to_ndarray(grown, fill_value=0)
    neighborhood = [tuple(o) for o in config.neighborhood]
    affs = target_affinities(segmentation, neighborhood, grow_boundary=1)
    if degradation is not None:
        affs = degrade_affinities(affs, DEGRADATIONS[degradation], seed)
    inner = tuple(slice(r, r + s) for r, s in zip(reach, roi.shape / voxel_size, strict=True))
    data = np.round(affs[(slice(None), *inner)] * 255).astype(np.uint8)
    _write_channels(config, path, data, roi, voxel_size, {"neighborhood": config.neighborhood})
    what = "perfect" if degradation is None else f"{degradation} (seed {seed})"
    return StepResult("gt-affinities", False, f"{path}: {data.shape[0]} {what} channels over {roi}")


def _write_channels(
    config: SegmentConfig, path: Path, data: np.ndarray, roi: Roi, voxel_size: Coordinate,
    attrs: dict,
) -> None:  # fmt: skip
    array = prepare_volume(
        path, shape=data.shape, offset=roi.offset, voxel_size=voxel_size,
        axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        chunk_shape=(data.shape[0], *config.block_size), dtype=data.dtype, mode="w",
    )  # fmt: skip
    array._source_data.attrs.update(attrs)
    array[roi] = data


# ---------------------------------------------------------------- graph steps


def _affs(config: SegmentConfig) -> Affs:
    path = dataset_path(config, config.affs_dataset)
    if not dataset_exists(path):
        raise ConnectoError(
            f"{path}: no affinities; run `connecto segment predict` (or `gt-affinities`)"
        )
    return Affs(store=path, neighborhood=[Coordinate(o) for o in config.neighborhood])


def fragments(config: SegmentConfig, base: Path, overwrite: bool = False) -> StepResult:
    """Fragments per block into zarr, one graph node per fragment;
    `overwrite` drops the graph and the fragments first."""
    affs = _affs(config)
    roi = work_roi(config, affs.array("r").roi, str(affs.store))
    task = GraphExtractFrags(
        db=graph_config(config),
        affs_data=affs,
        frags_data=Labels(store=dataset_path(config, config.fragments_dataset)),
        block_size=config.block_size,
        context=config.context,
        bias=[
            config.fragments_bias if sum(map(abs, offset)) == 1 else config.long_range_bias
            for offset in config.neighborhood
        ],
        num_workers=config.num_workers,
        roi=roi,
        method=config.fragments_method,
        seed_distance=config.min_seed_distance,
        boundary_threshold=config.boundary_threshold,
        fragments_in_xy=config.fragments_in_xy,
        boundary_weight=config.watershed_boundary_weight,
        epsilon_agglomerate=config.epsilon_agglomerate,
        merge_function=config.merge_function,
        min_fragment_size=config.min_fragment_size,
    )
    with logs_in(base / "logs"):
        if overwrite:
            task.drop()
        run_task(task, "fragments")
    graph = open_graph(config)
    return StepResult("fragments", False, f"{graph.num_nodes()} fragments (nodes)")


def agglomerate(config: SegmentConfig, base: Path, overwrite: bool = False) -> StepResult:
    """Edges between touching fragments with mean affinity and the merge score of waterz's
    agglomeration per block; `overwrite`
    drops the edges first."""
    affs = _affs(config)
    frags = Labels(store=dataset_path(config, config.fragments_dataset))
    if not dataset_exists(frags.store):
        raise ConnectoError(f"{frags.store}: no fragments; run `connecto segment fragments`")
    graph = open_graph(config)
    task = GraphAffAgglom(
        db=graph_config(config),
        affs_data=affs,
        frags_data=frags,
        block_size=config.block_size,
        context=config.context,
        scores={MEAN_AFFINITY: [Coordinate(o) for o in config.neighborhood]},
        num_workers=config.num_workers,
        roi=work_roi(config, frags.array("r").roi, str(frags.store)),
        merge_function=config.merge_function,
    )
    if overwrite:
        graph.drop_edges()
        graph.reset_blocks(task.task_name)
    with logs_in(base / "logs"):
        run_task(task, "agglomerate")
    detail = f"{graph.num_edges()} edges"
    if config.features_container is not None:  # barcode/embedding-aware agglomeration
        detail += f"; {store_fragment_features(config, overwrite)}"
    return StepResult("agglomerate", False, detail)


def threshold_name(threshold: float) -> str:
    return f"threshold_{threshold:.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class EdgeScores:
    """The whole graph for the global agglomeration: fragment ids (ascending) and, per
    edge, the indices of its ends in `ids` and its merge score."""

    ids: np.ndarray
    iu: np.ndarray
    iv: np.ndarray
    score: np.ndarray


def read_edge_scores(graph: MongoDBGraphDataBase, merge_function: str | None = None) -> EdgeScores:
    """The graph's edges with their merge scores. `mean`: the score at which the global
    hierarchical agglomeration of the stored boundary affinities joins each edge's ends
    (exact: the same as waterz on the whole volume); otherwise the stored merge scores."""
    ids = np.sort(graph.read_node_columns(read_attrs=[])["id"])
    if ids.size == 0:
        raise ConnectoError(NO_FRAGMENTS)
    global_mean = merge_function == GLOBAL_MEAN
    attrs = [MEAN_AFFINITY, AFFINITY_COUNT] if global_mean else [MERGE_SCORE]
    edges = graph.read_edge_columns(read_attrs=attrs)
    u, v = edges["u"], edges["v"]
    known = np.isin(u, ids) & np.isin(v, ids)
    iu, iv = np.searchsorted(ids, u[known]), np.searchsorted(ids, v[known])
    if global_mean:
        if any(edges[a].dtype == object for a in attrs):
            raise ConnectoError(
                "the segment graph's edges have no affinity counts (made by an older "
                "connecto): rerun `connecto segment agglomerate --overwrite`"
            )
        counts = edges[AFFINITY_COUNT][known].astype(np.float64)
        sums = edges[MEAN_AFFINITY][known].astype(np.float64) * counts
        history = mean_affinity_history(ids.size, iu + 1, iv + 1, sums, counts)
        score = merge_scores(ids.size, history, iu + 1, iv + 1)
    else:
        score = edges[MERGE_SCORE][known]
        if score.dtype == object:  # an edge without a score never merges
            score = np.array([UNMERGED if s is None else s for s in score.tolist()])
    return EdgeScores(ids, iu, iv, score.astype(np.float64))


def lookup_table(
    graph: MongoDBGraphDataBase | EdgeScores,
    threshold: float,
    method: str = "connected_components",
) -> np.ndarray:
    """Fragment -> segment (2 x N). `connected_components`: components over the edges
    whose merge score is below `threshold`; `mutex_watershed`: edges weighted by
    threshold - merge score, strongest first, repulsive ones keep segments apart. A segment
    is named by its smallest fragment id, so ids never collide with unmapped fragments."""
    edges = graph if isinstance(graph, EdgeScores) else read_edge_scores(graph)
    ids, iu, iv, score = edges.ids, edges.iu, edges.iv, edges.score
    if method == "mutex_watershed":
        weight = threshold - score
        order = np.argsort(-np.abs(weight), kind="stable")
        clusters = dict(mws.cluster([(bool(weight[i] > 0), int(iu[i]), int(iv[i])) for i in order]))
        component = np.array([clusters.get(i, i) for i in range(ids.size)])
    else:
        keep = score < threshold
        matrix = coo_matrix((np.ones(keep.sum()), (iu[keep], iv[keep])), shape=(ids.size,) * 2)
        _, component = connected_components(matrix, directed=False)
    smallest = np.full(component.max() + 1, np.iinfo(np.uint64).max, dtype=np.uint64)
    np.minimum.at(smallest, component, ids)
    return np.stack([ids, smallest[component]])


def edge_scores(config: SegmentConfig, graph: MongoDBGraphDataBase) -> EdgeScores:
    """Every edge's merge score as `extract` thresholds them: by affinity, or by affinity
    and feature distance when the config names features."""
    if config.features_container is not None:
        return EdgeScores(*feature_edge_scores(graph, config))
    return read_edge_scores(graph, config.merge_function)


def extract(config: SegmentConfig, base: Path, overwrite: bool = False) -> StepResult:
    """One segmentation dataset per threshold: global agglomeration into a lookup
    table (saved under `luts/`), then a blockwise relabel of the fragments."""
    frags = Labels(store=dataset_path(config, config.fragments_dataset))
    if not dataset_exists(frags.store):
        raise ConnectoError(f"{frags.store}: no fragments; run `connecto segment fragments`")
    graph = open_graph(config)
    made, kept = [], []
    scores: EdgeScores | None = None  # read once, when a table is missing
    for threshold in config.thresholds:
        name = threshold_name(threshold)
        lut = LUT(path=base / "luts" / f"{config.graph}_{name}.npz")
        seg_path = dataset_path(config, f"{config.segmentation_dataset}/{name}")
        task = SegmentRelabel(
            frags_data=frags, seg_data=Labels(store=seg_path), lut=lut,
            block_size=config.block_size, num_workers=config.num_workers,
        )  # fmt: skip
        if overwrite or not lut.path.exists():
            lut.path.parent.mkdir(parents=True, exist_ok=True)
            with logs_in(base / "logs"):
                task.drop()  # a new table invalidates the relabelled blocks
            if scores is None:
                scores = edge_scores(config, graph)
            lut.save(lookup_table(scores, threshold, config.agglomeration))
            made.append(name)
        else:
            kept.append(name)
        with logs_in(base / "logs"):
            run_task(task, f"extract {name}")
    detail = f"{len(made)} thresholds agglomerated, {len(kept)} lookup tables reused"
    return StepResult("extract", not made, detail)


# ---------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """Every threshold scored over `roi` (the reported region) and, with a
    `validation_roi`, over that region too; the threshold is chosen (lowest VOI) on the
    validation region, or without one on the reported region itself (optimistic)."""

    scores: list[ThresholdScore]  # over roi: what is reported
    validation: list[ThresholdScore]  # over validation_roi; empty without one
    chosen: ThresholdScore  # the reported region's score at the chosen threshold
    selected_on: str  # SELECTED_ON_VALIDATION or SELECTED_ON_EVALUATED
    selection_roi: list[list[int]] | None  # the region that chose (None: the whole volume)
    validation_objects: int | None = None  # ground-truth objects in validation_roi
    warnings: list[str] = field(default_factory=list)

    @property
    def honest(self) -> bool:
        return self.selected_on == SELECTED_ON_VALIDATION

    @property
    def chosen_validation(self) -> ThresholdScore | None:
        return next((r for r in self.validation if r.threshold == self.chosen.threshold), None)


def _score_region(
    config: SegmentConfig, labels: Array, region: Roi | None, what: str
) -> tuple[list[ThresholdScore], int]:
    """Every threshold's scores over `region` (None: the segmentation's ROI, or the
    config's), and the number of ground-truth objects there."""
    voxel_size = tuple(labels.voxel_size)
    results = []
    truth: np.ndarray | None = None
    skeletons: dict[int, Skeleton] = {}
    for threshold in config.thresholds:
        name = f"{config.segmentation_dataset}/{threshold_name(threshold)}"
        path = dataset_path(config, name)
        if not dataset_exists(path):
            raise ConnectoError(f"{path}: no segmentation; run `connecto segment extract`")
        segmentation = open_ds(path, mode="r")
        if region is None:
            roi = work_roi(config, segmentation.roi, str(path))
        elif not segmentation.roi.contains(region):
            raise ConnectoError(
                f"{what} {region} is not inside the segmentation {path} "
                f"({segmentation.roi}): rerun `connecto segment run --overwrite` after "
                "changing roi or validation_roi"
            )
        else:
            roi = region
        if truth is None:  # the same region for every threshold
            truth = labels.to_ndarray(roi, fill_value=0)
            skeletons = skeletonize_labels(truth, voxel_size, tuple(roi.offset))
        data = segmentation.to_ndarray(roi)
        scores = score_segmentation(data, truth)
        run_length = (
            expected_run_length(skeletons, data, voxel_size, tuple(roi.offset))
            if skeletons
            else None
        )
        results.append(ThresholdScore(threshold, name, scores, run_length))
    assert truth is not None
    objects = int(np.unique(truth[truth != 0]).size)
    return results, objects


def evaluate(config: SegmentConfig) -> Evaluation:
    """VOI split/merge, adapted Rand error and expected run length (along skeletons of
    the ground truth) of every threshold's segmentation against the ground truth over
    `roi`, and over `validation_roi` when given; the threshold is chosen by VOI on the
    validation region (else on `roi` itself); all stored in the tracking `scores`."""
    if config.labels_container is None:
        raise ConnectoError("labels_container is not set in the segment config")
    labels = open_volume(config.labels_container, config.labels_dataset)
    warnings = []
    validation: list[ThresholdScore] = []
    objects = None
    if config.validation_region is not None:
        validation, objects = _score_region(
            config, labels, config.validation_region, "validation_roi"
        )
        if objects < MIN_VALIDATION_OBJECTS:
            warnings.append(
                f"warning: validation_roi holds {objects} ground-truth objects (fewer than "
                f"{MIN_VALIDATION_OBJECTS}): the threshold chosen there is noisy; a larger "
                "validation_roi chooses more reliably"
            )
    results, _ = _score_region(config, labels, config.test_region, "roi")
    chosen, selected_on = select_threshold(results, validation)
    selection_roi = config.validation_roi if validation else config.roi
    evaluation = Evaluation(
        results, validation, chosen, selected_on, selection_roi, objects, warnings
    )
    _store_scores(config, evaluation)
    return evaluation


def select_threshold(
    results: list[ThresholdScore], validation: list[ThresholdScore]
) -> tuple[ThresholdScore, str]:
    """The reported score at the threshold chosen on `validation` (lowest VOI, then
    ARAND), and where it was chosen; without validation scores, `results`' own best."""
    if not validation:
        return best_threshold(results), SELECTED_ON_EVALUATED
    threshold = best_threshold(validation).threshold
    return next(r for r in results if r.threshold == threshold), SELECTED_ON_VALIDATION


def best_threshold(results: list[ThresholdScore]) -> ThresholdScore:
    return min(results, key=lambda r: (r.scores.voi, r.scores.arand))


def _run_length_fields(run_length: RunLengthScores | None) -> dict:
    if run_length is None:
        return {}
    return {
        "erl": run_length.erl,
        "max_erl": run_length.max_erl,
        "n_mergers": run_length.n_mergers,
        "n_splits": run_length.n_splits,
    }


def _store_scores(config: SegmentConfig, evaluation: Evaluation) -> None:
    """One document per threshold and region: `region` "roi" (the reported one, keyed
    by the dataset) or "validation_roi" (keyed `<dataset>@validation_roi`); `best` marks
    the chosen threshold, `selected_on`/`selection_roi` name the region that chose it."""
    db = tracking_database()
    commit = git_commit()
    regions = [("roi", config.roi, evaluation.scores, "")]
    if evaluation.validation:
        regions.append(("validation_roi", config.validation_roi, evaluation.validation,
                        "@validation_roi"))  # fmt: skip
    for region, roi, results, suffix in regions:
        for result in results:
            key = f"{config.output_container}/{result.dataset}{suffix}"
            store_score(db, "segmentation", key, {
                "container": config.output_container,
                "dataset": result.dataset,
                "graph": f"{config.db_name}.{config.graph}",
                "threshold": result.threshold,
                "voi_split": result.scores.voi_split,
                "voi_merge": result.scores.voi_merge,
                "voi": result.scores.voi,
                "arand": result.scores.arand,
                "voxels": result.scores.voxels,
                **_run_length_fields(result.run_length),
                "region": region,
                "roi": roi,
                "best": result.threshold == evaluation.chosen.threshold,
                "chosen_threshold": evaluation.chosen.threshold,
                "selected_on": evaluation.selected_on,
                "selection_roi": evaluation.selection_roi,
                "git_commit": commit,
            })  # fmt: skip


# ---------------------------------------------------------------- is the model trained?


def fragment_fill(config: SegmentConfig) -> float | None:
    """The share of the volume that the largest fragment of each block covers: near 1
    when every block is one fragment (affinities that separate nothing)."""
    path = dataset_path(config, config.fragments_dataset)
    if not dataset_exists(path):
        return None
    frags = open_ds(path, mode="r")
    voxel_size = np.array(frags.voxel_size, dtype=np.float64)
    roi = work_roi(config, frags.roi, str(path))
    nodes = open_graph(config).read_node_columns(roi, read_attrs=["position", "size"])
    if len(nodes) == 0:
        return None
    positions = np.array(
        [(np.nan,) * 3 if p is None else p for p in nodes["position"].tolist()], dtype=float
    ).reshape(len(nodes), 3)
    sizes = np.array([0 if v is None else v for v in nodes["size"].tolist()], dtype=float)
    known = np.isfinite(positions).all(axis=1)
    block = np.array(config.block_size, dtype=float) * voxel_size
    index = np.floor((positions[known] - np.array(roi.offset)) / block).astype(np.int64)
    _, inverse = np.unique(index, axis=0, return_inverse=True)
    largest = np.zeros(inverse.max() + 1 if inverse.size else 0)
    np.maximum.at(largest, inverse.ravel(), sizes[known])
    total = float(np.prod(np.array(roi.shape) / voxel_size))
    return float(largest.sum() / total)


def segment_counts(config: SegmentConfig, base: Path) -> dict[float, int]:
    """Segments per threshold, from the lookup tables `extract` saved."""
    counts = {}
    for threshold in config.thresholds:
        lut = LUT(path=base / "luts" / f"{config.graph}_{threshold_name(threshold)}.npz")
        if lut.path.exists():
            counts[threshold] = int(np.unique(lut.load()[1]).size)
    return counts


def untrained_warning(
    config: SegmentConfig, fill: float | None, counts: dict[float, int]
) -> str | None:
    """One line when the fragments or the segmentations look like an untrained model's."""
    signs = []
    if fill is not None and fill >= FILLED_BLOCKS:
        signs.append(f"the largest fragment of each block covers {fill:.0%} of the volume")
    if len(counts) >= 2 and all(n == 1 for n in counts.values()):
        signs.append(f"all {len(counts)} thresholds give one segment")
    if not signs:
        return None
    if config.checkpoint is None:
        source = "no checkpoint configured: check how the affinities were made"
    else:
        found = re.search(r"model_checkpoint_(\d+)$", Path(config.checkpoint).name)
        source = f"checkpoint {Path(config.checkpoint).name}" + (
            f", iteration {int(found.group(1))}" if found else ""
        )
    return (
        f"warning: {' and '.join(signs)}: the affinities separate no cells, likely an "
        f"untrained or under-trained model ({source}); segmentation networks need tens "
        "to hundreds of thousands of iterations (the LSD paper trains for several "
        "hundred thousand), not a few thousand"
    )


# ---------------------------------------------------------------- the command's entry point


@dataclass
class SegmentReport:
    steps: list[StepResult]
    evaluation: Evaluation | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def scores(self) -> list[ThresholdScore]:
        return self.evaluation.scores if self.evaluation else []

    @property
    def best(self) -> ThresholdScore | None:
        return self.evaluation.chosen if self.evaluation else None


def predict(config: SegmentConfig, base: Path, overwrite: bool = False) -> StepResult:
    """Affinities (and LSDs) from the configured checkpoint, blockwise."""
    path = dataset_path(config, config.affs_dataset)
    if config.checkpoint is None:
        if dataset_exists(path):
            return StepResult("predict", True, f"{path} exists (no checkpoint configured)")
        raise ConnectoError(
            "no checkpoint in the segment config and no affinities yet: set `checkpoint` "
            "or run `connecto segment gt-affinities`"
        )
    from connecto.tasks.segmentation.predict import predict_blockwise

    return predict_blockwise(config, base, overwrite=overwrite)


def make_gt_affinities(
    config_path: Path, overwrite: bool = False, degradation: str | None = None, seed: int = 0
) -> SegmentReport:
    """`connecto segment gt-affinities`: perfect or degraded affinities from the labels."""
    config, _ = load_segment_config(config_path)
    report = SegmentReport([gt_affinities(config, overwrite, degradation, seed)])
    ensure_container(config)  # after the step: a refused one leaves nothing behind
    return report


def run_steps(
    config_path: Path, steps: list[str] | tuple[str, ...] = STEPS, overwrite: bool = False
) -> SegmentReport:
    """Run the named steps in order (`connecto segment run`: all of them)."""
    unknown = [s for s in steps if s not in (*STEPS, "gt-affinities")]
    if unknown:
        raise ConnectoError(f"unknown segment steps {unknown}; known: {', '.join(STEPS)}")
    config, base = load_segment_config(config_path)
    report = SegmentReport([])
    fill: float | None = None
    counts: dict[float, int] = {}
    for step in steps:
        if step == "gt-affinities":
            report.steps.append(gt_affinities(config, overwrite=overwrite))
        elif step == "predict":
            report.steps.append(predict(config, base, overwrite=overwrite))
        elif step == "fragments":
            report.steps.append(fragments(config, base, overwrite=overwrite))
            fill = fragment_fill(config)
        elif step == "agglomerate":
            report.steps.append(agglomerate(config, base, overwrite=overwrite))
        elif step == "extract":
            report.steps.append(extract(config, base, overwrite=overwrite))
            ensure_group(dataset_path(config, config.segmentation_dataset))
            counts = segment_counts(config, base)
        elif step == "evaluate":
            if config.labels_container is None and list(steps) != ["evaluate"]:
                report.steps.append(StepResult("evaluate", True, "no labels_container"))
                continue
            report.evaluation = evaluate(config)
            report.warnings.extend(report.evaluation.warnings)
            chosen = report.evaluation.chosen.threshold
            on = "validation_roi" if report.evaluation.honest else "the evaluated roi itself"
            report.steps.append(
                StepResult("evaluate", False, f"best threshold {chosen}, chosen on {on}")
            )
        ensure_container(config)  # after a step wrote into it: a refused one leaves nothing
    untrained = untrained_warning(config, fill, counts)
    if untrained is not None:
        report.warnings.insert(0, untrained)
    return report
