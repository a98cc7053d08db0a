"""Detection metrics: precision, recall and F1 of detected synapses against the ground
truth within a distance tolerance (nm), a PR curve over detection score thresholds, the
best-F1 threshold, and the share of matched detections assigned to the right neurons.

Matching is Hungarian (scipy's linear_sum_assignment): the most detection-truth pairs
within the tolerance, and among those the smallest total distance. Greedy matching
(closest pairs first) is kept for comparison; it can match fewer pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from connecto import ConnectoError
from connecto.tasks.synapse_detection.detect import (
    Detections,
    GroundTruth,
    assign_neurons,
    find_detections,
    probabilities,
)

SCORE_KIND = "synapse-detection"
# how a curve's thresholds act: detections made anew per threshold, or one set filtered
COMPONENT_SWEEP = "components per threshold"
SCORE_SWEEP = "detections filtered by score"
# up to 0.99: a confident model's synapses separate only near the top
DEFAULT_THRESHOLDS = (*(float(round(t, 2)) for t in np.arange(0.05, 1.0, 0.05)), 0.97, 0.99)


def match_points(
    detected: np.ndarray, truth: np.ndarray, tolerance_nm: float, method: str = "hungarian"
) -> list[tuple[int, int]]:  # fmt: skip
    """Pairs (detection index, truth index) at most `tolerance_nm` apart, each point in
    at most one pair."""
    detected = np.asarray(detected, float).reshape(-1, 3)
    truth = np.asarray(truth, float).reshape(-1, 3)
    if len(detected) == 0 or len(truth) == 0:
        return []
    distance = cdist(detected, truth)
    if method == "greedy":
        pairs, used_d, used_t = [], set(), set()
        for flat in np.argsort(distance, axis=None, kind="stable"):
            i, j = np.unravel_index(flat, distance.shape)
            if distance[i, j] > tolerance_nm:
                break
            if i not in used_d and j not in used_t:
                pairs.append((int(i), int(j)))
                used_d.add(i)
                used_t.add(j)
        return sorted(pairs)
    if method != "hungarian":
        raise ConnectoError(f"matching {method!r}: expected hungarian or greedy")
    feasible = distance <= tolerance_nm
    # an out-of-tolerance pair costs more than any set of in-tolerance pairs: the
    # assignment first maximises the matched pairs, then minimises their distance
    cost = np.where(feasible, distance, (min(distance.shape) + 1) * (tolerance_nm + 1))
    rows, cols = linear_sum_assignment(cost)
    return sorted((int(i), int(j)) for i, j in zip(rows, cols, strict=True) if feasible[i, j])


@dataclass(frozen=True)
class DetectionScores:
    """Counts and rates of one matching."""

    true_positives: int
    false_positives: int
    false_negatives: int
    matches: list[tuple[int, int]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def score_detections(
    detected: np.ndarray, truth: np.ndarray, tolerance_nm: float, method: str = "hungarian"
) -> DetectionScores:  # fmt: skip
    matches = match_points(detected, truth, tolerance_nm, method)
    tp = len(matches)
    return DetectionScores(tp, len(detected) - tp, len(truth) - tp, matches)


def pair_fractions(detections: Detections, truth: GroundTruth,
                   matches: list[tuple[int, int]]) -> dict[str, float | None]:  # fmt: skip
    """Of the matched detections, the share assigned to the right (pre, post) neurons, and
    to the right pair in either order; None without matches."""
    if not matches:
        return {"correct_pair_fraction": None, "correct_unordered_pair_fraction": None}
    ordered = unordered = 0
    for i, j in matches:
        found = (int(detections.pre[i]), int(detections.post[i]))
        wanted = (int(truth.pre[j]), int(truth.post[j]))
        ordered += found == wanted
        unordered += set(found) == set(wanted)
    return {
        "correct_pair_fraction": ordered / len(matches),
        "correct_unordered_pair_fraction": unordered / len(matches),
    }


def pr_curve(
    detections: Detections, truth: GroundTruth, tolerance_nm: float,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> list[dict[str, Any]]:  # fmt: skip
    """Per score threshold: detections, TP, FP, FN, precision, recall, F1, pair fractions."""
    curve = []
    for threshold in thresholds:
        kept = detections.above(threshold)
        scores = score_detections(kept.centres, truth.centres, tolerance_nm)
        curve.append({
            "threshold": float(threshold), "detections": len(kept),
            "true_positives": scores.true_positives, "false_positives": scores.false_positives,
            "false_negatives": scores.false_negatives, "precision": scores.precision,
            "recall": scores.recall, "f1": scores.f1,
            **pair_fractions(kept, truth, scores.matches),
        })  # fmt: skip
    return curve


def sweep_curve(
    probability: np.ndarray, voxel_size: Sequence[int], offset: Sequence[int],
    truth: GroundTruth, tolerance_nm: float, thresholds: Sequence[float],
    min_voxels: int = 1, score: str = "max", segmentation: Array | None = None,
    markers: Array | None = None, assign_radius_nm: float = 80.0,
    contour: np.ndarray | None = None, contour_threshold: float = 0.5,
) -> list[dict[str, Any]]:  # fmt: skip
    """The PR curve of detections made anew at each threshold: connected components of
    `probability` (z, y, x in [0, 1] at `offset`) above it, assigned to neurons when a
    `segmentation` is given. Unlike filtering one set of detections by score, a lower
    threshold here can also merge nearby synapses, as it would in use; with `contour`
    they are split along it."""
    curve = []
    for threshold in thresholds:
        found = find_detections(probability, voxel_size, offset, threshold, min_voxels, score,
                                contour, contour_threshold)  # fmt: skip
        if segmentation is not None:
            found = assign_neurons(found, segmentation, markers, assign_radius_nm)
        point = pr_curve(found, truth, tolerance_nm, [0.0])[0]
        curve.append({**point, "threshold": float(threshold)})
    return curve


def best_point(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The curve point of the highest F1 (the lowest threshold among ties)."""
    return max(curve, key=lambda point: (point["f1"], -point["threshold"]))


def plot_pr_curve(curve: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """The precision-recall curve as a PNG, the best-F1 point marked."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    best = best_point(curve)
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([p["recall"] for p in curve], [p["precision"] for p in curve], "o-", ms=3)
    axes.plot([best["recall"]], [best["precision"]], "r*", ms=12,
              label=f"best F1 {best['f1']:.3f} at {best['threshold']:.2f}")  # fmt: skip
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
             title=title or "synapse detection")  # fmt: skip
    axes.legend(loc="lower left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class DetectionEvaluation:
    """The evaluation of one detection collection."""

    collection: str
    tolerance_nm: float
    truth: int
    curve: list[dict[str, Any]]
    plot: Path | None
    sweep: str = SCORE_SWEEP

    @property
    def best(self) -> dict[str, Any]:
        return best_point(self.curve)

    def report(self) -> str:
        b = self.best
        pairs = b["correct_pair_fraction"]
        pair_text = "n/a" if pairs is None else f"{pairs:.3f}"
        return (
            f"{self.collection}: {self.truth} true synapses, tolerance {self.tolerance_nm:g} nm"
            f" (Hungarian matching; {self.sweep})\n  best F1 {b['f1']:.3f} at threshold "
            f"{b['threshold']:.2f}: "
            f"precision {b['precision']:.3f}, recall {b['recall']:.3f} ({b['detections']} "
            f"detections, {b['true_positives']} matched)\n  matched detections on the right "
            f"(pre, post) neurons: {pair_text}"
            + (f"\n  PR curve: {self.plot}" if self.plot else "")
        )

    def score_fields(self) -> dict[str, Any]:
        b = self.best
        return {
            "tolerance_nm": self.tolerance_nm, "matching": "hungarian", "truth": self.truth,
            "thresholds": self.sweep,
            "best_threshold": b["threshold"], "precision": b["precision"], "recall": b["recall"],
            "f1": b["f1"], "correct_pair_fraction": b["correct_pair_fraction"],
            "correct_unordered_pair_fraction": b["correct_unordered_pair_fraction"],
            "curve": self.curve, "plot": str(self.plot) if self.plot else None,
        }  # fmt: skip


def finish_evaluation(
    curve: list[dict[str, Any]], truth: int, tolerance_nm: float, name: str,
    plot_dir: Path | None, sweep: str,
) -> DetectionEvaluation:  # fmt: skip
    """The evaluation of a computed curve, with its PNG under `plot_dir` (`<name>_pr.png`)."""
    plot = None
    if plot_dir is not None:
        plot = plot_pr_curve(curve, Path(plot_dir) / f"{name}_pr.png", name)
    return DetectionEvaluation(name, tolerance_nm, truth, curve, plot, sweep)


def evaluate_detections(
    detections: Detections, truth: GroundTruth, tolerance_nm: float, name: str,
    roi: Roi | None = None, plot_dir: Path | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> DetectionEvaluation:  # fmt: skip
    """PR curve of `detections` filtered by score against `truth` (inside `roi` when
    given), its PNG under `plot_dir` (`<name>_pr.png`)."""
    _check_tolerance(tolerance_nm)
    if roi is not None:
        truth = truth.inside(roi)
    curve = pr_curve(detections, truth, tolerance_nm, thresholds)
    return finish_evaluation(curve, len(truth.centres), tolerance_nm, name, plot_dir, SCORE_SWEEP)


def evaluate_probability(
    config: Any, probability: Array, roi: Roi, truth: GroundTruth, tolerance_nm: float,
    name: str, plot_dir: Path | None = None, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> DetectionEvaluation:  # fmt: skip
    """PR curve of detections made anew at each threshold from the mask channel of a
    `synapse_probability` prediction over `roi`, assigned to neurons of the config's
    segmentation (read once, in memory, around `roi`)."""
    from connecto.tasks.synapse_detection.predict import assignment_arrays

    _check_tolerance(tolerance_nm)
    truth = truth.inside(roi)
    mask, contour = probabilities(probability, roi)
    voxel_size = Coordinate(probability.voxel_size)
    segmentation, markers = assignment_arrays(config, roi)
    curve = sweep_curve(
        mask, voxel_size, roi.offset, truth, tolerance_nm, thresholds,
        config.min_detection_voxels, config.detection_score, segmentation, markers,
        config.assign_radius_nm, contour if config.split_by_contour else None,
        config.contour_threshold,
    )  # fmt: skip
    return finish_evaluation(curve, len(truth.centres), tolerance_nm, name, plot_dir,
                             COMPONENT_SWEEP)  # fmt: skip


def _check_tolerance(tolerance_nm: float) -> None:
    if tolerance_nm <= 0:
        raise ConnectoError(f"--tolerance {tolerance_nm}: expected a distance > 0 nm")


def evaluate_in_setup(
    path: Path, tolerance_nm: float, collections: Sequence[str] = (), store: bool = True,
    thresholds: Sequence[float] | None = None,
) -> list[DetectionEvaluation]:  # fmt: skip
    """`connecto detections evaluate`: every detection collection of the synapse-detection
    train setup at (or above) `path` (or the named ones), against the setup's ground truth
    within each prediction's ROI; PNGs under the experiment's 04_evaluate/, scores stored
    (kind `synapse-detection`, key `<db>.<collection>`)."""
    from connecto.db.client import get_database, tracking_database
    from connecto.db.tracking import store_score
    from connecto.experiment import PredictSetup, find_setup
    from connecto.tasks.synapse_detection.detect import read_detections, read_ground_truth
    from connecto.tasks.synapse_detection.predict import collection_prefix

    setup = find_setup(path)
    train = setup.train_setup if isinstance(setup, PredictSetup) else setup
    config = train.train_config()
    if getattr(config, "task", None) != SCORE_KIND:
        raise ConnectoError(f"{train.path}: not a synapse-detection setup (task {config.task!r})")
    db = get_database(config.detections_database)
    prefix = collection_prefix(train)
    names = list(collections) or sorted(
        c for c in db.list_collection_names() if c.startswith(prefix)
    )
    if not names:
        raise ConnectoError(
            f"{train.path}: no detections in database {db.name!r} (collections {prefix}*); "
            "run `connecto predict --split validation` first"
        )
    volume = config.synapses_volume or str(Path(config.container).resolve())
    truth = read_ground_truth(get_database(config.synapses_db), volume)
    results = []
    for name in names:
        detections, source = read_detections(db, name)
        roi = Roi(*source["roi"]) if source.get("roi") else None
        prediction = Path(source.get("prediction") or "/nonexistent")
        if roi is not None and prediction.exists():  # the sweep needs the probabilities
            probability = open_ds(str(prediction), mode="r")
            chosen = thresholds or DEFAULT_THRESHOLDS
            result = evaluate_probability(config, probability, roi, truth, tolerance_nm, name,
                                          train.evaluate_dir, chosen)  # fmt: skip
        else:
            chosen = thresholds or [t for t in DEFAULT_THRESHOLDS
                                    if t >= source.get("detection_threshold", 0)]  # fmt: skip
            result = evaluate_detections(detections, truth, tolerance_nm, name, roi,
                                         train.evaluate_dir, chosen)  # fmt: skip
        if store:
            fields = {**result.score_fields(), "source": source, "database": db.name}
            store_score(tracking_database(), SCORE_KIND, f"{db.name}.{name}", fields,
                        replace=True)  # fmt: skip
        results.append(result)
    return results
