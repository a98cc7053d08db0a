"""The MongoDB password never lands in a world-readable file or on a command line: every
job gets the URI from a 0600 file (or its process environment), through every launcher and
scheduler. Local jobs run for real; SLURM and LSF submissions are rendered (stand-ins for
sbatch and bsub record their command lines and answer a job id); docker's spec is rendered."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from connecto.config import WorkerConfig
from connecto.launch.docker import ContainerSpec, DockerLauncher
from connecto.launch.submit import job_environment, make_task, submit_command, submit_tasks
from connecto.settings import load_settings

USER, PASSWORD = "jobuser", "Zebra-5ecret-4711"
FAKE_SCHEDULERS = {
    "sbatch": 'printf "%s\\n" "$@" >>"$(dirname "$0")/argv.txt"; echo 4242',
    "bsub": 'printf "%s\\n" "$@" >>"$(dirname "$0")/argv.txt"; echo "Job <4243> is submitted"',
}


@pytest.fixture
def secret_uri(
    mongo_client: MongoClient, mongo_uri: str, tracking_db: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """CONNECTO_MONGO_URI with a user and password that the test server checks."""
    if "@" in mongo_uri or "?" in mongo_uri:
        pytest.skip("the test server's URI carries its own credentials or options")
    db = mongo_client[tracking_db]
    db.command("createUser", USER, pwd=PASSWORD, roles=[{"role": "readWrite", "db": tracking_db}])
    uri = mongo_uri.replace("://", f"://{USER}:{PASSWORD}@", 1) + f"?authSource={tracking_db}"
    monkeypatch.setenv("CONNECTO_MONGO_URI", uri)
    yield uri
    db.command("dropUser", USER)


def fake_schedulers(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory.mkdir()
    for name, body in FAKE_SCHEDULERS.items():
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{directory}:{os.environ['PATH']}")
    return directory / "argv.txt"


def files_holding(root: Path, secret: str) -> dict[Path, int]:
    """Every file under `root` whose bytes contain `secret`, with its permission bits."""
    return {
        path: stat.S_IMODE(path.stat().st_mode)
        for path in root.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    }


def test_password_only_in_owner_only_files(
    tmp_path: Path, secret_uri: str, tracking_db: str, mongo_client: MongoClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    argv_log = fake_schedulers(tmp_path / "bin", monkeypatch)

    # A local job, run for real: it has the URI (its log shows only the URI's hash).
    local = tmp_path / "local"
    local.mkdir()
    hash_uri = ["bash", "-c", 'printf %s "$CONNECTO_MONGO_URI" | sha256sum']
    [done] = submit_command(hash_uri, local, name="local", wait=True)
    assert done["state"] == "completed", Path(done["log_path"]).read_text()
    assert hashlib.sha256(secret_uri.encode()).hexdigest() in Path(done["log_path"]).read_text()

    # SLURM and LSF jobs, with the local and the apptainer launcher, rendered.
    image = tmp_path / "connecto.sif"
    image.write_bytes(b"not really an image")
    for scheduler in ("slurm", "lsf"):
        for launcher in ("local", "apptainer"):
            work = tmp_path / f"{scheduler}-{launcher}"
            work.mkdir()
            worker = WorkerConfig(
                scheduler=scheduler, launcher=launcher, container=str(image), num_gpus=0
            )
            tasks = [make_task(["connecto", "runs"], work, f"t{n}") for n in range(2)]
            submit_tasks(tasks, worker)
            assert files_holding(work / "jobs", PASSWORD), "the job must get the URI somehow"

    # docker: the spec on disk, and what the runner hands the container.
    work = tmp_path / "docker"
    task = make_task(["connecto", "runs"], work, "d", mounts=[work])
    task.log_path.parent.mkdir(parents=True)
    argv = DockerLauncher("connecto:latest").prepare(task, job_environment(load_settings()))

    leaks = {path: oct(mode) for path, mode in files_holding(tmp_path, PASSWORD).items()}
    assert all(int(mode, 8) & 0o077 == 0 for mode in leaks.values()), leaks
    assert any(path.suffix == ".env" for path in leaks)
    jobs = list(mongo_client[tracking_db]["jobs"].find())
    assert len(jobs) == 9
    argvs = [*(job["argv"] for job in jobs), argv, argv_log.read_text().split("\n")]
    assert not [a for a in argvs if PASSWORD in " ".join(a)]

    # The docker runner (in the job, which has the URI) hands it to the container.
    spec = ContainerSpec(**json.loads(Path(argv[-1]).read_text()))
    assert spec.environment({"CONNECTO_MONGO_URI": secret_uri})["CONNECTO_MONGO_URI"] == secret_uri
