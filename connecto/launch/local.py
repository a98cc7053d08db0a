"""The local launcher (the command as it is) and the `none` scheduler (a detached local
process in its own session, tracked by pid and exit file)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from connecto import ConnectoError
from connecto.launch.base import (
    Resources,
    Status,
    Task,
    final_status,
    job_script,
    read_exit_file,
    write_env_file,
)
from connecto.processes import pid_alive


def connecto_argv() -> list[str]:
    """This installation's `connecto` command (the interpreter running now)."""
    return [sys.executable, "-m", "cli.main"]


def resolve_command(command: Sequence[str]) -> list[str]:
    if command and command[0] == "connecto":
        return [*connecto_argv(), *command[1:]]
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
    """Runs each task as a detached process on this host; job id `<host>:<pid>`."""

    name = "none"

    def submit(
        self,
        argvs: Sequence[Sequence[str]],
        tasks: Sequence[Task],
        resources: Resources,
        job_name: str,
        env: Mapping[str, str],
        script_path: Path,
    ) -> list[str]:
        ids = []
        env_file = write_env_file(script_path.with_suffix(".env"), env)
        for number, (argv, task) in enumerate(zip(argvs, tasks, strict=True)):
            path = script_path.with_name(f"{script_path.stem}.{number}.sh")
            path.write_text(job_script([argv], [task], env_file))
            process = subprocess.Popen(
                ["bash", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: cancel reaches all of it
                close_fds=True,
            )
            ids.append(f"{socket.gethostname()}:{process.pid}")
        return ids

    def states(self, jobs: Sequence[Mapping[str, object]]) -> dict[str, Status]:
        out = {}
        for job in jobs:
            job_id = str(job["job_id"])
            host, _, pid = job_id.rpartition(":")
            if host != socket.gethostname():
                continue  # only the host that runs it can tell
            exit_code = read_exit_file(Path(str(job["log_path"])).with_suffix(".exit"))
            if exit_code is not None:
                out[job_id] = final_status(exit_code, bool(job.get("cancel_requested")))
            elif pid_alive(int(pid)):
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
