"""Evaluation maths on hand-computed cases, synister's published FAFB neuron votes
reproduced from its per-synapse predictions loaded as a prediction collection, collections
written by synister scored like connecto's, and a predict setup numbered by iteration."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.config import write_config
from connecto.data.synthetic import synthesize_synapses
from connecto.db.predictions import write_predictions
from connecto.experiment import prepare_training
from connecto.tasks.synapse_classification.evaluate import (
    Scores,
    confusion_matrix,
    evaluate,
    evaluate_documents,
    save_plots,
    skeleton_votes,
    store_scores,
)
from connecto.tasks.synapse_classification.model import build_vgg3d
from connecto.tasks.synapse_classification.predict import run_prediction
from connecto.tasks.synapse_classification.setups import prepare_prediction
from tests.conftest import FAFB, require_shared_data, run_connecto
from tests.tasks.synapse_classification.test_predict import SMALL_MODEL

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


# ---------------------------------------------------------------- synister's collections

CLASSES = ["gaba", "acetylcholine", "glutamate"]
# skeletons' known transmitters as synister imports them: one predicted class, a class that
# was not predicted, none (an empty list, or null as connecto's current layout has it), two
TRANSMITTERS: list[list[str] | None] = [
    ["gaba"], ["acetylcholine"], ["glutamate"], ["dopamine"], [], None, ["gaba", "glutamate"]
]  # fmt: skip
SYNISTER_COLLECTION = "skeleton_nt_t0_p300000"  # synister numbers predictions by iteration


@dataclass(frozen=True)
class SynisterRun:
    predictions: dict[int, list[float] | None]  # synapse id -> synister's list (None: to do)
    skeleton_of: dict[int, int]
    class_of: dict[int, str | None]  # synapse id -> its single known transmitter


@pytest.fixture
def synister_run(mongo_client: MongoClient, db_name: str) -> SynisterRun:
    """A data database and a prediction collection as synister leaves them: every synapse
    of the test part pre-created as `{synapse_id, prediction: None}` (all classes), then
    `$set` to a list of probabilities in synapse_types order, two still to do."""
    rng = np.random.default_rng(3)
    data = mongo_client[db_name]
    skeletons, synapses = [], []
    skeleton_of: dict[int, int] = {}
    class_of: dict[int, str | None] = {}
    for skeleton_id in range(1, 19):
        nt_known = TRANSMITTERS[skeleton_id % len(TRANSMITTERS)]
        skeletons.append(
            {"skeleton_id": skeleton_id, "hemi_lineage_id": None, "nt_known": nt_known}
        )
        for _ in range(int(rng.integers(1, 6))):
            synapse_id = 1000 + len(synapses)
            synapses.append({
                "x": 4.0 * synapse_id, "y": 8.0, "z": 40.0, "synapse_id": synapse_id,
                "skeleton_id": skeleton_id, "splits": {"skeleton": "test"}, "prepost": "post",
                "meta_id": None,
            })  # fmt: skip
            skeleton_of[synapse_id] = skeleton_id
            class_of[synapse_id] = nt_known[0] if nt_known and len(nt_known) == 1 else None
    data["skeletons"].insert_many(skeletons)
    data["synapses"].insert_many(synapses)
    collection = mongo_client[f"{db_name}_predictions"][SYNISTER_COLLECTION]
    collection.insert_many([{"synapse_id": s["synapse_id"], "prediction": None} for s in synapses])
    predictions: dict[int, list[float] | None] = {}
    for k, synapse in enumerate(synapses):
        values = None if k in (3, 17) else [float(v) for v in rng.dirichlet(np.ones(3))]
        if values is not None:
            collection.update_one({"synapse_id": synapse["synapse_id"]},
                                  {"$set": {"prediction": values}})  # fmt: skip
        predictions[synapse["synapse_id"]] = values
    return SynisterRun(predictions, skeleton_of, class_of)


def by_hand(run: SynisterRun) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Synapse and skeleton confusion matrices computed directly from synister's lists,
    and the counts of predicted synapses of another class and of no known class."""
    synapse_cm = np.zeros((3, 3), int)
    votes: dict[int, np.ndarray] = {}
    other = unknown = 0
    for synapse_id, values in run.predictions.items():
        if values is None:
            continue
        name = run.class_of[synapse_id]
        if name is None:
            unknown += 1
            continue
        if name not in CLASSES:
            other += 1
            continue
        predicted = int(np.argmax(values))
        synapse_cm[CLASSES.index(name), predicted] += 1
        votes.setdefault(run.skeleton_of[synapse_id], np.zeros(3, int))[predicted] += 1
    skeleton_cm = np.zeros((3, 3), int)
    for skeleton_id, counts in votes.items():
        true = CLASSES.index(TRANSMITTERS[skeleton_id % len(TRANSMITTERS)][0])  # type: ignore[index]
        skeleton_cm[true, int(np.argmax(counts))] += 1
    return synapse_cm, skeleton_cm, other, unknown


def test_evaluate_a_collection_synister_wrote(
    tmp_path: Path, synister_run: SynisterRun, db_name: str, tracking_db: str,
    mongo_client: MongoClient,
) -> None:  # fmt: skip
    synapse_cm, skeleton_cm, other, unknown = by_hand(synister_run)
    assert other > 0 and unknown > 0 and synapse_cm.sum() > 10
    [evaluation] = evaluate(
        tmp_path, [SYNISTER_COLLECTION], db_name, out_dir=tmp_path / "out", synapse_types=CLASSES
    )
    assert evaluation.synapse.confusion.tolist() == synapse_cm.tolist()
    assert evaluation.skeleton.confusion.tolist() == skeleton_cm.tolist()
    assert evaluation.synapse.class_names == CLASSES
    # not predicted (`prediction: None`): left out; other classes and unknown: not scored
    assert evaluation.unlabelled == other + unknown and evaluation.other_class == other
    line = evaluation.report().splitlines()[-1]
    assert line == (
        f"{other} synapses had no class among the predicted classes (gaba, acetylcholine, "
        f"glutamate) and {unknown} had no known class; they were not scored"
    )
    stored = mongo_client[tracking_db]["scores"].find_one({"collection": SYNISTER_COLLECTION})
    assert stored["synapse"]["confusion_matrix"] == synapse_cm.tolist()
    assert (stored["unlabelled"], stored["other_class"]) == (other + unknown, other)
    # the collection itself is untouched
    collection = mongo_client[f"{db_name}_predictions"][SYNISTER_COLLECTION]
    assert collection.count_documents({"probabilities": {"$exists": True}}) == 0


def test_synister_collection_needs_class_names_of_its_length(
    tmp_path: Path, synister_run: SynisterRun, db_name: str, tracking_db: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConnectoError) as missing:
        evaluate(tmp_path, [SYNISTER_COLLECTION], db_name, out_dir=out)
    message = str(missing.value)
    assert "\n" not in message
    assert f"{db_name}_predictions.{SYNISTER_COLLECTION}" in message
    assert "--synapse-types gaba,acetylcholine" in message
    first = next(i for i, v in synister_run.predictions.items() if v is not None)
    with pytest.raises(ConnectoError, match=(
        rf"{SYNISTER_COLLECTION}: synapse {first} has a prediction of length 3 but there are "
        r"4 classes \['gaba', 'acetylcholine', 'glutamate', 'dopamine'\]"
    )):  # fmt: skip
        evaluate(tmp_path, [SYNISTER_COLLECTION], db_name, out_dir=out,
                 synapse_types=[*CLASSES, "dopamine"])  # fmt: skip
    with pytest.raises(ConnectoError, match="--synapse-types gaba,gaba: expected at least two"):
        evaluate(tmp_path, [SYNISTER_COLLECTION], db_name, out_dir=out,
                 synapse_types=["gaba", "gaba"])  # fmt: skip


def test_cli_synapse_types_option(
    tmp_path: Path, synister_run: SynisterRun, db_name: str, tracking_db: str
) -> None:
    synapse_cm, _, other, _ = by_hand(synister_run)
    args = ["evaluate", "--db", db_name, SYNISTER_COLLECTION, "--out", tmp_path / "out"]
    refused = run_connecto(*args, cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert SYNISTER_COLLECTION in line and "--synapse-types" in line
    result = run_connecto(*args, "--synapse-types", ",".join(CLASSES), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{synapse_cm.sum()} items" in result.stdout
    assert f"{other} synapses had no class among the predicted classes" in result.stdout


def test_evaluate_a_predict_setup_synister_predicted(
    tmp_path: Path, synister_run: SynisterRun, db_name: str, tracking_db: str
) -> None:
    """A predict setup as synister's `prepare_prediction.py` makes it (predict number = the
    iteration), predicted by synister's scripts (no tracked run): evaluated with the
    setup's classes."""
    synapse_cm, skeleton_cm, other, unknown = by_hand(synister_run)
    overrides = [*SMALL_MODEL, f"synapse_types={','.join(CLASSES)}", f"db_name_data={db_name}",
                 "split_name=skeleton", "raw_container=/none.zarr", "raw_dataset=raw"]  # fmt: skip
    train, _, _ = prepare_training(tmp_path / "base", "nt", 0, overrides=overrides)
    [(setup, predict_config)] = prepare_prediction(train, [300000], "test")
    write_config(setup.path / "predict_config.toml",
                 predict_config.model_copy(update={"predict_number": 300000}))  # fmt: skip
    [evaluation] = evaluate(train.path, out_dir=tmp_path / "out")
    assert evaluation.name == SYNISTER_COLLECTION
    assert evaluation.synapse.confusion.tolist() == synapse_cm.tolist()
    assert evaluation.skeleton.confusion.tolist() == skeleton_cm.tolist()
    assert (evaluation.unlabelled, evaluation.other_class) == (other + unknown, other)


# ---------------------------------------------------------------- predict number = iteration


def test_predict_setup_numbered_by_iteration(
    tmp_path: Path, mongo_client: MongoClient, db_name: str, tracking_db: str
) -> None:
    """synister's `start_predictions.py` makes the checkpoint iteration the predict number:
    a predict setup (directory p0) whose config says predict_number 10 writes, tracks and
    evaluates `..._p10`, and synister reads the lists back."""
    synthesize_synapses(tmp_path / "raw.zarr", mongo_client[db_name], n_synapses=18,
                        classes=CLASSES, progress=False)  # fmt: skip
    mongo_client[db_name]["synapses"].update_many({}, {"$set": {"splits.skeleton": "validation"}})
    overrides = [*SMALL_MODEL, f"synapse_types={','.join(CLASSES)}", f"db_name_data={db_name}",
                 "split_name=skeleton", f"raw_container={tmp_path / 'raw.zarr'}",
                 "raw_dataset=raw"]  # fmt: skip
    train, config, _ = prepare_training(tmp_path / "base", "nt", 0, overrides=overrides)
    torch.manual_seed(0)
    state = {"model_state_dict": build_vgg3d(config).state_dict(),  # type: ignore[arg-type]
             "optimizer_state_dict": {}, "iteration": 10}  # fmt: skip
    torch.save(state, train.checkpoint(10))
    [(setup, predict_config)] = prepare_prediction(train, [10], "validation")
    assert setup.predict_id == 0
    write_config(setup.path / "predict_config.toml",
                 predict_config.model_copy(update={"predict_number": 10}))  # fmt: skip

    result = run_prediction(setup, progress=False)
    assert result.collection == "skeleton_nt_t0_p10"
    assert result.written == result.expected == 18
    predictions = mongo_client[f"{db_name}_predictions"]
    assert predictions.list_collection_names() == ["skeleton_nt_t0_p10"]
    for doc in predictions["skeleton_nt_t0_p10"].find({}):
        # synister's `get_predictions` + argmax reads what connecto predicted
        assert doc["prediction"] == list(doc["probabilities"].values())
        assert CLASSES[int(np.argmax(doc["prediction"]))] == doc["predicted"]
    run = mongo_client[tracking_db]["predictions"].find_one({"setup_dir": str(setup.path)})
    assert (run["collection"], run["predict_id"], run["state"]) == ("skeleton_nt_t0_p10", 0, "done")

    [evaluation] = evaluate(train.path, split="validation")
    assert evaluation.name == "skeleton_nt_t0_p10" and evaluation.synapse.count == 18
    assert (train.evaluate_dir / "skeleton_nt_t0_p10.png").is_file()
    score = mongo_client[tracking_db]["scores"].find_one({"collection": "skeleton_nt_t0_p10"})
    assert score["key"] == f"{db_name}_predictions.skeleton_nt_t0_p10" and score["complete"]
