"""Jobs through the real single-node SLURM cluster (`make ci-services`): completed, failed
with its exit code, cancelled with scancel, a job array, Ctrl-C on a --wait submission."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pymongo import MongoClient

from connecto.config import WorkerConfig
from connecto.db.client import tracking_database
from connecto.launch.jobs import cancel_jobs, list_jobs, wait_for_jobs
from connecto.launch.submit import make_task, submit_command, submit_tasks
from tests.launch.fixtures import (  # noqa: F401 (slurm is a fixture)
    interrupt_waiting_driver,
    job_docs,
    slurm,
    wait_until,
    write_worker,
)  # noqa: F401 (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm")]

WORKER = WorkerConfig(scheduler="slurm", queue="debug", num_cpus=1, num_gpus=0, time_limit="10:00")


def squeue_has(job_id: str) -> bool:
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id.split("_")[0]], capture_output=True, text=True
    )
    return bool(out.stdout.strip())


def test_slurm_job_completes_and_fails(tmp_path: Path, tracking_db: str) -> None:
    [ok] = submit_command(["bash", "-c", "echo on $SLURM_JOB_PARTITION"], tmp_path, WORKER, "ok")
    [bad] = submit_command(["bash", "-c", "echo broken; exit 3"], tmp_path, WORKER, "bad")
    assert ok["job_id"].isdigit() and ok["scheduler"] == "slurm"
    ok, bad = wait_for_jobs(tracking_database(), [ok, bad], quiet=True)
    assert (ok["state"], ok["exit_code"]) == ("completed", 0)
    assert "on debug" in Path(ok["log_path"]).read_text()
    assert (bad["state"], bad["exit_code"]) == ("failed", 3)
    assert "broken" in Path(bad["log_path"]).read_text()


def test_slurm_cancel(tmp_path: Path, tracking_db: str) -> None:
    db = tracking_database()
    [job] = submit_command(["sleep", "300"], tmp_path, WORKER, "sleeper")
    wait_until(lambda: list_jobs(db)[-1]["state"] == "running", 60, "the job to run")
    [cancelled] = cancel_jobs(db, [job])
    assert cancelled["state"] == "cancelled"
    assert cancelled["reason"] is None  # SLURM's word, not our fallback
    assert not squeue_has(job["job_id"])


def test_slurm_array(tmp_path: Path, tracking_db: str) -> None:
    tasks = []
    for number in range(3):
        work = tmp_path / f"setup_{number}"
        work.mkdir()
        tasks.append(make_task(["bash", "-c", f"echo task {number} in $PWD"], work, f"t{number}"))
    docs = submit_tasks(tasks, WORKER, "array-test")
    array_id = docs[0]["job_id"].split("_")[0]
    assert [d["job_id"] for d in docs] == [f"{array_id}_{i}" for i in range(3)]
    docs = wait_for_jobs(tracking_database(), docs, quiet=True)
    assert [d["state"] for d in docs] == ["completed"] * 3
    for number, doc in enumerate(docs):
        log = Path(doc["log_path"])
        assert log.parent == tmp_path / f"setup_{number}" / "jobs"
        assert f"task {number} in {tmp_path / f'setup_{number}'}" in log.read_text()


def test_ctrl_c_on_wait_scancels(
    tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    worker = write_worker(tmp_path / "worker.toml", scheduler="slurm", queue="gpu_any")
    job, returncode, err = interrupt_waiting_driver(
        mongo_client, tracking_db,
        ["--worker-config", str(worker), "--dir", str(tmp_path), "--", "sleep", "300"],
    )  # fmt: skip
    assert returncode == 130, err
    doc = mongo_client[tracking_db]["jobs"].find_one({"_id": job["_id"]})
    assert doc["state"] == "cancelled"
    assert not squeue_has(job["job_id"])
