"""Fixtures for the launch tests: the real SLURM cluster and Docker engine that
`make ci-services` starts, a worker-config writer, and a small local test image."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from pymongo import MongoClient

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = os.environ.get("CONNECTO_CI_IMAGE", "connecto-base:bookworm")
TEST_IMAGE = "connecto-test:venv"
os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def slurm_unavailable() -> str | None:
    """Why SLURM cannot be used here, or None."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed (run `make ci-services`)"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"no SLURM controller answers (`scontrol ping`: {ping.stdout.strip()})"
    return None


def docker_unavailable() -> str | None:
    try:
        import docker

        docker.from_env().ping()
    except Exception as error:
        return f"no Docker engine answers ({error}; run `make ci-services`)"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


def build_test_image() -> str:
    """An image that runs this checkout's connecto: the debootstrapped base image with the
    project (and its .venv) and the interpreter the venv points to bind-mounted read-only at
    the same paths (see `venv_mounts`), and the venv first on PATH."""
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"base image {BASE_IMAGE} is missing: `make ci-services` builds it")
    path = f"{REPO}/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    dockerfile = f"FROM {BASE_IMAGE}\nENV PATH={path}\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=TEST_IMAGE, rm=True)
    return TEST_IMAGE


def venv_mounts() -> list[str]:
    """The checkout (with its .venv) and the base interpreter, read-only."""
    return [f"{REPO}:ro", f"{Path(sys.base_prefix).resolve()}:ro"]


def write_worker(path: Path, **fields: Any) -> Path:
    values = {"num_cpus": 1, "num_gpus": 0, **fields}
    path.write_text(tomli_w.dumps(values))
    return path


def job_docs(client: MongoClient, tracking_db: str) -> list[dict[str, Any]]:
    return list(client[tracking_db]["jobs"].find(sort=[("submitted", 1)]))


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def interrupt_waiting_driver(
    client: MongoClient, tracking_db: str, args: list[str]
) -> tuple[dict[str, Any], int, str]:
    """Run `connecto jobs run --wait ARGS`, press Ctrl-C once its job runs; returns the
    job document as it was when running, the driver's exit code and its stderr."""
    from tests.conftest import CONNECTO

    driver = subprocess.Popen(
        [*CONNECTO, "jobs", "run", "--wait", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        job = wait_until(
            lambda: next(
                (d for d in job_docs(client, tracking_db) if d["state"] == "running"), None
            ),
            timeout=120,
            what="the submitted job to run",
        )
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
    finally:
        driver.kill()
    return job, driver.returncode, err
