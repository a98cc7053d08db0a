"""Contrastive synapse embeddings with few labels, on the synthetic synapse benchmark made
harder than the demo (six classes instead of three: each class's look overlaps with more
neighbours), 720 synapses, split by skeleton (`bench`):

- linear-probe balanced accuracy (validation and test) of the embeddings of
  (a) the contrastive model after a fixed CPU budget of self-supervised pretraining on
  every synapse (labels never read), (b) the same encoder randomly initialised, against
  (c) the supervised VGG classifier trained for a fixed CPU budget on the same few labels.
  "Few labels" is the split `few`: 10 synapses per class of `bench`'s train part (seeded),
  `bench`'s validation and test parts unchanged; the probes train on exactly those labels.
  Goal: (a) clearly above (b), and at least (c).
- embedding throughput: `embed_synapses` end to end (read crop, forward, write) against
  forward-only on the same crops already in memory, synapses/s.

Budgets (wall clock on this machine, stated in the output; the whole benchmark fits in
~25 min on 2 CPU cores): pretraining PRETRAIN_S (default 480 s), the supervised VGG
SUPERVISED_S (240 s). Training runs as `connecto train` in a subprocess and is stopped
with SIGTERM at its budget (it saves its checkpoint then); set BENCH_CONTRASTIVE_PRETRAIN_S
and BENCH_CONTRASTIVE_SUPERVISED_S to change them. Both models read the same 8x32x32
voxel crops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from connecto.data.synthetic import synthesize_synapses
from connecto.db.client import get_client
from connecto.db.synapses import synapses_by_class
from connecto.experiment import TrainSetup, prepare_training
from connecto.splits import make_split

CLASSES = ["gaba", "acetylcholine", "glutamate", "serotonin", "octopamine", "dopamine"]
SYNAPSES = 720
LABELS_PER_CLASS = 10
PRETRAIN_S = float(os.environ.get("BENCH_CONTRASTIVE_PRETRAIN_S", "480"))
SUPERVISED_S = float(os.environ.get("BENCH_CONTRASTIVE_SUPERVISED_S", "240"))
CPUS = min(2, os.cpu_count() or 1)
CONNECTO = [sys.executable, "-m", "cli.main"]
NEVER = 10**9
RUN = [f"save_every={NEVER}", f"snapshot_every={NEVER}", "log_every=10", "seed=1",
       f"worker.num_cpus={CPUS}", "worker.num_cache_workers=1", "worker.num_gpus=0"]  # fmt: skip
CONTRASTIVE = ["input_shape=[8,32,32]", "width=16", "batch_size=16", "learning_rate=0.001"]
SUPERVISED = [
    "input_shape=[8,32,32]", "fmaps=4", "fmap_inc=[2,2]", "n_convolutions=[2,2]",
    "downsample_factors=[[1,2,2],[2,2,2]]", "classifier_width=64", "batch_size=8",
    "learning_rate=0.001", f"synapse_types={','.join(CLASSES)}", "split_name=few",
]  # fmt: skip


def train_for(setup: TrainSetup, seconds: float) -> tuple[int, float]:
    """`connecto train` in `setup` stopped (SIGTERM: it checkpoints) after `seconds`;
    returns (iterations done, wall seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [*CONNECTO, "train", str(NEVER)], cwd=setup.path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=300)
    wall = time.perf_counter() - start
    done = setup.checkpoints()
    if not done:
        raise RuntimeError(f"`connecto train` in {setup.path} saved no checkpoint:\n{errors}")
    return done[-1], wall


def few_label_split(db: Any, seed: int = 0) -> int:
    """Split `few`: LABELS_PER_CLASS synapses of each class of `bench`'s train part, and
    `bench`'s validation and test parts. Returns the number of training labels."""
    rng = np.random.default_rng(seed)
    chosen = []
    for members in synapses_by_class(db, "bench", "train", CLASSES).values():
        ids = sorted(m["synapse_id"] for m in members)
        chosen += rng.choice(ids, size=min(LABELS_PER_CLASS, len(ids)), replace=False).tolist()
    db["synapses"].update_many({"synapse_id": {"$in": chosen}}, {"$set": {"splits.few": "train"}})
    for part in ("validation", "test"):
        db["synapses"].update_many({"splits.bench": part}, {"$set": {"splits.few": part}})
    return len(chosen)


def probe_row(name: str, database: str, collection: str) -> dict[str, Any]:
    from connecto.tasks.synapse_contrastive.probe import linear_probe

    result = linear_probe("few", database=database, collection=collection, plots=False)
    scores = {p: e.synapse.balanced_accuracy for p, e in result.evaluations.items()}
    return {"model": name, **scores}


def supervised_row(base: Path, data_db: str) -> dict[str, Any]:
    from connecto.tasks.synapse_classification.evaluate import evaluate
    from connecto.tasks.synapse_classification.predict import predict

    overrides = [*SUPERVISED, *RUN, f"db_name_data={data_db}",
                 f"raw_container={base / 'raw.zarr'}", "raw_dataset=raw"]  # fmt: skip
    setup, _, _ = prepare_training(base, "vgg", 0, overrides=overrides)
    iterations, wall = train_for(setup, SUPERVISED_S)
    print(f"supervised VGG: {iterations} iterations in {wall:.0f} s", flush=True)
    row: dict[str, Any] = {"model": f"supervised VGG, {iterations} it ({wall:.0f} s)"}
    for part in ("validation", "test"):
        predict(setup.path, part, progress=False, log=lambda _: None)
        [evaluation] = evaluate(setup.path, split=part, plots=False)
        row[part] = evaluation.synapse.balanced_accuracy
    return row


def throughput(checkpoint: Path) -> tuple[float, float]:
    """(end-to-end synapses/s of `embed_synapses`, forward-only synapses/s)."""
    from connecto.tasks.synapse_contrastive.crops import crop_source
    from connecto.tasks.synapse_contrastive.embed import embed_synapses
    from connecto.tasks.synapse_contrastive.model import load_contrastive_model

    torch.set_num_threads(CPUS)
    start = time.perf_counter()
    run = embed_synapses(checkpoint, overwrite=True, progress=False, threads=CPUS)
    end_to_end = run.written / (time.perf_counter() - start)
    model, config = load_contrastive_model(checkpoint)
    batches = [crops for _, crops in crop_source(config).batches(config.batch_size)]
    start = time.perf_counter()
    with torch.inference_mode():
        for crops in batches:
            model.features(torch.from_numpy(crops))
    forward = sum(len(b) for b in batches) / (time.perf_counter() - start)
    return end_to_end, forward


def run(base: Path, data_db: str) -> None:
    from connecto.tasks.synapse_contrastive.embed import embed_synapses
    from connecto.tasks.synapse_contrastive.model import build_contrastive_model

    db = get_client()[data_db]
    synthesize_synapses(base / "raw.zarr", db, n_synapses=SYNAPSES, classes=CLASSES,
                        progress=False)  # fmt: skip
    make_split(db, "skeleton", "bench", classes=CLASSES, seed=0)
    labels = few_label_split(db)
    print(f"{SYNAPSES} synapses, {len(CLASSES)} classes; {labels} training labels "
          f"({LABELS_PER_CLASS} per class); {CPUS} CPU threads", flush=True)  # fmt: skip
    overrides = [*CONTRASTIVE, *RUN, f"db_name_data={data_db}",
                 f"raw_container={base / 'raw.zarr'}", "raw_dataset=raw"]  # fmt: skip
    pretrained, config, _ = prepare_training(
        base, "clr", 0, task="synapse-contrastive", overrides=overrides
    )
    iterations, wall = train_for(pretrained, PRETRAIN_S)
    print(f"contrastive pretraining: {iterations} iterations in {wall:.0f} s", flush=True)
    random_init, _, _ = prepare_training(
        base, "clr", 1, task="synapse-contrastive", overrides=overrides
    )
    torch.manual_seed(1)
    model = build_contrastive_model(config)  # type: ignore[arg-type]
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": {},
                "iteration": 0}, random_init.checkpoint(0))  # fmt: skip

    rows = []
    for name, checkpoint in (
        (f"contrastive, {iterations} it ({wall:.0f} s)", pretrained.checkpoint(iterations)),
        ("random init (same encoder)", random_init.checkpoint(0)),
    ):
        embedded = embed_synapses(checkpoint, progress=False, threads=CPUS)
        rows.append(probe_row(f"linear probe: {name}", embedded.database, embedded.collection))
        print(rows[-1], flush=True)
    rows.append(supervised_row(base, data_db))
    print(rows[-1], flush=True)
    end_to_end, forward = throughput(pretrained.checkpoint(iterations))

    print()
    chance = 100 / len(CLASSES)
    print(f"few labels: {LABELS_PER_CLASS} per class x {len(CLASSES)} classes; balanced "
          f"accuracy per synapse (chance {chance:.1f}%)")  # fmt: skip
    print("| model | validation | test |")
    print("|---|---|---|")
    for row in rows:
        cells = [f"{100 * row[p]:.1f}%" if row.get(p) is not None else "-"
                 for p in ("validation", "test")]  # fmt: skip
        print(f"| {row['model']} | {cells[0]} | {cells[1]} |")
    print()
    print(f"embedding throughput ({SYNAPSES} synapses, batch {config.batch_size}, "  # type: ignore[attr-defined]
          f"{CPUS} threads): end to end {end_to_end:.1f} synapses/s, forward only "
          f"{forward:.1f} synapses/s, ratio {end_to_end / forward:.2f}")  # fmt: skip


def main() -> None:
    client = get_client()
    data_db = f"bench_contrastive_{uuid.uuid4().hex[:6]}"
    tracking = f"{data_db}_tracking"
    os.environ["CONNECTO_TRACKING_DB"] = tracking
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), data_db)
    finally:
        for name in (data_db, f"{data_db}_embeddings", f"{data_db}_predictions", tracking):
            client.drop_database(name)
