"""Scoring synapse classification: confusion matrices, precision/recall, (balanced)
accuracy per synapse, and synister's neuron-level figure, the per-skeleton majority vote.

Tie rule of the vote: among the classes with the most votes, the one that comes first in
the class order wins (numpy's argmax over the vote counts). This is the rule of synister's
published FAFB neuron predictions.

Collections written by synister are scored too (`read_predictions`): their lists of
probabilities are named by the predict setup's classes (or `--synapse-types`), their
synapses' skeletons and classes come from the data database, and synapses of classes that
were not predicted (synister predicts every synapse of the split part) are not scored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.client import get_database, tracking_database
from connecto.db.predictions import OTHER_CLASS, done_query, prediction_target, read_predictions
from connecto.db.tracking import PREDICTIONS, SCORES, find_score, store_score
from connecto.experiment import EVALUATE_DIR, PREDICT_DIR, PredictSetup, TrainSetup, find_setup
from connecto.names import predictions_database_name

SCORE_KIND = "synapse-classification"
BEST_CHECKPOINT = "best-checkpoint"
METRICS = ("balanced_accuracy", "accuracy", "skeleton_accuracy", "skeleton_balanced_accuracy")


# ---------------------------------------------------------------- metrics


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], n_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    true_a = np.asarray(true, dtype=np.int64)
    pred_a = np.asarray(predicted, dtype=np.int64)
    if true_a.shape != pred_a.shape:
        raise ValueError(f"{true_a.size} true labels but {pred_a.size} predictions")
    for name, values in (("true", true_a), ("predicted", pred_a)):
        if values.size and (values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} class index out of range 0..{n_classes - 1}")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (true_a, pred_a), 1)
    return matrix


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


@dataclass
class Scores:
    """Scores of one confusion matrix (synapses or skeletons)."""

    class_names: list[str]
    confusion: np.ndarray
    precision: list[float | None] = field(init=False)
    recall: list[float | None] = field(init=False)
    accuracy: float | None = field(init=False)
    balanced_accuracy: float | None = field(init=False)

    def __post_init__(self) -> None:
        cm = self.confusion
        diagonal = np.diag(cm)
        # None where undefined (class never predicted / never present)
        self.precision = [_ratio(d, s) for d, s in zip(diagonal, cm.sum(axis=0), strict=True)]
        self.recall = [_ratio(d, s) for d, s in zip(diagonal, cm.sum(axis=1), strict=True)]
        self.accuracy = _ratio(diagonal.sum(), cm.sum())
        present = [r for r in self.recall if r is not None]
        self.balanced_accuracy = float(np.mean(present)) if present else None

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    def to_document(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "class_names": self.class_names,
            "confusion_matrix": self.confusion.tolist(),
            "precision": dict(zip(self.class_names, self.precision, strict=True)),
            "recall": dict(zip(self.class_names, self.recall, strict=True)),
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
        }

    def table(self, title: str) -> str:
        """The confusion matrix and per-class precision/recall as plain text."""
        names = self.class_names
        width = max(9, *(len(n) for n in names)) + 1
        lines = [f"{title}: {self.count} items, accuracy {_pct(self.accuracy)}, "
                 f"balanced accuracy {_pct(self.balanced_accuracy)}"]  # fmt: skip
        lines.append("true \\ predicted".ljust(width + 7) + "".join(n.rjust(width) for n in names)
                     + "recall".rjust(9))  # fmt: skip
        for i, name in enumerate(names):
            row = "".join(str(v).rjust(width) for v in self.confusion[i])
            lines.append(name.ljust(width + 7) + row + _pct(self.recall[i]).rjust(9))
        lines.append("precision".ljust(width + 7)
                     + "".join(_pct(p).rjust(width) for p in self.precision))  # fmt: skip
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def skeleton_votes(
    skeleton_ids: Sequence[int], predicted: Sequence[int], n_classes: int, min_synapses: int = 1
) -> dict[int, int]:
    """Per-skeleton majority vote over its synapses' predicted classes; ties go to the class
    first in class order. Skeletons with fewer than `min_synapses` synapses are left out."""
    counts: dict[int, np.ndarray] = {}
    for skeleton, cls in zip(skeleton_ids, predicted, strict=True):
        votes = counts.get(skeleton)
        if votes is None:
            votes = counts[skeleton] = np.zeros(n_classes, dtype=np.int64)
        votes[cls] += 1
    return {
        skeleton: int(np.argmax(votes))
        for skeleton, votes in counts.items()
        if votes.sum() >= min_synapses
    }


# ---------------------------------------------------------------- evaluation of documents


@dataclass
class Evaluation:
    """The scores of one prediction collection."""

    name: str
    synapse: Scores
    skeleton: Scores
    min_synapses: int
    unlabelled: int
    skipped_skeletons: int
    iteration: int | None = None
    plots: list[str] = field(default_factory=list)
    other_class: int = 0  # of the unlabelled: a known class that is none of the classes

    def metric(self, name: str) -> float:
        value = {
            "accuracy": self.synapse.accuracy,
            "balanced_accuracy": self.synapse.balanced_accuracy,
            "skeleton_accuracy": self.skeleton.accuracy,
            "skeleton_balanced_accuracy": self.skeleton.balanced_accuracy,
        }[name]
        return -1.0 if value is None else value

    def report(self) -> str:
        note = ""
        if self.min_synapses > 1:
            note = f" (skeletons with at least {self.min_synapses} synapses: "
            note += f"{self.skipped_skeletons} left out)"
        parts = [
            self.synapse.table(f"{self.name} — per synapse"),
            self.skeleton.table(f"{self.name} — per skeleton, majority vote{note}"),
        ]
        if self.unlabelled:
            parts.append(self.unscored_line())
        return "\n\n".join(parts)

    def unscored_line(self) -> str:
        without = self.unlabelled - self.other_class
        if not self.other_class:
            return f"{without} synapses without a known class were not scored"
        classes = ", ".join(self.synapse.class_names)
        line = f"{self.other_class} synapses had no class among the predicted classes ({classes})"
        if without:
            line += f" and {without} had no known class"
        return line + "; they were not scored"


def class_names_of(documents: Sequence[dict[str, Any]]) -> list[str]:
    """Class order of a collection: the order of the probabilities in its documents."""
    for doc in documents:
        if doc.get("probabilities"):
            return list(doc["probabilities"])
    raise ConnectoError("no prediction document has class probabilities")


def evaluate_documents(
    documents: Sequence[dict[str, Any]],
    class_names: Sequence[str] | None = None,
    min_synapses: int = 1,
    name: str = "predictions",
) -> Evaluation:
    """Score prediction documents (`label`, `predicted`, `skeleton_id`); documents without
    a label are counted as unlabelled and not scored (`other_class`: those whose class is
    known but none of the classes, marked `OTHER_CLASS` by `read_predictions`)."""
    if min_synapses < 1:
        raise ConnectoError(f"--min-synapses {min_synapses}: must be at least 1")
    if not documents:
        raise ConnectoError(f"{name}: no predictions to evaluate")
    names = list(class_names) if class_names is not None else class_names_of(documents)
    index = {n: i for i, n in enumerate(names)}
    true: list[int] = []
    pred: list[int] = []
    skeletons: list[int] = []
    for doc in documents:
        label = doc.get("label")
        if label is None:
            continue
        for key in ("label", "predicted"):
            if doc[key] not in index:
                raise ConnectoError(
                    f"{name}: synapse {doc.get('synapse_id')} has {key} {doc[key]!r}, "
                    f"not one of the classes {names}"
                )
        true.append(index[label])
        pred.append(index[doc["predicted"]])
        skeletons.append(int(doc["skeleton_id"]))
    n = len(names)
    voted = skeleton_votes(skeletons, pred, n, min_synapses)
    # a skeleton's true class is its synapses' class (one per skeleton by construction)
    truth = skeleton_votes(skeletons, true, n)
    skeleton_ids = sorted(voted)
    return Evaluation(
        name=name,
        synapse=Scores(names, confusion_matrix(true, pred, n)),
        skeleton=Scores(
            names,
            confusion_matrix([truth[s] for s in skeleton_ids], [voted[s] for s in skeleton_ids], n),
        ),
        min_synapses=min_synapses,
        unlabelled=len(documents) - len(true),
        skipped_skeletons=len(truth) - len(voted),
        iteration=next((d.get("iteration") for d in documents if "iteration" in d), None),
        other_class=sum(1 for d in documents if d.get("label") is None and d.get(OTHER_CLASS)),
    )


# ---------------------------------------------------------------- plots and storage


def plot_confusion_matrix(scores: Scores, title: str, path: Path) -> Path:
    """A PNG of the confusion matrix: colour = fraction of the true class, text = counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = scores.confusion
    rows = cm.sum(axis=1, keepdims=True)
    fractions = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    n = len(scores.class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    image = ax.imshow(fractions, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    ax.set_xticks(range(n), scores.class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), scores.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if fractions[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_title(f"{title}\naccuracy {_pct(scores.accuracy)}, "
                 f"balanced {_pct(scores.balanced_accuracy)}", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_plots(evaluation: Evaluation, out_dir: Path) -> list[str]:
    synapse = plot_confusion_matrix(
        evaluation.synapse, f"{evaluation.name} per synapse", out_dir / f"{evaluation.name}.png"
    )
    skeleton = plot_confusion_matrix(
        evaluation.skeleton,
        f"{evaluation.name} per skeleton",
        out_dir / f"{evaluation.name}_skeletons.png",
    )
    evaluation.plots = [str(synapse), str(skeleton)]
    return evaluation.plots


def store_scores(
    tracking: Database, key: str, evaluation: Evaluation, context: dict[str, Any]
) -> dict[str, Any]:
    """Upsert the `scores` document of a prediction collection (kind, key unique)."""
    return store_score(tracking, SCORE_KIND, key, {
        **context,
        "iteration": evaluation.iteration,
        "min_synapses": evaluation.min_synapses,
        "unlabelled": evaluation.unlabelled,
        "other_class": evaluation.other_class,
        "synapse": evaluation.synapse.to_document(),
        "skeleton": evaluation.skeleton.to_document(),
        "plots": evaluation.plots,
    }, replace=True)  # fmt: skip


# ---------------------------------------------------------------- what to evaluate


@dataclass(frozen=True)
class Target:
    """A prediction collection and, when known, the predict setup that wrote it."""

    database: str
    collection: str
    out_dir: Path
    setup: PredictSetup | None = None

    @property
    def key(self) -> str:
        return f"{self.database}.{self.collection}"


def _setup_target(setup: PredictSetup) -> Target:
    database, collection = prediction_target(setup.predict_config())
    return Target(database, collection, setup.train_setup.evaluate_dir, setup)


def find_targets(
    path: Path,
    collections: Sequence[str] = (),
    database: str | None = None,
    split: str | None = None,
    out_dir: Path | None = None,
) -> list[Target]:
    """Named collections of `database` (a data database or its `_predictions`), or else the
    predict setup at `path`, or every predict setup of the train setup at `path` (only
    those of the `split` part if given)."""
    if collections:
        if not database:
            raise ConnectoError("give --db DATABASE with collection names")
        if not database.endswith("_predictions"):
            database = predictions_database_name(database)
        return [Target(database, c, out_dir or Path.cwd() / EVALUATE_DIR) for c in collections]
    setup = find_setup(path)
    setups = [setup] if isinstance(setup, PredictSetup) else setup.predict_setups()
    if split is not None:
        setups = [s for s in setups if s.predict_config().split_part == split]
    if not setups:
        where = setup.path
        raise ConnectoError(
            f"{where}: no predict setups{f' for the {split} part' if split else ''}; "
            "run `connecto predict --split ...` first"
        )
    targets = [_setup_target(s) for s in setups]
    return [replace(t, out_dir=out_dir) for t in targets] if out_dir else targets


def _run_state(tracking: Database, target: Target) -> dict[str, Any] | None:
    if target.setup is None:
        return None
    return tracking[PREDICTIONS].find_one({"setup_dir": str(target.setup.path)})


def _predicted_by_synister(tracking: Database, target: Target) -> bool:
    """Whether the collection of a predict setup without a tracked run holds predictions
    that no tracked run claims: synister's own predict scripts wrote them. (A collection
    a tracked run claims belongs to that run's setup, not to this one.)"""
    claimed = tracking[PREDICTIONS].find_one(
        {"predictions_db": target.database, "collection": target.collection}, {"_id": 1}
    )
    if claimed is not None:
        return False
    collection = get_database(target.database)[target.collection]
    return collection.find_one(done_query(), {"_id": 1}) is not None


def class_names_for(
    target: Target, run: dict[str, Any], synapse_types: Sequence[str] | None = None
) -> list[str] | None:
    """The class order of a collection: `synapse_types` when given (`--synapse-types`),
    else the predict setup's config, else its tracked run's; None when unknown."""
    if synapse_types:
        return check_synapse_types(synapse_types)
    if target.setup is not None:
        return list(target.setup.predict_config().class_names)
    return run.get("class_names")


def check_synapse_types(synapse_types: Sequence[str]) -> list[str]:
    names = [n.strip() for n in synapse_types]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise ConnectoError(
            f"--synapse-types {','.join(synapse_types)}: expected at least two distinct class "
            "names, comma-separated, in the order of the predictions (synapse_types)"
        )
    return names


def evaluate_target(
    target: Target,
    tracking: Database,
    min_synapses: int = 1,
    plots: bool = True,
    synapse_types: Sequence[str] | None = None,
) -> Evaluation:
    """Score one collection, save its plots, store its `scores` document."""
    run = _run_state(tracking, target) or {}
    names = class_names_for(target, run, synapse_types)
    documents = read_predictions(get_database(target.database)[target.collection], names)
    if not documents:
        raise ConnectoError(f"{target.key}: no predictions (run `connecto predict` first)")
    evaluation = evaluate_documents(documents, names, min_synapses, target.collection)
    if plots:
        save_plots(evaluation, target.out_dir)
    context: dict[str, Any] = {"database": target.database, "collection": target.collection}
    if target.setup is not None:
        config = target.setup.predict_config()
        context |= {
            "setup_dir": str(target.setup.path),
            "experiment": target.setup.experiment,
            "train_id": target.setup.train_id,
            "predict_id": target.setup.predict_id,
            "split_name": config.split_name,
            "split_part": config.split_part,
            "complete": run.get("state") == "done",
        }
    store_scores(tracking, target.key, evaluation, context)
    return evaluation


def evaluate(
    path: Path,
    collections: Sequence[str] = (),
    database: str | None = None,
    split: str | None = None,
    min_synapses: int = 1,
    out_dir: Path | None = None,
    plots: bool = True,
    synapse_types: Sequence[str] | None = None,
) -> list[Evaluation]:
    """`connecto evaluate`: score each target (see `find_targets`); predict setups that
    have not been predicted yet are skipped (those synister predicted are scored).
    `synapse_types` names the classes of the predictions' lists (synister's collections),
    overriding the setups' classes."""
    if synapse_types:
        synapse_types = check_synapse_types(synapse_types)
    tracking = tracking_database()
    evaluations = []
    for target in find_targets(path, collections, database, split, out_dir):
        untracked = target.setup is not None and _run_state(tracking, target) is None
        if untracked and not _predicted_by_synister(tracking, target):
            continue  # prepared but never predicted
        evaluations.append(evaluate_target(target, tracking, min_synapses, plots, synapse_types))
    if not evaluations:
        raise ConnectoError(f"{path}: nothing predicted yet; run `connecto predict` first")
    return evaluations


@dataclass(frozen=True)
class BestCheckpoint:
    metric: str
    split_part: str
    evaluations: list[tuple[int, Evaluation]]  # (iteration, scores), by iteration
    iteration: int
    score: float
    train_dir: Path

    @property
    def test_command(self) -> str:
        return f"cd {self.train_dir} && connecto predict --split test --iterations {self.iteration}"

    def report(self) -> str:
        lines = [f"checkpoints on the {self.split_part} part, by {self.metric}:"]
        for iteration, evaluation in self.evaluations:
            mark = "  <- best" if iteration == self.iteration else ""
            lines.append(
                f"  iteration {iteration:>8}: accuracy {_pct(evaluation.synapse.accuracy)}, "
                f"balanced {_pct(evaluation.synapse.balanced_accuracy)}, "
                f"skeletons {_pct(evaluation.skeleton.accuracy)}{mark}"
            )
        lines.append(f"best checkpoint: iteration {self.iteration} ({self.metric} "
                     f"{_pct(self.score)}); predict the test split with:")  # fmt: skip
        lines.append(f"  {self.test_command}")
        return "\n".join(lines)


def select_best(
    path: Path,
    split: str = "validation",
    metric: str = "balanced_accuracy",
    min_synapses: int = 1,
    plots: bool = True,
) -> BestCheckpoint:
    """Evaluate every completed prediction of the train setup at `path` on `split` and
    name the best checkpoint (ties: the earlier iteration)."""
    if metric not in METRICS:
        raise ConnectoError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    setup = find_setup(path)
    train = setup if isinstance(setup, TrainSetup) else setup.train_setup
    tracking = tracking_database()
    scored: list[tuple[int, Evaluation]] = []
    for target in find_targets(train.path, split=split):
        run = _run_state(tracking, target)
        if run is None or run.get("state") != "done":
            continue  # not predicted, or incomplete: not comparable
        evaluation = evaluate_target(target, tracking, min_synapses, plots)
        scored.append((run["iteration"], evaluation))
    if not scored:
        raise ConnectoError(
            f"{train.path}: no complete {split} predictions to compare; run "
            f"`connecto predict --split {split} --all-checkpoints` first"
        )
    scored.sort(key=lambda item: item[0])
    iteration, best = max(scored, key=lambda item: (item[1].metric(metric), -item[0]))
    result = BestCheckpoint(metric, split, scored, iteration, best.metric(metric), train.path)
    store_score(tracking, BEST_CHECKPOINT, f"{train.path}:{split}", {
        "setup_dir": str(train.path), "experiment": train.experiment,
        "train_id": train.train_id, "metric": metric, "split_part": split,
        "iteration": iteration, "score": result.score, "compared": [it for it, _ in scored],
    }, replace=True)  # fmt: skip
    return result


def stored_best(tracking: Database, train_dir: Path, split: str = "validation") -> int:
    """The iteration `select_best` named last for this train setup and split part."""
    found = find_score(tracking, BEST_CHECKPOINT, f"{train_dir}:{split}")
    if found is None:
        raise ConnectoError(f"{train_dir}: no best checkpoint selected on the {split} part yet")
    return int(found["iteration"])


def stored_scores(tracking: Database, train_dir: Path, split: str) -> list[dict[str, Any]]:
    """The `scores` documents of a train setup's predictions of one split part."""
    prefix = f"{Path(train_dir).parents[1] / PREDICT_DIR}/setup_t{find_setup(train_dir).train_id}_p"
    query = {
        "kind": SCORE_KIND,
        "split_part": split,
        "setup_dir": {"$regex": f"^{re.escape(prefix)}"},
    }
    return list(tracking[SCORES].find(query, sort=[("iteration", 1)]))
