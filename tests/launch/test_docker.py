"""Jobs in real Docker containers (the engine `make ci-services` starts, a local image): the
command runs inside the container as the caller, reaches the MongoDB server, exits with its
code; cancelling stops the container; the same through SLURM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connecto.config import WorkerConfig
from connecto.db.client import tracking_database
from connecto.launch.docker import LABEL, client
from connecto.launch.jobs import cancel_jobs, list_jobs, wait_for_jobs
from connecto.launch.submit import submit_command
from tests.launch.fixtures import build_test_image, venv_mounts, wait_until

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def image() -> str:
    return build_test_image()


def docker_worker(image: str, **fields: object) -> WorkerConfig:
    values = {"launcher": "docker", "container": image, "num_cpus": 1, "num_gpus": 0}
    return WorkerConfig(**{**values, "mount_dirs": venv_mounts(), **fields})


def test_job_runs_inside_a_container(image: str, tmp_path: Path, tracking_db: str) -> None:
    script = (
        "test -f /.dockerenv && echo in-container; id -u; id -g; "
        "connecto db status && echo db-reached; "
        "echo written > result.txt"
    )
    [job] = submit_command(["bash", "-c", script], tmp_path, docker_worker(image), "probe")
    assert job["launcher"] == "docker" and job["image"] == image
    assert job["image_digest"].startswith("sha256:")
    [job] = wait_for_jobs(tracking_database(), [job], quiet=True)
    log = Path(job["log_path"]).read_text()
    assert job["state"] == "completed", log
    assert "in-container" in log and "db-reached" in log
    assert f"\n{os.getuid()}\n{os.getgid()}\n" in log
    assert (tmp_path / "result.txt").stat().st_uid == os.getuid()

    [bad] = submit_command(["bash", "-c", "exit 5"], tmp_path, docker_worker(image), "bad")
    [bad] = wait_for_jobs(tracking_database(), [bad], quiet=True)
    assert (bad["state"], bad["exit_code"]) == ("failed", 5)


def test_cancel_stops_the_container(image: str, tmp_path: Path, tracking_db: str) -> None:
    db = tracking_database()
    [job] = submit_command(["sleep", "300"], tmp_path, docker_worker(image), "sleeper")
    label = {"label": f"{LABEL}={job['log_path']}"}
    wait_until(
        lambda: client().containers.list(filters=label, ignore_removed=True),
        60,
        "the container to start",
    )
    [job] = cancel_jobs(db, [job])
    assert job["state"] == "cancelled"
    gone = lambda: not client().containers.list(all=True, filters=label, ignore_removed=True)  # noqa: E731
    wait_until(gone, 30, "the container to be stopped and removed")
    assert list_jobs(db)[-1]["state"] == "cancelled"


@pytest.mark.slurm
def test_container_through_slurm(image: str, tmp_path: Path, tracking_db: str) -> None:
    from tests.launch.fixtures import slurm_unavailable

    if reason := slurm_unavailable():
        pytest.skip(reason)
    worker = docker_worker(image, scheduler="slurm", queue="gpu_any")
    [job] = submit_command(["bash", "-c", "test -f /.dockerenv"], tmp_path, worker, "in-slurm")
    [job] = wait_for_jobs(tracking_database(), [job], quiet=True)
    assert job["scheduler"] == "slurm" and job["state"] == "completed", job
