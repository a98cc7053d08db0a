"""Job tracking with the local scheduler (detached processes): completed, failed with its
exit code and log, cancelled, Ctrl-C on --wait, a job killed without an exit code."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.db.client import tracking_database
from connecto.db.tracking import now
from connecto.launch.jobs import cancel_jobs, find_job, list_jobs, log_tail, wait_for_jobs
from connecto.launch.local import pid_alive
from connecto.launch.submit import make_task, submit_command, submit_tasks
from connecto.processes import process_record, process_start
from tests.launch.fixtures import interrupt_waiting_driver, job_docs, wait_until


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


# ------------------------------------------------ nothing lost, nobody in, no orphans


def insert_job(mongo_client: MongoClient, tracking_db: str, tmp_path: Path, **fields) -> dict:
    """A job document as `submit` records it, with `fields` overriding."""
    token = uuid.uuid4().hex[:12]
    doc = {
        "_id": token, "name": f"job-{token[:4]}", "kind": "command", "setup_dir": None,
        "workdir": str(tmp_path), "scheduler": "none", "job_id": "", "launcher": "local",
        "command": ["sleep", "60"], "image": None, "image_digest": None, "state": "running",
        "exit_code": None, "reason": None, "log_path": str(tmp_path / f"job-{token}.log"),
        "script_path": str(tmp_path / f"job-{token}.sh"), "submitted": now(),
        "host": socket.gethostname(), "user": "tester", "cancel_requested": False, **fields,
    }  # fmt: skip
    mongo_client[tracking_db]["jobs"].insert_one(doc)
    return doc


def show_fields(output: str) -> dict[str, str]:
    return {
        key.strip(): value.strip()
        for key, sep, value in (line.partition(":") for line in output.splitlines())
        if sep and not key.startswith("---")
    }


def test_show_names_the_real_script(tmp_path: Path, tracking_db: str, connecto) -> None:
    submitted = connecto("jobs", "run", "--wait", "--dir", tmp_path, "--", "bash", "-c", "exit 0")
    assert submitted.returncode == 0, submitted.stderr
    [job] = list_jobs(tracking_database())
    shown = connecto("jobs", "show", job["_id"])
    assert shown.returncode == 0, shown.stderr
    script = Path(show_fields(shown.stdout)["script_path"])
    assert script.is_absolute() and script.is_file(), shown.stdout
    assert "bash -c 'exit 0'" in script.read_text()  # the script that ran this job
    assert Path(show_fields(shown.stdout)["log_path"]).is_file()

    # A script deleted since is said to be gone, not shown as if it were there.
    script.unlink()
    shown = connecto("jobs", "show", job["_id"])
    assert shown.returncode == 0, shown.stderr
    assert show_fields(shown.stdout)["script_path"] == f"{script} (gone)"


def test_every_task_of_a_local_array_names_its_script(
    tmp_path: Path, tracking_db: str, connecto
) -> None:
    tasks = [make_task(["bash", "-c", f"echo task {n}"], tmp_path, f"t{n}") for n in range(2)]
    submitted = submit_tasks(tasks, WorkerConfig(num_cpus=1, num_gpus=0))
    docs = wait_for_jobs(tracking_database(), submitted, quiet=True)
    assert [doc["state"] for doc in docs] == ["completed", "completed"]
    for number, doc in enumerate(docs):
        assert f"task {number}" in Path(doc["log_path"]).read_text()
        shown = connecto("jobs", "show", doc["_id"])
        script = Path(show_fields(shown.stdout)["script_path"])
        assert script.is_file(), shown.stdout
        assert f"echo task {number}" in script.read_text()


def stand_in(directory: Path, name: str, stderr: str, code: int) -> Path:
    """An executable `name` in `directory` that fails the way an unreachable scheduler does."""
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho {shlex.quote(stderr)} >&2\nexit {code}\n")
    path.chmod(0o755)
    return directory


SLURM_DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


@pytest.mark.parametrize(
    ("scheduler", "job_id", "tool", "error", "code"),
    [
        ("slurm", "4242", "scontrol", SLURM_DOWN, 1),
        ("slurm", "4243", None, "scontrol is not on PATH", 0),
        ("lsf", "4244", "bjobs", "LSF is down. Please wait ...", 255),
    ],
)
def test_unreachable_scheduler_leaves_the_state_unknown(
    tmp_path: Path, tracking_db: str, mongo_client: MongoClient, connecto,
    scheduler: str, job_id: str, tool: str | None, error: str, code: int,
) -> None:  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if tool:
        stand_in(bin_dir, tool, error, code)
    job = insert_job(mongo_client, tracking_db, tmp_path, scheduler=scheduler, job_id=job_id)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin" if tool else str(bin_dir)}

    listed = connecto("jobs", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [row for row in listed.stdout.splitlines() if job["_id"] in row and "│" in row]
    assert "unknown" in row and "running" in row  # unknown, last known running
    warnings = [line for line in listed.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1, listed.stderr
    assert scheduler in warnings[0] and error in warnings[0]

    shown = connecto("jobs", "show", job_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert show_fields(shown.stdout)["state"] == "unknown (last known: running)"
    assert error in shown.stderr
    # The last known state stays recorded: an outage changes nothing in the database.
    stored = mongo_client[tracking_db]["jobs"].find_one({"_id": job["_id"]})
    assert stored["state"] == "running" and "stale" not in stored


def test_a_reused_pid_is_not_our_job(
    tmp_path: Path, tracking_db: str, mongo_client: MongoClient, connecto
) -> None:
    # The job's process, recorded, then gone; another process gets its pid (here: any live
    # process started after it, which is what the kernel's pid reuse amounts to).
    ended = subprocess.Popen(["sleep", "60"])
    started = process_start(ended.pid)
    ended.kill()
    ended.wait()
    time.sleep(0.05)  # starts are counted in clock ticks (10 ms): a later one differs
    other = subprocess.Popen(["sleep", "120"])
    try:
        record = {**process_record(), "pid": other.pid, "pid_started": started}
        assert started and process_start(other.pid) != started
        job = insert_job(
            mongo_client, tracking_db, tmp_path,
            job_id=f"{socket.gethostname()}:{other.pid}", process=record,
        )  # fmt: skip
        listed = connecto("jobs")
        assert listed.returncode == 0, listed.stderr
        [row] = [row for row in listed.stdout.splitlines() if job["_id"] in row and "│" in row]
        assert "running" not in row and "failed" in row
        assert other.poll() is None  # and nobody touched the other process
    finally:
        other.kill()
        other.wait()


def test_a_local_job_records_its_process(tmp_path: Path, tracking_db: str) -> None:
    db = tracking_database()
    [job] = submit_command(["sleep", "120"], tmp_path, name="recorded")
    pid = int(job["job_id"].rsplit(":", 1)[1])
    try:
        stored = find_job(db, job["_id"])
        assert stored["process"]["pid"] == pid
        assert stored["process"]["pid_started"] == process_start(pid)
        wait_until(lambda: list_jobs(db)[-1]["state"] == "running", what="the job to run")
    finally:
        cancel_jobs(db, [job])


def test_cancel_warns_when_docker_cannot_stop_the_containers(
    tmp_path: Path, tracking_db: str, mongo_client: MongoClient, connecto
) -> None:
    runner = subprocess.Popen(["sleep", "120"], start_new_session=True)  # the container's runner
    try:
        record = {**process_record(), "pid": runner.pid, "pid_started": process_start(runner.pid)}
        job = insert_job(
            mongo_client, tracking_db, tmp_path, launcher="docker", image="some:image",
            job_id=f"{socket.gethostname()}:{runner.pid}", process=record,
        )  # fmt: skip
        engine_down = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
        cancelled = connecto("jobs", "cancel", job["_id"], env=engine_down)
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled" in cancelled.stdout
        runner.wait(timeout=10)  # the runner got the signal
        [warning] = [line for line in cancelled.stderr.splitlines() if "warning" in line]
        assert job["job_id"] in warning and "Docker engine does not answer" in warning
    finally:
        runner.kill()
        runner.wait()
