"""Job tracking with the local scheduler (detached processes): completed, failed with its
exit code and log, cancelled, Ctrl-C on --wait, a job killed without an exit code."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from launch_fixtures import interrupt_waiting_driver, job_docs, wait_until
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.db.client import tracking_database
from connecto.launch.jobs import cancel_jobs, find_job, list_jobs, log_tail, wait_for_jobs
from connecto.launch.local import pid_alive
from connecto.launch.submit import submit_command


def test_completed_and_failed_jobs(tmp_path: Path, tracking_db: str, connecto) -> None:
    ok = submit_command(["bash", "-c", "echo hello from $PWD"], tmp_path, name="ok", wait=True)
    bad = submit_command(["bash", "-c", "echo oh no >&2; exit 3"], tmp_path, name="bad", wait=True)
    assert (ok[0]["state"], ok[0]["exit_code"]) == ("completed", 0)
    assert f"hello from {tmp_path}" in Path(ok[0]["log_path"]).read_text()
    assert (bad[0]["state"], bad[0]["exit_code"]) == ("failed", 3)
    assert "oh no" in log_tail(bad[0]["log_path"])
    assert ok[0]["scheduler"] == "none" and ok[0]["launcher"] == "local"
    assert Path(ok[0]["log_path"]).parent == tmp_path / "jobs"

    listed = connecto("jobs", "--tail", "3")
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if ok[0]["_id"] in line]
    assert rows and "completed" in rows[0]
    failed_rows = [line for line in listed.stdout.splitlines() if bad[0]["_id"] in line]
    assert any("failed" in row and "3" in row for row in failed_rows)
    assert "oh no" in listed.stdout  # the failed job's log tail


def test_cli_wait_returns_the_exit_code(tmp_path: Path, tracking_db: str, connecto) -> None:
    result = connecto("jobs", "run", "--wait", "--dir", tmp_path, "--", "bash", "-c",
                      "echo failing now; exit 4")  # fmt: skip
    assert result.returncode == 4
    assert "failed (exit code 4)" in result.stdout
    assert "failing now" in result.stderr  # the log tail of the failure


def test_cancel_and_lost_jobs(tmp_path: Path, tracking_db: str, mongo_client: MongoClient) -> None:
    db = tracking_database()
    [job] = submit_command(["sleep", "120"], tmp_path, name="sleeper")
    pid = int(job["job_id"].rsplit(":", 1)[1])
    wait_until(lambda: list_jobs(db)[-1]["state"] == "running", what="the job to run")
    [cancelled] = cancel_jobs(db, [find_job(db, job["_id"][:6])])
    assert cancelled["state"] == "cancelled"
    wait_until(lambda: not pid_alive(pid), 10, "the job's process to end")

    # A job killed outright (no exit code) is failed, never completed.
    [lost] = submit_command(["sleep", "120"], tmp_path, name="lost")
    wait_until(lambda: list_jobs(db)[-1]["state"] == "running", what="the job to run")
    os.killpg(int(lost["job_id"].rsplit(":", 1)[1]), signal.SIGKILL)
    [final] = wait_for_jobs(db, [lost], quiet=True)
    assert final["state"] == "failed" and final["exit_code"] is None
    states = {doc["name"]: doc["state"] for doc in job_docs(mongo_client, tracking_db)}
    assert states == {"sleeper": "cancelled", "lost": "failed"}

    with pytest.raises(ConnectoError, match="no job"):
        find_job(db, "nosuchjob")


def test_ctrl_c_on_wait_cancels_the_job(
    tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    job, returncode, err = interrupt_waiting_driver(
        mongo_client, tracking_db, ["--dir", str(tmp_path), "--", "sleep", "120"]
    )
    assert returncode == 130, err
    doc = mongo_client[tracking_db]["jobs"].find_one({"_id": job["_id"]})
    assert doc["state"] == "cancelled" and doc["cancel_requested"]
    assert not pid_alive(int(job["job_id"].rsplit(":", 1)[1]))
