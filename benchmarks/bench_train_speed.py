"""Training speed of each template with the template's own network, on this machine's
device (a GPU when torch sees one, else the CPU):

- synapse-classification: synister's VGG (16x160x160 voxels in, batch 8, augmented) on the
  synthetic synapse benchmark;
- segmentation: the MTLSD U-Net (76^3 voxels in, batch 1, augmented) on the NeuroProof
  medulla volume (/work/shared/data), ingested to zarr as the template says.

Each setup is trained with `connecto train` in a subprocess, as users run it (gunpowder's
PreCache forks). The run logs every WARMUP iterations, so the training driver's own
`iterations_per_second` of its last log window covers iterations WARMUP+1 .. 2*WARMUP:
steady state, after the pipeline, the cache workers and the first steps have started.
Only the template's network settings are kept; checkpoints and snapshots are pushed past
the end, and the worker uses this machine's CPUs (cache workers: the template's 5, at most
half the CPUs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

from connecto.data.ingest import ingest
from connecto.data.synthetic import DEFAULT_CLASSES, synthesize_synapses
from connecto.db.client import get_client
from connecto.db.tracking import RUNS
from connecto.experiment import TrainSetup, prepare_training
from connecto.splits import make_split

REPO = Path(__file__).resolve().parents[1]
NEUROPROOF = REPO.parent / "shared" / "data" / "neuroproof_medulla_ts2" / "neuroproof_ts2_raw_gt.h5"
WARMUP = int(os.environ.get("BENCH_TRAIN_WARMUP", "4"))
CONNECTO = [sys.executable, "-m", "cli.main"]
TEMPLATE_CACHE_WORKERS = 5


def worker_overrides() -> tuple[list[str], int]:
    cpus = os.cpu_count() or 1
    cache = max(1, min(TEMPLATE_CACHE_WORKERS, cpus // 2))
    return [f"worker.num_cpus={cpus}", f"worker.num_cache_workers={cache}"], cache


def run_overrides() -> list[str]:
    never = 10**9
    return [f"log_every={WARMUP}", f"save_every={never}", f"snapshot_every={never}", "seed=1"]


def synapse_setup(base: Path, data_db: str) -> TrainSetup:
    db = get_client()[data_db]
    container = base / "synapses.zarr"
    synthesize_synapses(container, db, n_synapses=300, seed=0, progress=False)
    make_split(db, "skeleton", "skel", classes=list(DEFAULT_CLASSES), seed=0)
    overrides = [
        f"synapse_types={','.join(DEFAULT_CLASSES)}", f"db_name_data={data_db}",
        "split_name=skel", f"raw_container={container}", "raw_dataset=raw",
        *run_overrides(), *worker_overrides()[0],
    ]  # fmt: skip
    setup, _, _ = prepare_training(base, "speed_synapse", 0, overrides=overrides)
    return setup


def segmentation_setup(base: Path) -> TrainSetup:
    container = base / "neuroproof.zarr"
    ingest(NEUROPROOF, container, progress=False)
    overrides = [f'raw_container="{container}"', *run_overrides(), *worker_overrides()[0]]
    setup, _, _ = prepare_training(
        base, "speed_segmentation", 0, task="segmentation", overrides=overrides
    )
    return setup


def measure(setup: TrainSetup, tracking_db: str) -> tuple[float, float]:
    """(steady iterations per second, wall seconds of the whole `connecto train`)."""
    start = time.perf_counter()
    done = subprocess.run(
        [*CONNECTO, "train", str(2 * WARMUP)], cwd=setup.path,
        capture_output=True, text=True, check=False,
        env={**os.environ, "CONNECTO_TRACKING_DB": tracking_db},
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"connecto train failed:\n{done.stdout}\n{done.stderr}")
    run = get_client()[tracking_db][RUNS].find_one({"setup_dir": str(setup.path)})
    assert run and run["iteration"] == 2 * WARMUP, run
    return float(run["metrics"]["iterations_per_second"]), wall


def main() -> None:
    client = get_client()
    tag = uuid.uuid4().hex[:6]
    data_db, tracking_db = f"bench_train_speed_{tag}", f"bench_train_speed_{tag}_tracking"
    os.environ["CONNECTO_TRACKING_DB"] = tracking_db
    device = "cuda (" + torch.cuda.get_device_name(0) + ")" if torch.cuda.is_available() else "cpu"
    _, cache = worker_overrides()
    print(f"device {device}, {os.cpu_count()} CPUs, warm-up {WARMUP} iterations, "
          f"measured over the next {WARMUP}", flush=True)  # fmt: skip
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            setups = [("synapse-classification", synapse_setup(base, data_db))]
            if NEUROPROOF.exists():
                setups.append(("segmentation", segmentation_setup(base)))
            else:
                print(f"segmentation skipped: {NEUROPROOF} missing", flush=True)
            for name, setup in setups:
                config = setup.train_config()
                rate, wall = measure(setup, tracking_db)
                shape = "x".join(map(str, config.input_shape))
                rows.append((name, device, f"{shape} x{config.batch_size}", cache, rate, wall))
                print(f"{name}: {rate:.3f} it/s ({wall:.0f} s for the run)", flush=True)
    finally:
        for db in (data_db, tracking_db):
            client.drop_database(db)
    print()
    print("| template | device | input (batch) | cache workers | it/s | s/it |")
    print("|---|---|---|---|---|---|")
    for name, dev, shape, workers, rate, _ in rows:
        print(f"| {name} | {dev} | {shape} | {workers} | {rate:.3f} | {1 / rate:.2f} |")
