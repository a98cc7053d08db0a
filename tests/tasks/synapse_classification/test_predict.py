"""`connecto predict` and `connecto evaluate` end to end on the real server: a synthetic
volume, a small VGG checkpoint, the overwrite guard, resume after SIGKILL, 2 workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.data.synthetic import synthesize_synapses
from connecto.db.predictions import list_prediction_runs, prediction_collection_name
from connecto.experiment import PredictSetup, TrainSetup, prepare_training
from connecto.locks import setup_lock
from connecto.tasks.synapse_classification.evaluate import evaluate
from connecto.tasks.synapse_classification.model import build_vgg3d
from connecto.tasks.synapse_classification.predict import predict, run_prediction
from connecto.tasks.synapse_classification.setups import prepare_prediction
from tests.conftest import CONNECTO, sigkill_when_ready, survivors

CLASSES = ["gaba", "acetylcholine", "glutamate"]
PARTS = {0: "train", 1: "validation", 2: "test"}
SMALL_MODEL = [
    "input_shape=[8,32,32]",
    "fmaps=4",
    "fmap_inc=[2,2]",
    "n_convolutions=[1,1]",
    "downsample_factors=[[1,2,2],[2,2,2]]",
    "classifier_width=64",
    "batch_size=4",
]


@dataclass(frozen=True)
class Env:
    train: TrainSetup
    data_db: str
    tracking_db: str
    expected: dict[str, set[int]]  # split part -> synapse ids
    overrides: list[str]  # the train setup's config overrides, for more setups on the data

    def predictions(self, client: MongoClient, collection: str) -> dict[int, dict]:
        found = client[f"{self.data_db}_predictions"][collection].find({}, {"_id": 0})
        return {d["synapse_id"]: d for d in found}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient) -> Iterator[Env]:
    """Synthetic synapses split by skeleton, a train setup with two checkpoints of a small,
    freshly initialised VGG (different seeds)."""
    base = tmp_path_factory.mktemp("predict")
    data_db = f"test_predict_{uuid.uuid4().hex[:8]}"
    tracking_db = f"tracking_{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNECTO_TRACKING_DB", tracking_db)
        db = mongo_client[data_db]
        synthesize_synapses(base / "raw.zarr", db, n_synapses=240, classes=CLASSES,
                            progress=False)  # fmt: skip
        expected: dict[str, set[int]] = {part: set() for part in PARTS.values()}
        for doc in db["synapses"].find({}, {"synapse_id": 1, "skeleton_id": 1}):
            part = PARTS[doc["skeleton_id"] % 3]
            db["synapses"].update_one({"_id": doc["_id"]}, {"$set": {"splits.skeleton": part}})
            expected[part].add(doc["synapse_id"])
        overrides = [
            *SMALL_MODEL,
            f"synapse_types={','.join(CLASSES)}",
            f"db_name_data={data_db}",
            "split_name=skeleton",
            f"raw_container={base / 'raw.zarr'}",
            "raw_dataset=raw",
        ]
        train, config, _ = prepare_training(base, "nt", 0, overrides=overrides)
        for seed, iteration in ((1, 10), (2, 20)):
            torch.manual_seed(seed)
            model = build_vgg3d(config)  # type: ignore[arg-type]
            state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": {},
                     "iteration": iteration}  # fmt: skip
            torch.save(state, train.checkpoint(iteration))
        yield Env(train, data_db, tracking_db, expected, overrides)
    for name in (data_db, f"{data_db}_predictions", tracking_db):
        mongo_client.drop_database(name)


def run(env: Env, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CONNECTO, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "CONNECTO_TRACKING_DB": env.tracking_db},
    )  # fmt: skip


@pytest.fixture(autouse=True)
def tracking(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process calls track into the module's tracking database too."""
    monkeypatch.setenv("CONNECTO_TRACKING_DB", env.tracking_db)


def test_predict_validation_then_refuse_then_overwrite(env: Env, mongo_client: MongoClient):
    result = run(env, "predict", "--split", "validation", "-i", "10", cwd=env.train.path)
    assert result.returncode == 0, result.stderr
    name = prediction_collection_name("skeleton", "nt", 0, 0)
    assert name == "skeleton_nt_t0_p0" and name in result.stdout
    predictions = env.predictions(mongo_client, name)
    assert set(predictions) == env.expected["validation"]
    first = next(iter(predictions.values()))
    assert list(first["probabilities"]) == CLASSES
    assert sum(first["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert first["predicted"] == max(first["probabilities"], key=first["probabilities"].get)
    assert first["iteration"] == 10 and first["label"] in CLASSES

    run_doc = mongo_client[env.tracking_db]["predictions"].find_one({"collection": name})
    assert run_doc["state"] == "done"
    assert run_doc["expected"] == run_doc["written"] == len(env.expected["validation"])

    again = run(env, "predict", "--split", "validation", "-i", "10", cwd=env.train.path)
    assert again.returncode == 1
    assert "already holds predictions" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert len(env.predictions(mongo_client, name)) == len(predictions)

    # the same setup is reused; overwrite predicts it again
    [redo] = predict(env.train.path, "validation", [10], overwrite=True, progress=False)
    assert (redo.collection, redo.resumed_from, redo.written) == (name, 0, len(predictions))
    assert env.predictions(mongo_client, name).keys() == predictions.keys()
    assert [s.predict_id for s in env.train.predict_setups()] == [0]

    # evaluate the train setup's predictions: scores stored, plots written
    [evaluation] = evaluate(env.train.path, split="validation")
    assert "per synapse" in evaluation.report() and "per skeleton" in evaluation.report()
    assert evaluation.synapse.count == len(predictions)
    assert (env.train.evaluate_dir / f"{name}.png").is_file()
    score = mongo_client[env.tracking_db]["scores"].find_one({"collection": name})
    assert score["synapse"]["count"] == len(predictions) and score["complete"]


def test_resume_after_kill_matches_uninterrupted_run(env: Env, mongo_client: MongoClient):
    [(killed, _), (clean, _)] = prepare_prediction(env.train, [20, 20], "test")
    names = [prediction_collection_name("skeleton", "nt", 0, s.predict_id) for s in (killed, clean)]
    collection = mongo_client[f"{env.data_db}_predictions"][names[0]]
    expected = len(env.expected["test"])

    process = subprocess.Popen(
        [*CONNECTO, "predict", "--batch-size", "1"], cwd=killed.path,
        env={**os.environ, "CONNECTO_TRACKING_DB": env.tracking_db},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while collection.estimated_document_count() == 0 and process.poll() is None:
        assert time.monotonic() < deadline, "no prediction was written"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = collection.count_documents({})
    assert 0 < partial < expected, f"the run was not killed part-way ({partial}/{expected})"

    resumed = run(env, "predict", cwd=killed.path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{partial} from an earlier run" in resumed.stdout
    ids = [d["synapse_id"] for d in collection.find({}, {"synapse_id": 1})]
    assert len(ids) == len(set(ids)) == expected

    run_prediction(clean, batch_size=7, progress=False)
    assert_same_predictions(env, mongo_client, *names)


def test_sigkill_stops_both_workers_and_the_run_reads_interrupted(
    env: Env, mongo_client: MongoClient
) -> None:
    """`connecto predict --workers 2` killed outright: its workers stop at once (they do not
    finish their shares), and its tracking document reads `interrupted`."""
    [(killed, _)] = prepare_prediction(env.train, [20], "test")
    name = prediction_collection_name("skeleton", "nt", 0, killed.predict_id)
    collection = mongo_client[f"{env.data_db}_predictions"][name]
    process = subprocess.Popen(
        [*CONNECTO, "predict", "--workers", "2", "--batch-size", "1"], cwd=killed.path,
        env={**os.environ, "CONNECTO_TRACKING_DB": env.tracking_db},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    children = sigkill_when_ready(
        process, lambda _: collection.estimated_document_count() > 0, "the prediction"
    )
    alive = survivors(children, timeout_s=5)
    assert not alive, f"{len(alive)} of {len(children)} processes outlived the parent"
    written = collection.count_documents({})
    assert written < len(env.expected["test"]), "the workers finished after their parent died"

    [document] = [
        d for d in list_prediction_runs(mongo_client[env.tracking_db])
        if d["setup_dir"] == str(killed.path)
    ]  # fmt: skip
    assert document["state"] == "interrupted"
    stored = mongo_client[env.tracking_db]["predictions"].find_one({"_id": document["_id"]})
    assert stored["state"] == "interrupted"


def test_two_workers_give_the_same_predictions(env: Env, mongo_client: MongoClient) -> None:
    [(one, _), (two, _)] = prepare_prediction(env.train, [20, 20], "validation")
    run_prediction(one, workers=1, progress=False)
    result = run_prediction(two, workers=2, batch_size=3, progress=False)
    assert result.written == result.expected == len(env.expected["validation"])
    names = [prediction_collection_name("skeleton", "nt", 0, s.predict_id) for s in (one, two)]
    assert_same_predictions(env, mongo_client, *names)


def assert_same_predictions(env: Env, client: MongoClient, first: str, second: str) -> None:
    a, b = env.predictions(client, first), env.predictions(client, second)
    assert a.keys() == b.keys()
    for synapse_id, doc in a.items():
        assert doc["predicted"] == b[synapse_id]["predicted"]
        assert doc["probabilities"] == pytest.approx(b[synapse_id]["probabilities"], abs=1e-5)


def test_bad_requests_name_the_problem(env: Env) -> None:
    with pytest.raises(ConnectoError, match=r"no checkpoint for iteration\(s\) \[999\]"):
        predict(env.train.path, "validation", [999])
    with pytest.raises(ConnectoError, match="give --split validation or --split test"):
        predict(env.train.path)
    with pytest.raises(ConnectoError, match="expected validation or test"):
        predict(env.train.path, "train")
    with pytest.raises(ConnectoError, match="not inside a setup directory"):
        predict(env.train.base, "test")
    before = len(env.train.predict_setups())
    with pytest.raises(ConnectoError, match="--workers 0: must be at least 1"):
        predict(env.train.path, "test", [10], workers=0)
    with pytest.raises(ConnectoError, match="--batch-size 0: must be at least 1"):
        predict(env.train.path, "test", [10], batch_size=0)
    assert len(env.train.predict_setups()) == before


def test_all_checkpoints_refused_as_a_whole_then_select_best(env: Env) -> None:
    before = len(env.train.predict_setups())
    # iteration 10's validation predictions are complete (first test): nothing is run
    with pytest.raises(ConnectoError, match="iteration 10"):
        predict(env.train.path, "validation", all_checkpoints=True, progress=False)
    setups: list[PredictSetup] = env.train.predict_setups()
    assert {s.predict_config().iteration for s in setups if
            s.predict_config().split_part == "validation"} == {10, 20}  # fmt: skip
    assert len(setups) == before  # refused as a whole: no new setup either
    best = run(env, "evaluate", "--select-best", "--split", "validation", cwd=env.train.path)
    assert best.returncode == 0, best.stderr
    assert "best checkpoint: iteration" in best.stdout
    assert "connecto predict --split test --iterations" in best.stdout
    assert "iteration       10" in best.stdout and "iteration       20" in best.stdout


def small_train_setup(env: Env, base: Path, experiment: str, seed: int) -> TrainSetup:
    """A train setup on the module's data with one checkpoint (iteration 10)."""
    train, config, _ = prepare_training(base, experiment, 0, overrides=env.overrides)
    torch.manual_seed(seed)
    state = {"model_state_dict": build_vgg3d(config).state_dict(),  # type: ignore[arg-type]
             "optimizer_state_dict": {}, "iteration": 10}  # fmt: skip
    torch.save(state, train.checkpoint(10))
    return train


def test_a_collection_belongs_to_one_setup(
    env: Env, mongo_client: MongoClient, tmp_path: Path
) -> None:
    """Same experiment name and train id under two bases: same collection name. The second
    setup may neither resume nor overwrite the first's collection."""
    a = small_train_setup(env, tmp_path / "a", "owned", seed=3)
    b = small_train_setup(env, tmp_path / "b", "owned", seed=4)
    [first] = predict(a.path, "validation", [10], progress=False)
    name = first.collection
    before = env.predictions(mongo_client, name)
    a_setup = str(first.setup.path.resolve())

    refused = run(env, "predict", "--split", "validation", "-i", "10", cwd=b.path)
    assert refused.returncode == 1 and a_setup in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    with pytest.raises(ConnectoError, match=f"belongs to predict setup {a_setup} "):
        predict(b.path, "validation", [10], overwrite=True, progress=False)
    # an incomplete collection is not resumed with b's weights either
    dropped = sorted(before)[: len(before) // 2]
    mongo_client[f"{env.data_db}_predictions"][name].delete_many({"synapse_id": {"$in": dropped}})
    left = env.predictions(mongo_client, name)
    assert 0 < len(left) < len(before)
    with pytest.raises(ConnectoError, match=f"belongs to predict setup {a_setup} "):
        predict(b.path, "validation", [10], progress=False)
    assert env.predictions(mongo_client, name) == left
    assert {k: before[k] for k in left} == left

    # a itself resumes its own collection
    [resumed] = predict(a.path, "validation", [10], progress=False)
    assert resumed.resumed_from == len(left) and env.predictions(mongo_client, name) == before
    owner = mongo_client[env.tracking_db]["predictions"].find_one({"collection": name})["owner"]
    assert owner["setup"] == a_setup and owner["checkpoint"] == str(a.checkpoint(10).resolve())
    assert len(owner["config_hash"]) == 64


HOLD_LOCK = """
import sys, time
from pathlib import Path
from connecto.locks import setup_lock
with setup_lock(Path(sys.argv[1]), "connecto train"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_one_process_per_setup(env: Env, tmp_path: Path) -> None:
    """While a process holds a setup, `connecto train` and `connecto predict` there fail
    naming it; once it is SIGKILLed, the setup is free again."""
    [(predict_setup, _)] = prepare_prediction(env.train, [10], "test")
    for path, command in ((env.train.path, ["train", "20"]), (predict_setup.path, ["predict"])):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
            busy = run(env, *command, cwd=path)
            assert busy.returncode == 1, busy.stdout
            [line] = busy.stderr.strip().splitlines()
            assert f"{path} is in use by pid {holder.pid} on " in line
            assert "connecto train started at " in line
            with pytest.raises(ConnectoError, match=f"in use by pid {holder.pid} "):
                with setup_lock(path, "test"):
                    pass
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        with setup_lock(path, "test"):  # the kernel dropped the dead holder's lock
            pass
