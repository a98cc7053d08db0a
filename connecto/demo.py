"""`make demo`: the main job end to end on the embedded default, no set-up by the user.

Starts the local server, synthesizes a small synapse dataset, splits it by skeleton,
prepares and trains a small VGG, predicts the validation part for every checkpoint,
selects the best, predicts and evaluates the test part. Every step is the `connecto`
command a user would type, run in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from connecto.launch.local import connecto_argv

DEMO_DIR = Path(os.environ.get("CONNECTO_DEMO_DIR", "demo_out")).resolve()
DATA_DB = os.environ.get("CONNECTO_DEMO_DB", "connecto_demo")
CLASSES = ["gaba", "acetylcholine", "glutamate"]
SYNAPSES = 600
ITERATIONS = 400
SAVE_EVERY = 100
# small enough to train in minutes on two CPU cores, big enough to see a synapse
MODEL = [
    "input_shape=[8,32,32]",
    "fmaps=4",
    "fmap_inc=[2,2]",
    "n_convolutions=[2,2]",
    "downsample_factors=[[1,2,2],[2,2,2]]",
    "classifier_width=64",
    "batch_size=4",
    "learning_rate=0.001",
    "seed=1",
]


def connecto(*args: str | Path, cwd: Path | None = None) -> None:
    command = [*connecto_argv(), *map(str, args)]
    where = f"(in {cwd}) " if cwd else ""
    print(f"\n$ {where}connecto {' '.join(map(str, args))}", flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def reset() -> None:
    """A clean slate for the demo's own directory and databases (nothing else)."""
    from connecto.db.client import get_client

    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    client = get_client()
    for name in (DATA_DB, f"{DATA_DB}_predictions"):
        client.drop_database(name)


def main() -> None:
    start = time.perf_counter()
    connecto("db", "up")
    reset()
    raw = DEMO_DIR / "synapses.zarr"
    connecto("data", "synthesize-synapses", raw, "--db", DATA_DB,
             "--synapses", SYNAPSES, "--classes", ",".join(CLASSES))  # fmt: skip
    connecto("split", "--db", DATA_DB, "--by", "skeleton", "--name", "skeleton",
             "--fractions", "0.6,0.2,0.2")  # fmt: skip
    settings = [
        *MODEL,
        f"synapse_types={','.join(CLASSES)}",
        f"db_name_data={DATA_DB}",
        "split_name=skeleton",
        f"raw_container={raw}",
        "raw_dataset=raw",
        f"save_every={SAVE_EVERY}",
        f"snapshot_every={ITERATIONS}",
        "worker.num_cpus=2",
        "worker.num_cache_workers=1",
    ]
    connecto("prepare-training", "-d", DEMO_DIR, "-e", "demo", "-t", "0",
             *[arg for item in settings for arg in ("--set", item)])  # fmt: skip
    setup = DEMO_DIR / "demo" / "02_train" / "setup_t0"
    connecto("train", ITERATIONS, cwd=setup)
    connecto("predict", "--split", "validation", "--all-checkpoints", cwd=setup)
    connecto("evaluate", "--select-best", "--split", "validation", cwd=setup)

    from connecto.db.client import tracking_database
    from connecto.tasks.synapse_classification.evaluate import stored_best, stored_scores

    tracking = tracking_database()
    best = stored_best(tracking, setup, "validation")
    connecto("predict", "--split", "test", "--iterations", best, cwd=setup)
    connecto("evaluate", "--split", "test", cwd=setup)

    [scores] = stored_scores(tracking, setup, "test")
    synapse, skeleton = scores["synapse"], scores["skeleton"]
    chance = 1 / len(CLASSES)
    print(
        f"\ntest part, checkpoint {best}: accuracy {synapse['accuracy']:.1%} per synapse "
        f"(balanced {synapse['balanced_accuracy']:.1%}), {skeleton['accuracy']:.1%} per "
        f"skeleton (majority vote); chance is {chance:.1%}"
    )
    print("confusion-matrix plots:", *scores["plots"], sep="\n  ")
    print(f"demo finished in {time.perf_counter() - start:.0f} s: everything is under {DEMO_DIR}")
    if synapse["accuracy"] <= chance:
        sys.exit("demo: test accuracy is not above chance")


if __name__ == "__main__":
    main()
