"""The LSF scheduler: `bsub -q QUEUE -n CPUS -gpu "num=N" -R "rusage[mem=MB]" -J NAME -o LOG`
(job arrays `-J "NAME[1-N]"` for batches), states from `bjobs`, `bkill`."""

from __future__ import annotations

import re
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
from connecto.launch.slurm import failure, run

_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
PENDING = {"PEND", "PSUSP", "WAIT", "PROV"}
RUNNING = {"RUN", "USUSP", "SSUSP"}
_NOT_FOUND = re.compile(r"Job <[^>]*> is not found")


def lsf_time(limit: str) -> str:
    """SLURM-style `[D-]HH:MM[:SS]` -> LSF's `-W [HH:]MM` (seconds rounded up)."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes, seconds = ([0] * (3 - len(parts)) + parts)[-3:]
    total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    return f"{total // 60}:{total % 60:02d}"


def bsub_argv(
    resources: Resources, job_name: str, log_path: Path, script: Path, array_size: int
) -> list[str]:
    name = f"{job_name}[1-{array_size}]" if array_size > 1 else job_name
    argv = ["bsub", "-J", name, "-n", str(resources.num_cpus)]
    if resources.queue:
        argv += ["-q", resources.queue]
    if resources.num_gpus:
        argv += ["-gpu", f"num={resources.num_gpus}"]
    if resources.memory_gb:
        # In MB: the unit of most sites' LSF_UNIT_FOR_LIMITS.
        argv += ["-R", f"rusage[mem={resources.memory_gb * 1024}]"]
    if resources.time_limit:
        argv += ["-W", lsf_time(resources.time_limit)]
    return [*argv, "-o", str(log_path), "/bin/bash", str(script)]


class LsfScheduler:
    name = "lsf"

    def submit(self, batch: JobBatch) -> list[str]:
        script = batch.write_script("$(( ${LSB_JOBINDEX:-1} - 1 ))")
        log = batch.log_path(".%J_%I.out")
        tasks = batch.tasks
        result = run(bsub_argv(batch.resources, batch.name, log, script, len(tasks)), "LSF")
        match = _SUBMITTED.search(result.stdout)
        if result.returncode != 0 or match is None:
            raise ConnectoError(f"bsub refused the job: {(result.stderr or result.stdout).strip()}")
        job_id = match.group(1)
        if len(tasks) == 1:
            return [job_id]
        return [f"{job_id}[{number + 1}]" for number in range(len(tasks))]

    def states(self, jobs: Sequence[Mapping[str, object]]) -> dict[str, Status]:
        wanted = {str(job["job_id"]): job for job in jobs}
        result = run(
            ["bjobs", "-a", "-noheader", "-o", "jobid jobindex stat exit_code", *wanted], "LSF"
        )
        # bjobs fails too when only some jobs are unknown to it (forgotten: their exit files
        # tell); anything else it says is LSF itself failing ("LSF is down").
        complaints = [
            line for line in (result.stderr + result.stdout).splitlines()
            if line.strip() and not _NOT_FOUND.search(line) and not line.split()[0].isdigit()
        ]  # fmt: skip
        if result.returncode != 0 and (complaints or not (result.stdout + result.stderr).strip()):
            raise ConnectoError(failure("bjobs", result))
        out: dict[str, Status] = {}
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) < 3 or not parts[0].isdigit():
                continue  # "Job <7> is not found"
            job_id = parts[0] if parts[1] == "0" else f"{parts[0]}[{parts[1]}]"
            if job_id not in wanted:
                continue
            stat, code = parts[2], parts[3] if len(parts) > 3 else "-"
            cancelled = bool(wanted[job_id].get("cancel_requested"))
            if stat in PENDING:
                out[job_id] = Status("pending")
            elif stat in RUNNING:
                out[job_id] = Status("running")
            elif stat == "DONE":
                out[job_id] = final_status(0)
            elif stat == "EXIT":
                out[job_id] = final_status(int(code) if code.isdigit() else None, cancelled)
        for job_id, job in wanted.items():
            if job_id not in out:
                code = job_exit_code(job)
                if code is not None:
                    out[job_id] = final_status(code, bool(job.get("cancel_requested")))
        return out

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            result = run(["bkill", *job_ids], "LSF")
            if result.returncode != 0 and "already finished" not in result.stderr:
                raise ConnectoError(f"bkill failed: {result.stderr.strip()}")
