"""The local launcher (the command as it is) and the `none` scheduler (a detached local
process in its own session, tracked by pid and exit file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.launch.base import (
    JobBatch,
    Status,
    Task,
    final_status,
    job_exit_code,
)
from connecto.processes import pid_alive, process_gone, process_record, process_start


def process_alive(record: object, pid: int) -> bool | None:
    """Whether the job's process still runs: by its record (pid and start: a reused pid is
    another process), else (documents from before records) by its pid alone. None when the
    record is from another host or PID namespace, where this one cannot tell."""
    if not isinstance(record, Mapping) or not record.get("pid_started"):
        # Not recorded, or it ended before its start could be read (its exit file tells).
        return pid_alive(pid)
    if process_gone(record):
        return False
    here = process_record()
    if (record.get("host"), record.get("pid_namespace")) != (here["host"], here["pid_namespace"]):
        return None
    return process_start(int(record["pid"])) == record["pid_started"]


def connecto_argv() -> list[str]:
    """This installation's `connecto` command: the script installed beside the running
    interpreter, so a job runs the same installation whatever its PATH says."""
    script = Path(sysconfig.get_path("scripts")) / "connecto"
    if not script.is_file():
        raise ConnectoError(
            f"{script}: no `connecto` command beside this Python; install connecto "
            "(`make install`, or `pip install -e .`)"
        )
    return [str(script)]


def resolve_command(command: Sequence[str]) -> list[str]:
    """`connecto ...` and `python -m connecto.<module> ...` (a blockwise worker) run with
    this installation; anything else as it is."""
    if command and command[0] == "connecto":
        return [*connecto_argv(), *command[1:]]
    if len(command) > 2 and command[0] == "python" and command[1] == "-m":
        if command[2].split(".")[0] == "connecto":
            return [sys.executable, *command[1:]]
    return list(command)


class LocalLauncher:
    name = "local"
    image: str | None = None

    def prepare(self, task: Task, env: Mapping[str, str]) -> list[str]:
        return resolve_command(task.command)

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)

    def image_digest(self) -> str | None:
        return None


class LocalScheduler:
    """Runs each task as a detached process on this host; job id `<host>:<pid>`.

    One script (at `script_path`, the path the job documents record) serves all the tasks
    of a submission, as a SLURM array's does: each process runs it with its task number.
    Each process is recorded (`launched`, stored in its job document as `process`) with its
    start, so a pid the kernel has since given to another process is not taken for the job.
    """

    name = "none"

    def __init__(self) -> None:
        self.launched: dict[str, dict[str, Any]] = {}  # job id -> its process record

    def submit(self, batch: JobBatch) -> list[str]:
        ids = []
        script = batch.write_script("${1:-0}")
        for number in range(len(batch.tasks)):
            process = subprocess.Popen(
                ["bash", str(script), str(number)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel reaches all of it
                close_fds=True,
            )
            job_id = f"{socket.gethostname()}:{process.pid}"
            self.launched[job_id] = {
                **process_record(),
                "pid": process.pid,
                "pid_started": process_start(process.pid),
            }
            ids.append(job_id)
        return ids

    def states(self, jobs: Sequence[Mapping[str, object]]) -> dict[str, Status]:
        out = {}
        for job in jobs:
            job_id = str(job["job_id"])
            host, _, pid = job_id.rpartition(":")
            if host != socket.gethostname():
                continue  # only the host that runs it can tell
            exit_code = job_exit_code(job)
            if exit_code is not None:
                out[job_id] = final_status(exit_code, bool(job.get("cancel_requested")))
                continue
            alive = process_alive(job.get("process"), int(pid))
            if alive is None:
                continue  # recorded in another container: only there can one tell
            if alive:
                out[job_id] = Status("running")
            else:
                # Gone without an exit code: killed (by a cancel, or by the machine).
                cancelled = bool(job.get("cancel_requested"))
                out[job_id] = final_status(None, cancelled)
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            host, _, pid = job_id.rpartition(":")
            if host != socket.gethostname():
                raise ConnectoError(f"job {job_id} runs on {host}; cancel it there")
            try:
                os.killpg(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
