"""What every launcher and scheduler shares: a task to run, the resources it asks for,
the job states, and the bash script that runs one task of a (possibly array) job.

A *launcher* turns a task's command into the host-side command line that runs it (directly,
in a Docker container, in an Apptainer container). A *scheduler* runs that command line
somewhere (a detached local process, a SLURM or LSF job) and reports its state.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from connecto.config import WorkerConfig

JobState = Literal["pending", "running", "completed", "failed", "cancelled"]
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATES: tuple[str, ...] = ("pending", "running")


@dataclass(frozen=True)
class Task:
    """One command to run. `command[0] == "connecto"` means the connecto command of wherever
    it runs (the image's entry point in a container, this installation locally)."""

    command: tuple[str, ...]
    workdir: Path
    log_path: Path
    name: str
    kind: str = "command"  # train | predict | command
    mounts: tuple[Path, ...] = ()  # directories the task writes to (the experiment directory)
    setup_dir: Path | None = None

    @property
    def exit_path(self) -> Path:
        return exit_path(self.log_path)


@dataclass(frozen=True)
class Resources:
    queue: str | None = None
    num_cpus: int = 1
    num_gpus: int = 0
    memory_gb: int | None = None
    time_limit: str | None = None  # [D-]HH:MM:SS

    @classmethod
    def from_worker(cls, worker: WorkerConfig) -> Resources:
        return cls(
            queue=worker.queue,
            num_cpus=worker.num_cpus,
            num_gpus=worker.num_gpus,
            memory_gb=worker.memory_gb,
            time_limit=worker.time_limit,
        )


@dataclass(frozen=True)
class Status:
    """A scheduler's word on one job."""

    state: JobState
    exit_code: int | None = None
    reason: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def parse_mount(entry: str | Path) -> tuple[str, str]:
    """A `mount_dirs` entry `DIR` or `DIR:ro` -> (absolute DIR, "rw" | "ro"); bound inside the
    container at the same path, so paths in configs mean the same on both sides."""
    text = str(entry)
    path, mode = (text[:-3], "ro") if text.endswith(":ro") else (text, "rw")
    return str(Path(path).resolve()), mode


def collect_mounts(task: Task, mount_dirs: list[str]) -> dict[str, str]:
    """The task's directories (read-write) and the configured `mount_dirs`."""
    mounts = dict(parse_mount(entry) for entry in mount_dirs)
    for path in (*task.mounts, task.workdir):
        mounts[str(Path(path).resolve())] = "rw"
    return dict(sorted(mounts.items()))


def exit_path(log_path: str | Path) -> Path:
    """Where a job writes its command's exit code (read when the scheduler forgot it)."""
    return Path(log_path).with_suffix(".exit")


def job_exit_code(job: Mapping[str, object]) -> int | None:
    """The exit code a job document's command wrote, if it has ended."""
    return read_exit_file(exit_path(str(job["log_path"])))


def read_exit_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def final_status(exit_code: int | None, cancelled: bool = False) -> Status:
    """The one rule for a finished job: completed only with exit code 0."""
    if cancelled:
        return Status("cancelled", exit_code)
    if exit_code == 0:
        return Status("completed", 0)
    return Status("failed", exit_code, None if exit_code is not None else "no exit code")


def write_private(path: Path, text: str) -> Path:
    """Write a file only its owner can read or write: 0600 from the moment it exists (os.open
    with the mode, never chmod after a write), for secrets such as a MongoDB password."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # a file that existed keeps its mode otherwise
        handle.write(text)
    return path


def write_env_file(path: Path, env: Mapping[str, str]) -> Path:
    """A job's environment (the MongoDB URI with its password, among others) as `KEY='value'`
    lines in an owner-only file, which the job script sources: the script, the logs and the
    command lines, readable by others, never hold a value."""
    lines = [f"{key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    return write_private(path, "".join(f"{line}\n" for line in lines))


@dataclass(frozen=True)
class JobBatch:
    """One submission to a scheduler: the tasks, their commands as launched, the resources,
    the job name, the job's secret environment, and where its script goes."""

    argvs: Sequence[Sequence[str]]
    tasks: Sequence[Task]
    resources: Resources
    name: str
    env: Mapping[str, str]
    script_path: Path

    def write_script(self, index_expr: str) -> Path:
        """The owner-only env file and the job script (see `job_script`)."""
        env_file = write_env_file(self.script_path.with_suffix(".env"), self.env)
        self.script_path.write_text(job_script(self.argvs, self.tasks, env_file, index_expr))
        return self.script_path

    def log_path(self, array_suffix: str) -> Path:
        """One task logs to its own file; an array to the scheduler's pattern beside the
        script (each task's command still appends to its own log)."""
        if len(self.tasks) == 1:
            return self.tasks[0].log_path
        return self.script_path.with_suffix(array_suffix)


def job_script(
    argvs: Sequence[Sequence[str]],
    tasks: Sequence[Task],
    env_file: Path,
    index_expr: str = "0",
) -> str:
    """A bash script running task number `index_expr` (e.g. `${SLURM_ARRAY_TASK_ID:-0}`):
    with the variables of `env_file` exported, in its working directory, output appended to
    its log, exit code written to its exit file (atomically, so a reader never sees a partial
    number) and returned."""
    q = shlex.quote
    env = q(str(env_file))
    lines = [
        "#!/bin/bash",
        f"# connecto job: {len(tasks)} task(s); written by connecto.launch",
        f"i={index_expr}",
        "workdirs=(" + " ".join(q(str(t.workdir)) for t in tasks) + ")",
        "logs=(" + " ".join(q(str(t.log_path)) for t in tasks) + ")",
        "exits=(" + " ".join(q(str(t.exit_path)) for t in tasks) + ")",
    ]
    for number, argv in enumerate(argvs):
        lines.append(f"task_{number}() {{ {shlex.join(argv)}; }}")
    lines += [
        'if [ -z "${workdirs[$i]:-}" ]; then echo "connecto: no task $i" >&2; exit 2; fi',
        'exec >>"${logs[$i]}" 2>&1',
        f'set -a; . {env} || {{ echo 1 >"${{exits[$i]}}"; exit 1; }}; set +a',
        'cd "${workdirs[$i]}" || { echo 1 >"${exits[$i]}"; exit 1; }',
        'echo "connecto: task $i started on $(hostname) at $(date -Is)"',
        '"task_$i"',
        "rc=$?",
        'echo "$rc" >"${exits[$i]}.tmp" && mv -f "${exits[$i]}.tmp" "${exits[$i]}"',
        'echo "connecto: task $i finished with exit code $rc at $(date -Is)"',
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"
