"""`connecto embed probe`: a linear probe on frozen embeddings.

A logistic regression (scikit-learn, on standardised embeddings, classes weighted by
their inverse frequency) learns a labelled field (`neurotransmitter` by default; any
field `explore.synapse_fields` reads) from the embedded synapses of a split's train part
(optionally only `labels_per_class` of each class, drawn with `seed`: the few-labels
setting), and predicts the validation and test parts. Each part is scored exactly as
`connecto evaluate` scores the classifier (`synapse_classification.evaluate`): confusion
matrices per synapse and per skeleton (majority vote), their PNGs, and a `scores`
document in the tracking database whose key names the collection, field, split, part,
label budget and seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from connecto import ConnectoError
from connecto.db.client import tracking_database
from connecto.db.schema import SYNAPSES
from connecto.db.synapse_rows import PARTS
from connecto.tasks.synapse_classification.evaluate import (
    Evaluation,
    evaluate_documents,
    save_plots,
    store_scores,
)
from connecto.tasks.synapse_contrastive.explore import (
    NONE,
    data_database,
    embeddings_collection,
    load_embeddings,
    synapse_fields,
)

EVALUATED_PARTS = ("validation", "test")
METHOD = "linear-probe"


@dataclass
class ProbeResult:
    """The probe's training set and its scores per evaluated part."""

    collection: str
    field: str
    split_name: str
    class_names: list[str]
    trained_on: dict[str, int]  # class -> training synapses
    evaluations: dict[str, Evaluation] = field(default_factory=dict)  # part -> scores
    keys: dict[str, str] = field(default_factory=dict)  # part -> scores document key

    def report(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.trained_on.items())
        lines = [f"linear probe of {self.field} on {self.collection}, trained on {counts}"]
        lines += [evaluation.report() for evaluation in self.evaluations.values()]
        return "\n\n".join(lines)


def few_labels(labels: Sequence[str], per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices into `labels` of at most `per_class` items of each class, drawn with
    `seed` (all of them when `per_class` is None), ascending."""
    if per_class is None:
        return np.arange(len(labels))
    if per_class < 1:
        raise ConnectoError(f"--labels-per-class {per_class}: must be at least 1")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    values = np.asarray(labels, dtype=object)
    for name in sorted(set(labels)):
        members = np.flatnonzero(values == name)
        chosen += rng.choice(members, size=min(per_class, len(members)), replace=False).tolist()
    return np.array(sorted(chosen), dtype=np.int64)


def fit_probe(features: np.ndarray, labels: Sequence[str], seed: int = 0) -> Any:
    """A fitted scikit-learn pipeline: standardisation, then a balanced logistic
    regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    return make_pipeline(StandardScaler(), classifier).fit(features, list(labels))


def linear_probe(
    split_name: str,
    label_field: str = "neurotransmitter",
    labels_per_class: int | None = None,
    seed: int = 0,
    parts: Sequence[str] = EVALUATED_PARTS,
    database: str | None = None,
    collection: str | None = None,
    out_dir: Path | None = None,
    plots: bool = True,
    min_synapses: int = 1,
) -> ProbeResult:
    """Train on the embedded synapses (of `collection` of `database`; default: see
    `explore.resolve_collection`) of the train part of `split_name` whose `label_field`
    is known, score `parts`; see the module's docstring. Plots go to `out_dir` (default:
    the current directory)."""
    for part in parts:
        if part not in PARTS or part == "train":
            raise ConnectoError(f"--part {part!r}: expected validation or test")
    source = embeddings_collection(database, collection)
    data = data_database(source)
    key = f"splits.{split_name}"
    found = data[SYNAPSES].find({key: {"$exists": True}}, {"_id": 0, "synapse_id": 1, key: 1})
    split = {d["synapse_id"]: d["splits"][split_name] for d in found}
    if not split:
        raise ConnectoError(f"database {data.name} has no split {split_name!r}")
    ids, embeddings = load_embeddings(source, sorted(split))
    values = synapse_fields(data, ids, [label_field, "skeleton_id"])
    labels = np.asarray([str(v) for v in values[label_field]], dtype=object)
    part_of = np.asarray([split[int(i)] for i in ids], dtype=object)
    known = labels != NONE

    train = np.flatnonzero((part_of == "train") & known)
    train = train[few_labels(labels[train].tolist(), labels_per_class, seed)]
    names = sorted(set(labels[train].tolist()))
    if len(names) < 2:
        raise ConnectoError(
            f"{source.full_name}: the train part of split {split_name!r} has "
            f"{len(train)} embedded synapse(s) with a known {label_field} "
            f"({', '.join(names) or 'none'}); a probe needs two classes"
        )
    model = fit_probe(embeddings[train], labels[train].tolist(), seed)
    trained_on = {name: int((labels[train] == name).sum()) for name in names}
    result = ProbeResult(source.full_name, label_field, split_name, names, trained_on)
    tracking = tracking_database()
    budget = f"n{labels_per_class}" if labels_per_class is not None else "all"
    stem = f"{source.name}_probe_{label_field.replace('.', '-')}_{split_name}"
    for part in parts:
        members = np.flatnonzero(part_of == part)
        if not len(members):
            continue
        predicted = model.predict(embeddings[members])
        documents = [
            {
                "synapse_id": int(ids[i]),
                "skeleton_id": int(values["skeleton_id"][i]),
                # classes the probe never saw are not scored, like evaluate's other classes
                "label": labels[i] if labels[i] in trained_on else None,
                "predicted": str(p),
            }
            for i, p in zip(members, predicted, strict=True)
        ]
        evaluation = evaluate_documents(documents, names, min_synapses, f"{stem}_{part}_{budget}")
        if plots:
            save_plots(evaluation, Path(out_dir) if out_dir is not None else Path.cwd())
        score_key = f"{source.full_name}:{METHOD}:{label_field}:{split_name}:{part}:{budget}:{seed}"
        store_scores(tracking, score_key, evaluation, {
            "method": METHOD, "database": source.database.name, "collection": source.name,
            "field": label_field, "split_name": split_name, "split_part": part,
            "labels_per_class": labels_per_class, "seed": seed, "trained_on": trained_on,
            "complete": True,
        })  # fmt: skip
        result.evaluations[part] = evaluation
        result.keys[part] = score_key
    if not result.evaluations:
        raise ConnectoError(
            f"{source.full_name}: no embedded synapses in the {' or '.join(parts)} part of "
            f"split {split_name!r}"
        )
    return result
