"""Evaluation maths on hand-computed cases, and synister's published FAFB neuron votes
reproduced from its per-synapse predictions loaded as a prediction collection."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.db.predictions import write_predictions
from connecto.tasks.synapse_classification.evaluate import (
    Scores,
    confusion_matrix,
    evaluate,
    evaluate_documents,
    save_plots,
    skeleton_votes,
    store_scores,
)
from tests.conftest import FAFB, require_shared_data

# class index order of the published export (PROVENANCE.md)
FAFB_CLASSES = ["gaba", "acetylcholine", "glutamate", "dopamine", "octopamine", "serotonin"]
A, B, C = "a", "b", "c"


def doc(synapse_id: int, skeleton_id: int, label: str | None, predicted: str) -> dict:
    probabilities = {name: float(name == predicted) for name in (A, B, C)}
    return {
        "synapse_id": synapse_id,
        "skeleton_id": skeleton_id,
        "label": label,
        "predicted": predicted,
        "probabilities": probabilities,
        "iteration": 7,
    }


def test_confusion_matrix_rows_true_columns_predicted() -> None:
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix([0, 3], [0, 0], 3)


def test_scores_hand_computed() -> None:
    # true a: 3 (2 right, 1 -> b); true b: 1 (right); true c: 4 (1 right, 3 -> a)
    cm = np.array([[2, 1, 0], [0, 1, 0], [3, 0, 1]])
    scores = Scores([A, B, C], cm)
    assert scores.precision == pytest.approx([2 / 5, 1 / 2, 1 / 1])
    assert scores.recall == pytest.approx([2 / 3, 1 / 1, 1 / 4])
    assert scores.accuracy == pytest.approx(4 / 8)
    assert scores.balanced_accuracy == pytest.approx((2 / 3 + 1 + 1 / 4) / 3)


def test_undefined_precision_and_recall_are_none() -> None:
    # class c is never present and never predicted: its recall and precision are undefined
    # and it does not count in the balanced accuracy
    scores = Scores([A, B, C], np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert scores.precision[2] is None and scores.recall[2] is None
    assert scores.balanced_accuracy == pytest.approx((1 / 2 + 1) / 2)
    assert "-" in scores.table("t")


def test_skeleton_vote_majority_ties_and_minimum() -> None:
    skeletons = [1, 1, 1, 2, 2, 3, 3, 3, 3]
    predicted = [2, 2, 0, 1, 0, 2, 1, 1, 2]
    # skeleton 1: c wins 2:1; skeleton 2: a/b tied 1:1 -> a (first); 3: b/c tied 2:2 -> b
    assert skeleton_votes(skeletons, predicted, 3) == {1: 2, 2: 0, 3: 1}
    assert skeleton_votes(skeletons, predicted, 3, min_synapses=3) == {1: 2, 3: 1}


def test_evaluate_documents_per_synapse_and_per_skeleton() -> None:
    documents = [
        doc(1, 10, A, A), doc(2, 10, A, A), doc(3, 10, A, B),  # skeleton 10 (a) -> a
        doc(4, 20, B, B),  # skeleton 20 (b) -> b, a single synapse
        doc(5, 30, C, A), doc(6, 30, C, A), doc(7, 30, C, C), doc(8, 30, C, C),  # tie -> a
        doc(9, 40, None, C),  # unknown class: not scored
    ]  # fmt: skip
    evaluation = evaluate_documents(documents, name="t")
    assert evaluation.synapse.confusion.tolist() == [[2, 1, 0], [0, 1, 0], [2, 0, 2]]
    assert evaluation.synapse.accuracy == pytest.approx(5 / 8)
    assert evaluation.skeleton.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert evaluation.skeleton.accuracy == pytest.approx(2 / 3)
    assert evaluation.skeleton.balanced_accuracy == pytest.approx(2 / 3)
    assert (evaluation.unlabelled, evaluation.iteration) == (1, 7)

    at_least_two = evaluate_documents(documents, min_synapses=2)
    assert at_least_two.skeleton.count == 2 and at_least_two.skipped_skeletons == 1
    assert at_least_two.skeleton.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert at_least_two.synapse.count == 8  # the minimum only applies to skeletons


def test_evaluate_rejects_bad_input() -> None:
    with pytest.raises(ConnectoError, match="no predictions"):
        evaluate_documents([], name="empty")
    with pytest.raises(ConnectoError, match="label 'x', not one of the classes"):
        evaluate_documents([doc(1, 1, "x", A)])
    with pytest.raises(ConnectoError, match="at least 1"):
        evaluate_documents([doc(1, 1, A, A)], min_synapses=0)


def test_plots_and_scores_document(tmp_path: Path, mongo_client: MongoClient, tracking_db: str):
    evaluation = evaluate_documents([doc(1, 1, A, A), doc(2, 1, B, A), doc(3, 2, C, C)], name="p")
    plots = save_plots(evaluation, tmp_path / "04_evaluate")
    assert [Path(p).name for p in plots] == ["p.png", "p_skeletons.png"]
    for plot in plots:
        assert Path(plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tracking = mongo_client[tracking_db]
    store_scores(tracking, "db.p", evaluation, {"split_part": "validation"})
    store_scores(tracking, "db.p", evaluation, {"split_part": "validation"})
    stored = list(tracking["scores"].find({"key": "db.p"}))
    assert len(stored) == 1
    assert stored[0]["synapse"]["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert stored[0]["synapse"]["recall"] == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert stored[0]["plots"] == plots


# ---------------------------------------------------------------- FAFB published votes


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def fafb_documents(mongo_uri: str) -> Iterator[list[dict]]:
    """The published per-synapse predictions written to the server as prediction documents
    and read back. Lean documents and no unique index: a 130k-document load is slow on the
    embedded server, and neither matters to the vote."""
    require_shared_data(FAFB)
    client: MongoClient = MongoClient(mongo_uri)
    db = client["test_fafb_predictions"]
    db.drop_collection("fafb_published")
    documents = [
        {
            "synapse_id": int(row["synapse_id"]),
            "skeleton_id": int(row["skeleton_id"]),
            "label": None,  # these neurons' transmitters are unknown
            "predicted": FAFB_CLASSES[int(row["predicted_nt"])],
        }
        for row in read_csv(FAFB / "synapse_predictions.csv")
    ]
    for start in range(0, len(documents), 20_000):
        write_predictions(db["fafb_published"], documents[start : start + 20_000])
    yield list(db["fafb_published"].find({}, {"_id": 0, "skeleton_id": 1, "predicted": 1}))
    if os.environ.get("CONNECTO_TEST_MONGO_URI"):
        # the session's own server is thrown away with its data; an external one is not
        client.drop_database("test_fafb_predictions")
    client.close()


def test_fafb_neuron_votes_match_published(fafb_documents: list[dict]) -> None:
    assert len(fafb_documents) == 130_157
    index = {name: i for i, name in enumerate(FAFB_CLASSES)}
    skeletons = [d["skeleton_id"] for d in fafb_documents]
    predicted = [index[d["predicted"]] for d in fafb_documents]
    votes = skeleton_votes(skeletons, predicted, len(FAFB_CLASSES))
    published = {
        int(r["skeleton_id"]): int(r["predicted_nt"])
        for r in read_csv(FAFB / "skeleton_predictions.csv")
    }
    assert set(votes) == set(published) and len(votes) == 2117

    counts: dict[int, np.ndarray] = {}
    for skeleton, cls in zip(skeletons, predicted, strict=True):
        counts.setdefault(skeleton, np.zeros(len(FAFB_CLASSES), int))[cls] += 1
    tied = {s for s, c in counts.items() if (c == c.max()).sum() > 1}
    untied_mismatches = [s for s in published if s not in tied and votes[s] != published[s]]
    assert untied_mismatches == []
    # the stated tie rule (first class in order wins) also gives the published labels
    assert len(tied) > 0
    assert all(votes[s] == published[s] for s in tied)


def test_evaluate_named_collections(
    tmp_path: Path, mongo_client: MongoClient, db_name: str, tracking_db: str
) -> None:
    documents = [doc(1, 1, A, A), doc(2, 1, A, B), doc(3, 2, B, B), doc(4, 3, C, C)]
    write_predictions(mongo_client[f"{db_name}_predictions"]["skeleton_x_t0_p0"], documents)
    [evaluation] = evaluate(tmp_path, ["skeleton_x_t0_p0"], db_name, out_dir=tmp_path / "out")
    assert evaluation.synapse.accuracy == pytest.approx(3 / 4)
    assert evaluation.skeleton.accuracy == pytest.approx(1.0)  # skeleton 1: a/b tie -> a
    assert (tmp_path / "out" / "skeleton_x_t0_p0.png").is_file()
    stored = mongo_client[tracking_db]["scores"].find_one({"collection": "skeleton_x_t0_p0"})
    assert stored["key"] == f"{db_name}_predictions.skeleton_x_t0_p0"
    with pytest.raises(ConnectoError, match="no predictions"):
        evaluate(tmp_path, ["absent"], db_name, out_dir=tmp_path / "out")
    with pytest.raises(ConnectoError, match="--db"):
        evaluate(tmp_path, ["skeleton_x_t0_p0"])
