"""Blockwise workers of `connecto segment` as SLURM jobs (the real single-node cluster of
`make ci-services`): the same fragments as local workers, tracked in `jobs`; a SIGKILLed
driver leaves no worker job behind and its rerun does only the missing blocks; a block
that keeps failing makes the step fail, naming it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from funlib.persistence import open_ds
from pymongo import MongoClient

from connecto.launch.base import FINAL_STATES
from connecto.launch.worker import EXIT_DRIVER_GONE
from connecto.launch.workers import DRIVER_GONE_BOUND_S
from tests.conftest import CONNECTO, REPO, needs_neuroproof, run_connecto
from tests.launch.fixtures import (  # noqa: F401 (slurm is a fixture)
    build_test_image,
    job_docs,
    slurm,
    venv_mounts,
    wait_until,
    write_worker,
)
from tests.tasks.segmentation.test_workflow import write_config

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm"), needs_neuroproof]

FRAGMENTS = "fragments-extract-frags"  # the fragments step's task in the blocks collection


@pytest.fixture(scope="module")
def affinities(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Path:
    """An output container with the crop's ground-truth affinities (made once)."""
    work = tmp_path_factory.mktemp("affinities")
    config = write_config(work, "unused")
    made = run_connecto("segment", "gt-affinities", "-c", config, cwd=work)
    assert made.returncode == 0, made.stderr
    return work / "segment.zarr"


def remote_setup(directory: Path, db_name: str, affinities: Path, **extra: object) -> Path:
    """A segment setup whose 2 workers are SLURM jobs, with the affinities in its container."""
    directory.mkdir()
    shutil.copytree(affinities, directory / "segment.zarr")
    write_worker(directory / "worker_config.toml", scheduler="slurm", queue="debug",
                 time_limit="10:00")  # fmt: skip
    return write_config(directory, db_name, **{"num_workers": 2, **extra})


def squeue_workers(
    group: str | None, client: MongoClient, tracking_db: str, states: str | None = None
) -> list[str]:
    """The worker jobs (of `group`, or of any) SLURM still lists (queued or running), or
    lists in `states`."""
    ids = [d["job_id"] for d in job_docs(client, tracking_db)
           if d.get("worker_group") and group in (None, d["worker_group"])]  # fmt: skip
    if not ids:
        return []
    only = ["-t", states] if states else []
    out = subprocess.run(["squeue", "-h", *only, "-o", "%i", "-j", ",".join(ids)],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.split()


def blocks_done(
    client: MongoClient, db_name: str, graph: str, task: str = FRAGMENTS
) -> dict[int, object]:
    found = client[db_name][f"{graph}_blocks"].find({"task": task})
    return {d["block_id"]: d["finished"] for d in found}


def test_slurm_workers_give_the_local_result(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    container = tmp_path / "segment.zarr"
    remote = remote_setup(
        tmp_path / "remote", db_name, affinities, graph="remote",
        output_container=str(container), fragments_dataset="fragments_slurm",
    )  # fmt: skip
    shutil.copytree(affinities, container)
    local = write_config(tmp_path, db_name, num_workers=2, graph="local")
    assert connecto("segment", "fragments", "-c", local, cwd=tmp_path).returncode == 0

    run = connecto("segment", "fragments", "-c", remote, cwd=tmp_path)
    assert run.returncode == 0, run.stderr

    local_frags, remote_frags = (open_ds(container / n) for n in ("fragments", "fragments_slurm"))
    same = local_frags.to_ndarray(local_frags.roi)
    assert np.array_equal(remote_frags.to_ndarray(remote_frags.roi), same)
    assert len(blocks_done(mongo_client, db_name, "remote", "fragments_slurm-extract-frags")) == 8
    nodes = {
        g: mongo_client[db_name][f"{g}_nodes"].count_documents({}) for g in ("local", "remote")
    }
    assert nodes["remote"] == nodes["local"] > 0

    workers = [d for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert workers and all(d["scheduler"] == "slurm" and d["kind"] == "worker" for d in workers)
    assert any(d["state"] == "completed" and d["exit_code"] == 0 for d in workers)
    # SLURM knows them (accounting), and their env file, holding the URI, is the owner's
    accounted = subprocess.run(["sacct", "-n", "-X", "-o", "JobID,State", "-j",
                                ",".join(d["job_id"] for d in workers)],
                               capture_output=True, text=True).stdout  # fmt: skip
    assert all(d["job_id"] in accounted for d in workers)
    env_file = Path(workers[0]["script_path"]).with_suffix(".env")
    assert "CONNECTO_MONGO_URI" in env_file.read_text() and env_file.stat().st_mode & 0o077 == 0
    assert "mongodb://" not in Path(workers[0]["script_path"]).read_text()


def test_sigkilled_driver_leaves_no_worker_and_rerun_does_the_rest(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    # 64 blocks of 16^3 voxels: the run takes a few seconds with 2 workers
    config = remote_setup(tmp_path / "setup", db_name, affinities, block_size=[16, 16, 16])
    setup = config.parent
    driver = subprocess.Popen(
        [*CONNECTO, "segment", "fragments", "-c", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(blocks_done(mongo_client, db_name, "neuroproof_gt")) >= 4, 120,
                   "the remote workers to finish some blocks")  # fmt: skip
        group = next(d["worker_group"] for d in job_docs(mongo_client, tracking_db))
        assert squeue_workers(group, mongo_client, tracking_db)
        # the driver and the processes it started on this host (daisy's, waiting for the
        # jobs) all at once: nothing of the driver's side can cancel the jobs, the workers
        # themselves notice
        os.killpg(driver.pid, signal.SIGKILL)
        killed = time.monotonic()
        driver.wait(timeout=10)
    finally:
        driver.kill()
    wait_until(lambda: not squeue_workers(group, mongo_client, tracking_db),
               DRIVER_GONE_BOUND_S, "the worker jobs to end")  # fmt: skip
    print(f"workers gone {time.monotonic() - killed:.1f} s after the driver's SIGKILL")
    before = blocks_done(mongo_client, db_name, "neuroproof_gt")
    assert 4 <= len(before) < 64

    rerun = connecto("segment", "fragments", "-c", config, cwd=setup)
    assert rerun.returncode == 0, rerun.stderr
    after = blocks_done(mongo_client, db_name, "neuroproof_gt")
    assert len(after) == 64
    assert all(after[block] == finished for block, finished in before.items())  # not redone


def test_sigterm_on_the_driver_cancels_its_workers(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path
) -> None:
    """SIGTERM (a cluster's preemption of the driver, `kill`) stops the run as Ctrl-C does
    (daisy's scheduler answers only SIGINT) and cancels the worker jobs."""
    config = remote_setup(tmp_path / "setup", db_name, affinities, block_size=[16, 16, 16])
    driver = subprocess.Popen(
        [*CONNECTO, "segment", "fragments", "-c", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(blocks_done(mongo_client, db_name, "neuroproof_gt")) >= 1, 120,
                   "the remote workers to finish a block")  # fmt: skip
        group = next(d["worker_group"] for d in job_docs(mongo_client, tracking_db))
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=DRIVER_GONE_BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 130, err
    assert not squeue_workers(group, mongo_client, tracking_db)
    # cancelled, or (daisy told them first) ended: no more blocks, or their scheduler gone
    workers = [d for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert all(d["state"] in FINAL_STATES for d in workers)
    assert all(d["exit_code"] in (0, EXIT_DRIVER_GONE) for d in workers if d["state"] == "failed")
    assert len(blocks_done(mongo_client, db_name, "neuroproof_gt")) < 64


def test_a_block_failing_on_every_try_fails_the_step_naming_it(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    # without context each block reads only its own chunk of the affinities
    config = remote_setup(tmp_path / "setup", db_name, affinities, context=[0, 0, 0])
    setup = config.parent
    chunk = setup / "segment.zarr" / "affs" / "0" / "1" / "1" / "1"
    assert chunk.is_file()
    chunk.write_bytes(b"not a compressed chunk")  # the block at (1, 1, 1) cannot be read

    run = connecto("segment", "fragments", "-c", config, cwd=setup)
    assert run.returncode == 1
    message = run.stderr.strip().splitlines()[-1]
    named = re.search(
        r"fragments: 1 block\(s\) not done after 3 tries \(block ids (\d+)\)", message
    )
    assert named, run.stderr
    done = blocks_done(mongo_client, db_name, "neuroproof_gt")
    assert len(done) == 7 and int(named.group(1)) not in done
    assert f"block tracebacks in {setup / 'logs'}" in message and "worker job logs" in message
    # every worker job ended: completed, or failed on the bad block
    workers = [d for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert not squeue_workers(workers[0]["worker_group"], mongo_client, tracking_db)


def test_killed_worker_jobs_are_replaced_and_their_blocks_retried(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    config = remote_setup(tmp_path / "setup", db_name, affinities, block_size=[16, 16, 16])
    driver = subprocess.Popen(
        [*CONNECTO, "segment", "fragments", "-c", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: len(blocks_done(mongo_client, db_name, "neuroproof_gt")) >= 2, 120,
                   "the remote workers to finish some blocks")  # fmt: skip

        def both_running() -> list[str] | None:
            running = squeue_workers(None, mongo_client, tracking_db, states="R")
            return running if len(running) == 2 else None

        victims = wait_until(both_running, 60, "both worker jobs to run")
        # Both die: with no worker left, the run finishes only if daisy's slots submit
        # replacement jobs (killing one would race its replacement against the survivor).
        for job_id in victims:
            subprocess.run(["scancel", "--signal=KILL", job_id], check=True)
        _, err = driver.communicate(timeout=300)
    finally:
        driver.kill()
    assert driver.returncode == 0, err
    assert len(blocks_done(mongo_client, db_name, "neuroproof_gt")) == 64
    workers = [d["job_id"] for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert set(victims) < set(workers)  # replacements were submitted


def test_resources_slurm_refuses_fail_before_the_run(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    config = remote_setup(tmp_path / "setup", db_name, affinities)
    write_worker(config.parent / "worker_config.toml", scheduler="slurm", queue="no_such_queue")
    run = connecto("segment", "fragments", "-c", config, cwd=config.parent)
    assert run.returncode == 1
    assert "worker_config.toml: SLURM refuses these resources" in run.stderr
    assert "no_such_queue" in run.stderr or "partition" in run.stderr
    assert job_docs(mongo_client, tracking_db) == []


@pytest.mark.docker
def test_workers_in_the_image_reach_the_embedded_mongodb(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    image = build_test_image()
    config = remote_setup(tmp_path / "setup", db_name, affinities)
    write_worker(config.parent / "worker_config.toml", scheduler="slurm", queue="debug",
                 launcher="docker", container=image, mount_dirs=venv_mounts())  # fmt: skip
    run = connecto("segment", "fragments", "-c", config, cwd=config.parent)
    assert run.returncode == 0, run.stderr
    assert len(blocks_done(mongo_client, db_name, "neuroproof_gt")) == 8
    workers = [d for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert workers and all(d["launcher"] == "docker" and d["image"] == image for d in workers)
    assert any("container" in Path(d["log_path"]).read_text() for d in workers)


def test_the_driver_as_a_job_submits_its_workers(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, affinities: Path,
    connecto,
) -> None:  # fmt: skip
    config = remote_setup(tmp_path / "setup", db_name, affinities, num_workers=1)
    run = connecto("segment", "fragments", "-c", config, "--submit", "--wait", cwd=config.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    [driver] = [d for d in job_docs(mongo_client, tracking_db) if d.get("kind") == "segment"]
    assert driver["state"] == "completed", Path(driver["log_path"]).read_text()
    assert (driver["scheduler"], driver["kind"]) == ("slurm", "segment")
    assert len(blocks_done(mongo_client, db_name, "neuroproof_gt")) == 8
    [worker] = [d for d in job_docs(mongo_client, tracking_db) if d.get("worker_group")]
    assert (worker["state"], worker["scheduler"]) == ("completed", "slurm")
    assert "fragments" in Path(driver["log_path"]).read_text()
