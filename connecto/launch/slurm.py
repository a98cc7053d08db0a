"""The SLURM scheduler: `sbatch --parsable` (job arrays for batches), states from
`scontrol show job` (live jobs) and `sacct` (jobs the controller has forgotten, when
accounting runs), `scancel`.

Hand-written rather than through submitit: connecto's jobs are shell commands (`connecto
train N` in an existing setup directory, wrapped by the docker or apptainer launcher), not
pickled Python functions, and one job script (`base.job_script`: the owner-only env file,
per-task logs and exit files) serves SLURM, LSF (which submitit does not support) and the
local `none` scheduler alike, so states, exit codes and cancelling mean the same on all.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from connecto import ConnectoError
from connecto.launch.base import (
    JobBatch,
    Resources,
    Status,
    final_status,
    job_exit_code,
)

TIMEOUT_S = 60
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED"}
FAILED = {
    "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
    "REVOKED", "SPECIAL_EXIT",
}  # fmt: skip


def run(argv: list[str], system: str = "SLURM") -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise ConnectoError(f"{argv[0]} is not on PATH: is this a submit host of {system}?")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConnectoError(f"{argv[0]} did not answer within {TIMEOUT_S} s") from None


def failure(what: str, result: subprocess.CompletedProcess[str]) -> str:
    """A scheduler command's failure in one line: its exit status and its first words."""
    said = " ".join((result.stderr or result.stdout).split())
    said = said if len(said) <= 300 else f"{said[:300]}..."
    return f"{what} failed (exit status {result.returncode}){': ' + said if said else ''}"


def exit_code(text: str) -> int | None:
    """SLURM's `EXIT:SIGNAL` -> a shell-style exit code (128 + signal when killed)."""
    code, _, sig = text.partition(":")
    if not code.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) else int(code)


def to_status(state: str, code: int | None, reason: str | None = None) -> Status:
    """SLURM's word -> ours. `completed` needs exit code 0 as well as COMPLETED."""
    word = state.split()[0].rstrip("+") if state else ""
    if word in PENDING:
        return Status("pending", reason=reason)
    if word in RUNNING:
        return Status("running")
    if word == "CANCELLED":
        return final_status(code, cancelled=True)
    if word == "COMPLETED":
        return final_status(code)
    if word in FAILED:
        status = final_status(code if code else None)
        return Status("failed", status.exit_code, word.lower())
    return Status("failed", code, f"unknown SLURM state {state!r}")


def sbatch_argv(
    resources: Resources, job_name: str, log_path: Path, script: Path, array_size: int
) -> list[str]:
    argv = ["sbatch", "--parsable", f"--job-name={job_name}", *resource_flags(resources)]
    if array_size > 1:
        argv.append(f"--array=0-{array_size - 1}")
    # The script appends each task's output to its own log; this file catches only what
    # happens before (e.g. a working directory that vanished).
    argv += [f"--output={log_path}", "--open-mode=append", str(script)]
    return argv


def resource_flags(resources: Resources) -> list[str]:
    argv = [f"--cpus-per-task={resources.num_cpus}"]
    if resources.queue:
        argv.append(f"--partition={resources.queue}")
    if resources.num_gpus:
        argv.append(f"--gpus={resources.num_gpus}")
    if resources.memory_gb:
        argv.append(f"--mem={resources.memory_gb}G")
    if resources.time_limit:
        argv.append(f"--time={resources.time_limit}")
    return argv


class SlurmScheduler:
    name = "slurm"

    def submit(self, batch: JobBatch) -> list[str]:
        script = batch.write_script("${SLURM_ARRAY_TASK_ID:-0}")
        log = batch.log_path(".%A_%a.out")
        tasks = batch.tasks
        result = run(sbatch_argv(batch.resources, batch.name, log, script, len(tasks)))
        if result.returncode != 0:
            raise ConnectoError(f"sbatch refused the job: {result.stderr.strip()}")
        job_id = result.stdout.strip().split(";")[0]  # "ID" or "ID;CLUSTER"
        if not job_id.isdigit():
            raise ConnectoError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        if len(tasks) == 1:
            return [job_id]
        return [f"{job_id}_{number}" for number in range(len(tasks))]

    def check(self, resources: Resources, source: str = "worker_config") -> None:
        """`sbatch --test-only`: a partition or resources the cluster cannot give are
        refused before anything is submitted (blockwise workers: before the run starts)."""
        result = run(["sbatch", "--test-only", *resource_flags(resources), "--wrap=true"])
        if result.returncode != 0:
            said = " ".join(result.stderr.split()).removeprefix("sbatch: error: ")
            raise ConnectoError(f"{source}: SLURM refuses these resources: {said}")

    def states(self, jobs: Sequence[Mapping[str, object]]) -> dict[str, Status]:
        wanted = {str(job["job_id"]): job for job in jobs}
        found = self._scontrol(set(wanted))
        missing = [job_id for job_id in wanted if job_id not in found]
        if missing:
            found.update(self._sacct(missing))
        for job_id in missing:
            if job_id not in found:
                # Neither the controller nor accounting knows it: the job's own exit file.
                code = job_exit_code(wanted[job_id])
                if code is not None:
                    found[job_id] = final_status(code, bool(wanted[job_id].get("cancel_requested")))
        return found

    def _scontrol(self, wanted: set[str]) -> dict[str, Status]:
        result = run(["scontrol", "show", "job", "-o"])
        if result.returncode != 0:  # the controller is down or unreachable
            raise ConnectoError(failure("scontrol show job", result))
        records = [
            dict(part.split("=", 1) for part in line.split() if "=" in part)
            for line in result.stdout.splitlines()
        ]
        # Started array tasks have records of their own ("ArrayTaskId=2"); a pending array
        # record ("ArrayTaskId=0-3") stands for the tasks not started yet, so it comes last.
        records.sort(key=lambda f: not f.get("ArrayTaskId", "0").isdigit())
        out: dict[str, Status] = {}
        for fields in records:
            job_id, task = fields.get("JobId", ""), fields.get("ArrayTaskId")
            if task is None:
                candidates = [job_id]
            elif task.isdigit():
                candidates = [f"{fields['ArrayJobId']}_{task}"]
            else:
                candidates = [w for w in wanted if w.startswith(f"{fields['ArrayJobId']}_")]
            for candidate in candidates:
                if candidate in wanted and candidate not in out:
                    out[candidate] = to_status(
                        fields.get("JobState", ""),
                        exit_code(fields.get("ExitCode", "")),
                        fields.get("Reason"),
                    )
        return out

    def _sacct(self, job_ids: list[str]) -> dict[str, Status]:
        if shutil.which("sacct") is None:
            return {}
        result = run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(job_ids)]
        )
        if result.returncode != 0:  # accounting disabled or slurmdbd down
            return {}
        out = {}
        for line in result.stdout.splitlines():
            job_id, state, code = (line.split("|") + ["", "", ""])[:3]
            if job_id in job_ids:
                out[job_id] = to_status(state, exit_code(code))
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            return
        result = run(["scancel", *job_ids])
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise ConnectoError(f"scancel failed: {result.stderr.strip()}")
