"""Prediction throughput on the synthetic synapse benchmark (the configured server, or the
embedded one):

- synapses per second end to end (read crop, forward, write) against forward only on the
  same batches (crops already in memory), goal >= 0.8;
- the write path alone (prediction documents, unordered inserts into the collection with its
  unique index) against raw `insert_many` of the same documents, goal >= 0.8;
- 1 worker against 2 workers.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from connecto.data.synthetic import synthesize_synapses
from connecto.data.volumes import open_raw, read_crop
from connecto.db.client import get_client
from connecto.db.predictions import (
    open_prediction_collection,
    prediction_document,
    write_predictions,
)
from connecto.experiment import prepare_training
from connecto.tasks.synapse_classification.model import build_vgg3d, load_model_from_checkpoint
from connecto.tasks.synapse_classification.predict import (
    prediction_threads,
    run_prediction,
    split_synapses,
)
from connecto.tasks.synapse_classification.setups import prepare_prediction

SYNAPSES = 300
BATCH = 16
MODEL = [
    "input_shape=[16,64,64]",
    "fmaps=8",
    "classifier_width=256",
    f"batch_size={BATCH}",
    "synapse_types=gaba,acetylcholine,glutamate",
    "split_name=bench",
    "raw_dataset=raw",
    "worker.num_cpus=2",
]


def timed(label: str, count: int, work) -> float:  # noqa: ANN001
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    print(f"{label:<52} {count / seconds:9.1f} synapses/s ({seconds:.2f} s)", flush=True)
    return count / seconds


def main() -> None:
    client = get_client()
    data_db = f"bench_predict_{uuid.uuid4().hex[:6]}"
    os.environ["CONNECTO_TRACKING_DB"] = f"{data_db}_tracking"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), data_db)
    finally:
        for name in (data_db, f"{data_db}_predictions", f"{data_db}_tracking"):
            client.drop_database(name)


def run(base: Path, data_db: str) -> None:
    db = get_client()[data_db]
    container = base / "raw.zarr"
    synthesize_synapses(container, db, n_synapses=SYNAPSES, progress=False)
    db["synapses"].update_many({}, {"$set": {"splits.bench": "test"}})
    overrides = [*MODEL, f"db_name_data={data_db}", f"raw_container={container}"]
    train, config, _ = prepare_training(base, "bench", 0, overrides=overrides)
    torch.manual_seed(0)
    state = {"model_state_dict": build_vgg3d(config).state_dict(), "iteration": 1}  # type: ignore[arg-type]
    torch.save({**state, "optimizer_state_dict": {}}, train.checkpoint(1))
    setups = [s for s, _ in prepare_prediction(train, [1, 1, 1], "test")]
    predict_config = setups[0].predict_config()
    synapses = split_synapses(predict_config)
    n = len(synapses)
    threads = prediction_threads(2, 1)
    print(f"{n} synapses, input {predict_config.input_shape}, batch {BATCH}, "
          f"{threads} torch thread(s) per worker, {os.cpu_count()} CPUs")  # fmt: skip

    # forward only, on the same batches, crops already in memory
    torch.set_num_threads(threads)
    model = load_model_from_checkpoint(predict_config, train.checkpoint(1), "cpu")
    raw = open_raw(container, "raw")
    centers = [(s["z"], s["y"], s["x"]) for s in synapses]
    crops = np.stack([read_crop(raw, c, predict_config.input_shape) for c in centers])

    def forward() -> None:
        with torch.inference_mode():
            for i in range(0, n, BATCH):
                torch.softmax(model(torch.from_numpy(crops[i : i + BATCH])), dim=1)

    forward_rate = timed("forward only", n, forward)
    read_rate = timed(
        "read crops only",
        n,
        lambda: [read_crop(raw, c, predict_config.input_shape) for c in centers],
    )
    end_to_end = timed(
        "end to end, 1 worker (read, forward, write)",
        n,
        lambda: run_prediction(setups[0], workers=1, batch_size=BATCH, progress=False),
    )
    two = timed(
        "end to end, 2 workers",
        n,
        lambda: run_prediction(setups[1], workers=2, batch_size=BATCH, progress=False),
    )

    # the write path alone against raw insert_many of the same documents
    names = predict_config.class_names
    probabilities = np.full(len(names), 1 / len(names))
    documents = [prediction_document(s, probabilities, names, 1) for s in synapses]
    pdb = get_client()[f"{data_db}_predictions"]
    raw_plain = timed(
        "raw insert_many (no index)",
        n,
        lambda: [pdb["raw_plain"].insert_many([dict(d) for d in documents[i : i + BATCH]])
                 for i in range(0, n, BATCH)],
    )  # fmt: skip
    pdb["raw_indexed"].create_index("synapse_id", unique=True)
    raw_indexed = timed(
        "raw insert_many (unique synapse_id index)",
        n,
        lambda: [pdb["raw_indexed"].insert_many([dict(d) for d in documents[i : i + BATCH]])
                 for i in range(0, n, BATCH)],
    )  # fmt: skip
    collection = open_prediction_collection(pdb, "write_path")
    write_path = timed(
        "write path (documents + unordered insert)",
        n,
        lambda: [write_predictions(collection, [
            prediction_document(s, probabilities, names, 1) for s in synapses[i : i + BATCH]
        ]) for i in range(0, n, BATCH)],
    )  # fmt: skip

    print(f"end to end / forward only:            {end_to_end / forward_rate:.2f} (goal >= 0.8)")
    print(f"write path / raw insert_many (index):  {write_path / raw_indexed:.2f} (goal >= 0.8)")
    print(f"write path / raw insert_many (none):   {write_path / raw_plain:.2f}")
    print(f"2 workers / 1 worker:                  {two / end_to_end:.2f}")
    print(f"crop reading / forward:                {read_rate / forward_rate:.1f}x as fast")
