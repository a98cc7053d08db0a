"""Remote blockwise workers: `connecto segment fragments` on a NeuroProof crop (affinities
from the ground truth) with 1, 2 and 4 workers as SLURM jobs against the same numbers of
local worker processes (blocks per second, and the SLURM/local overhead ratio), and the
time from a SIGKILLed driver to no worker job left in `squeue`.

Needs SLURM (`make ci-services`) and the NeuroProof volume; the MongoDB server is the
configured one (CONNECTO_MONGO_URI), else the embedded one. BENCH_WORKERS_SIZE sets the
crop's edge in voxels (default 128: 64 blocks of 32^3), BENCH_WORKERS_COUNTS the worker
counts (default 1,2,4). Each driver is a `connecto` process, as a user runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER_GONE_BOUND_S = 30  # connecto.launch.workers.DRIVER_GONE_BOUND_S
CONNECTO = [sys.executable, "-m", "cli.main"]
NEUROPROOF = REPO.parent / "shared" / "data" / "neuroproof_medulla_ts2" / "neuroproof_ts2_raw_gt.h5"
BLOCK = 32
OFFSET = 1000  # nm; 10 nm voxels


def write_config(directory: Path, db_name: str, size: int, num_workers: int, graph: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    values = {
        "labels_container": f'"{NEUROPROOF}"',
        "roi": f"[[{OFFSET}, {OFFSET}, {OFFSET}], [{size * 10}, {size * 10}, {size * 10}]]",
        "block_size": f"[{BLOCK}, {BLOCK}, {BLOCK}]",
        "context": "[4, 4, 4]",
        "num_workers": str(num_workers),
        "db_name": f'"{db_name}"',
        "graph": f'"{graph}"',
        "output_container": f'"{directory.parent / "segment.zarr"}"',
        "fragments_dataset": f'"fragments_{graph}"',
    }
    path = directory / "segment_config.toml"
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return path


def slurm_workers(directory: Path) -> None:
    (directory / "worker_config.toml").write_text(
        'scheduler = "slurm"\nqueue = "debug"\nnum_cpus = 1\nnum_gpus = 0\ntime_limit = "30:00"\n'
    )


def connecto(*args: object, cwd: Path) -> None:
    result = subprocess.run([*CONNECTO, *map(str, args)], cwd=REPO, capture_output=True,
                            text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"connecto {' '.join(map(str, args))} failed:\n{result.stderr}")


def worker_jobs_queued(tracking_db: str, name: str) -> list[str]:
    """The worker jobs of the run `name` that SLURM still lists."""
    from connecto.db.client import get_client

    query = {"kind": "worker", "daisy_task": f"fragments_{name}-extract-frags"}
    docs = get_client()[tracking_db]["jobs"].find(query)
    ids = [d["job_id"] for d in docs]
    if not ids:
        return []
    out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    return out.stdout.split()


def main() -> None:
    os.environ["PATH"] += ":/usr/local/sbin:/usr/sbin:/sbin"
    if shutil.which("sbatch") is None or not NEUROPROOF.is_file():
        print("skipped: needs SLURM (make ci-services) and the NeuroProof volume")
        return
    size = int(os.environ.get("BENCH_WORKERS_SIZE", "128"))
    counts = [int(c) for c in os.environ.get("BENCH_WORKERS_COUNTS", "1,2,4").split(",")]
    tracking_db = f"bench_workers_{uuid.uuid4().hex[:6]}"
    db_name = f"bench_workers_{uuid.uuid4().hex[:6]}"
    os.environ["CONNECTO_TRACKING_DB"] = tracking_db
    from connecto.db.client import get_client

    client = get_client()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    blocks = (size // BLOCK) ** 3
    try:
        first = write_config(work / "affs", db_name, size, 1, "affs")
        connecto("segment", "gt-affinities", "-c", first, cwd=work)
        print(f"crop {size}^3 voxels, {blocks} blocks of {BLOCK}^3, fragments step")
        print(f"{'workers':>8} {'local s':>9} {'slurm s':>9} {'local blk/s':>12} "
              f"{'slurm blk/s':>12} {'slurm/local':>12}")  # fmt: skip
        for count in counts:
            seconds = {}
            for where in ("local", "slurm"):
                graph = f"{where}{count}"
                config = write_config(work / graph, db_name, size, count, graph)
                if where == "slurm":
                    slurm_workers(config.parent)
                start = time.perf_counter()
                connecto("segment", "fragments", "-c", config, cwd=config.parent)
                seconds[where] = time.perf_counter() - start
            print(f"{count:>8} {seconds['local']:>9.1f} {seconds['slurm']:>9.1f} "
                  f"{blocks / seconds['local']:>12.2f} {blocks / seconds['slurm']:>12.2f} "
                  f"{seconds['slurm'] / seconds['local']:>12.2f}")  # fmt: skip
        for group in (False, True):
            what = "driver and its local processes" if group else "driver alone"
            seconds = driver_death(work, db_name, size, group)
            print(f"SIGKILL of the {what} -> no worker job in squeue: {seconds:.1f} s "
                  f"(bound {DRIVER_GONE_BOUND_S} s)")  # fmt: skip
    finally:
        client.drop_database(db_name)
        client.drop_database(tracking_db)
        shutil.rmtree(work, ignore_errors=True)


def driver_death(work: Path, db_name: str, size: int, group: bool) -> float:
    """Seconds from SIGKILL of a driver with 2 running SLURM workers to none in squeue;
    `group`: of the driver's whole process group (its spawners too: the workers' own
    watchdog must notice), else of the driver alone (its spawners cancel the jobs)."""
    name = "killedgroup" if group else "killed"
    config = write_config(work / name, db_name, size, 2, name)
    slurm_workers(config.parent)
    tracking_db = os.environ["CONNECTO_TRACKING_DB"]
    from connecto.db.client import get_client

    blocks = get_client()[db_name][f"{name}_blocks"]
    driver = subprocess.Popen([*CONNECTO, "segment", "fragments", "-c", str(config)], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while blocks.count_documents({"task": f"fragments_{name}-extract-frags"}) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers finished no block in 300 s")
            time.sleep(0.2)
        if group:
            os.killpg(driver.pid, signal.SIGKILL)
        else:
            driver.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        driver.wait()
    finally:
        driver.kill()
    while worker_jobs_queued(tracking_db, name) and time.monotonic() - killed < 120:
        time.sleep(0.1)
    return time.monotonic() - killed


if __name__ == "__main__":
    main()
