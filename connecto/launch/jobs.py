"""Job tracking: every launched job is a document in the tracking database's `jobs`
collection, its state refreshed from the scheduler (or the job's own exit code).

Document: `_id` (short token), `name`, `kind`, `setup_dir`, `scheduler`, `job_id` (the
scheduler's: a SLURM id, `ID_INDEX` for array tasks, `host:pid` for local jobs), `launcher`,
`command`, `image`, `image_digest`, `state` (pending, running, completed, failed, cancelled),
`exit_code`, `reason`, `log_path`, `script_path`, `resources`, `submitted`, `started`,
`finished`, `updated`, `host`, `user`, `cancel_requested`, and for local jobs `process` (the
process that runs it, with its start: `connecto.processes.process_record`).

A scheduler that cannot be reached (its commands missing or failing) changes nothing stored:
its jobs keep their last known state, marked `stale` (the error) in what `refresh_jobs`
returns, which `describe_state` shows as unknown.

A state is final only from the scheduler's word or the exit code; `completed` always comes
with exit code 0.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from pymongo.database import Database

from connecto import ConnectoError
from connecto.db.tracking import JOBS, ensure_indexes, now
from connecto.launch.base import FINAL_STATES, Status
from connecto.launch.local import LocalScheduler
from connecto.launch.lsf import LsfScheduler
from connecto.launch.slurm import SlurmScheduler

CANCEL_CONFIRM_S = 20.0
MAX_POLL_S = 5.0
STALE = "stale"  # in refreshed jobs only: why their scheduler could not tell their state


class Scheduler(Protocol):
    name: str

    def states(self, jobs: Sequence[dict[str, Any]]) -> dict[str, Status]: ...
    def cancel(self, job_ids: Sequence[str]) -> None: ...


def get_scheduler(name: str) -> Any:
    schedulers = {"none": LocalScheduler, "slurm": SlurmScheduler, "lsf": LsfScheduler}
    if name not in schedulers:
        raise ConnectoError(f"unknown scheduler {name!r}; expected one of {', '.join(schedulers)}")
    return schedulers[name]()


def record_jobs(db: Database, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ensure_indexes(db)
    db[JOBS].insert_many(docs)
    return docs


def _apply(db: Database, job: dict[str, Any], status: Status) -> dict[str, Any]:
    if status.state == job.get("state") and status.exit_code == job.get("exit_code"):
        return job
    fields: dict[str, Any] = {
        "state": status.state,
        "exit_code": status.exit_code,
        "reason": status.reason,
        "updated": now(),
    }
    if status.state == "running" and not job.get("started"):
        fields["started"] = now()
    if status.state in FINAL_STATES:
        fields["finished"] = job.get("finished") or now()
    db[JOBS].update_one({"_id": job["_id"]}, {"$set": fields})
    return {**job, **fields}


def refresh_jobs(db: Database, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ask each job's scheduler about its unfinished jobs; store and return the new states.
    The jobs of a scheduler that cannot be reached keep their last known state (stored and
    returned), marked `stale` with the error in what this returns."""
    out = {job["_id"]: job for job in jobs}
    by_scheduler: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        if job.get("state") not in FINAL_STATES:
            by_scheduler.setdefault(job["scheduler"], []).append(job)
    for name, group in by_scheduler.items():
        group = [{k: v for k, v in job.items() if k != STALE} for job in group]
        try:
            statuses = get_scheduler(name).states(group)
        except Exception as error:  # its commands missing, failing, hanging, answering nonsense
            reason = str(error) if isinstance(error, ConnectoError) else repr(error)
            for job in group:
                out[job["_id"]] = {**job, STALE: f"{name}: {reason}"}
            continue
        for job in group:
            status = statuses.get(str(job["job_id"]))
            out[job["_id"]] = job if status is None else _apply(db, job, status)
    return [out[job["_id"]] for job in jobs]


def stale_warnings(jobs: Sequence[dict[str, Any]]) -> list[str]:
    """One line per scheduler that could not be reached, naming it and its error."""
    counts: dict[str, int] = {}
    for job in jobs:
        if job.get(STALE):
            counts[job[STALE]] = counts.get(job[STALE], 0) + 1
    return [
        f"warning: cannot reach the {stale.split(': ', 1)[0]} scheduler "
        f"({stale.split(': ', 1)[1]}); {count} job(s) shown in their last known state"
        for stale, count in counts.items()
    ]


def list_jobs(
    db: Database,
    states: Sequence[str] | None = None,
    setup_dir: str | None = None,
    limit: int = 50,
    refresh: bool = True,
) -> list[dict[str, Any]]:
    """The latest jobs, newest last; unfinished ones refreshed from their schedulers first."""
    query: dict[str, Any] = {}
    if setup_dir:
        query["setup_dir"] = setup_dir
    jobs = list(db[JOBS].find(query, sort=[("submitted", -1)], limit=limit))[::-1]
    if refresh:
        jobs = refresh_jobs(db, jobs)
    if states:
        jobs = [job for job in jobs if job["state"] in states]
    return jobs


def find_job(db: Database, ident: str) -> dict[str, Any]:
    """A job by its tracking id (or a unique prefix of it) or its scheduler job id."""
    matches = list(db[JOBS].find({"$or": [{"_id": ident}, {"job_id": ident}]}))
    if not matches:
        matches = list(db[JOBS].find({"_id": {"$regex": f"^{ident}"}})) if ident.isalnum() else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConnectoError(f"no job {ident!r} in the tracking database (see `connecto jobs`)")
    raise ConnectoError(f"{ident!r} names {len(matches)} jobs; give the tracking id")


def cancel_jobs(db: Database, jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cancel the unfinished jobs and wait for their schedulers to confirm; a job the
    scheduler does not confirm within CANCEL_CONFIRM_S is marked cancelled by us."""
    active = [job for job in refresh_jobs(db, jobs) if job["state"] not in FINAL_STATES]
    ids = [job["_id"] for job in active]
    db[JOBS].update_many({"_id": {"$in": ids}}, {"$set": {"cancel_requested": True}})
    active = [{**job, "cancel_requested": True} for job in active]
    by_scheduler: dict[str, list[dict[str, Any]]] = {}
    for job in active:
        by_scheduler.setdefault(job["scheduler"], []).append(job)
    for name, group in by_scheduler.items():
        get_scheduler(name).cancel([str(job["job_id"]) for job in group])
    for job in active:
        if job.get("launcher") == "docker":
            # A container whose runner was killed outright would otherwise keep running.
            from connecto.launch.docker import stop_containers

            try:
                stop_containers(str(job["log_path"]))
            except ConnectoError as error:
                print(
                    f"connecto: warning: job {job['job_id']} ({job['name']}): could not stop "
                    f"its containers, which may still run: {error}",
                    file=sys.stderr,
                    flush=True,
                )
    deadline = time.monotonic() + CANCEL_CONFIRM_S
    while active and time.monotonic() < deadline:
        active = [job for job in refresh_jobs(db, active) if job["state"] not in FINAL_STATES]
        if active:
            time.sleep(0.2)
    for job in active:
        _apply(db, job, Status("cancelled", reason="cancelled; the scheduler did not confirm"))
    return refresh_jobs(db, [db[JOBS].find_one({"_id": job["_id"]}) for job in jobs])


@contextlib.contextmanager
def _interrupts_noted() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM while waiting are noted and acted on between database calls: an
    interrupt raised inside a pymongo call can leave its connection pool locked, and the
    cancel that follows would hang. Outside the main thread nothing is installed."""
    noted = threading.Event()

    def note(signum: int, frame: object) -> None:
        noted.set()

    try:
        previous = [(s, signal.signal(s, note)) for s in (signal.SIGINT, signal.SIGTERM)]
    except ValueError:  # not the main thread: Ctrl-C stays a KeyboardInterrupt
        yield noted
        return
    try:
        yield noted
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler)


def wait_for_jobs(
    db: Database, jobs: Sequence[dict[str, Any]], poll_s: float = 0.25, quiet: bool = False
) -> list[dict[str, Any]]:
    """Block until every job is final, reporting state changes on stderr. Ctrl-C (or
    SIGTERM) cancels the unfinished jobs, marks them cancelled and raises
    KeyboardInterrupt."""
    current = list(jobs)
    seen = {job["_id"]: job.get("state") for job in current}
    warned: set[str] = set()
    start = time.monotonic()
    with _interrupts_noted() as interrupted:
        try:
            while not interrupted.is_set():
                current = refresh_jobs(db, current)
                for line in stale_warnings(current):
                    if line not in warned and not quiet:
                        print(f"connecto: {line}", file=sys.stderr, flush=True)
                    warned.add(line)
                for job in current:
                    if seen.get(job["_id"]) != job["state"] and not quiet:
                        elapsed = time.monotonic() - start
                        print(
                            f"connecto: [{elapsed:6.1f}s] job {job['job_id']} ({job['name']}): "
                            f"{describe_state(job)}",
                            file=sys.stderr,
                            flush=True,
                        )
                    seen[job["_id"]] = job["state"]
                if all(job["state"] in FINAL_STATES for job in current):
                    return current
                interrupted.wait(poll_s)
                poll_s = min(poll_s * 1.5, MAX_POLL_S)
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Ignore further signals while cancelling: a second Ctrl-C must not orphan jobs.
            with _ignoring_signals():
                cancelled = cancel_jobs(db, current)
            if not quiet:
                for job in cancelled:
                    print(
                        f"connecto: job {job['job_id']} ({job['name']}): {describe_state(job)}",
                        file=sys.stderr,
                    )
            raise


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    try:
        previous = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM)]
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous:
            signal.signal(sig, handler)


def describe_state(job: dict[str, Any]) -> str:
    if job.get(STALE):
        return f"unknown (last known: {job['state']})"
    text = job["state"]
    if job.get("exit_code") is not None and job["state"] != "completed":
        text += f" (exit code {job['exit_code']})"
    if job.get("reason") and job["reason"] != job["state"] and job["state"] != "pending":
        text += f" [{job['reason']}]"
    return text


def log_tail(path: str | Path, lines: int = 20) -> str:
    """The last lines of a job's log ('' when it has none yet)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def exit_code_of(jobs: Sequence[dict[str, Any]]) -> int:
    """0 when every job completed; else the first failure's exit code (1 if it has none)."""
    for job in jobs:
        if job["state"] != "completed":
            code = job.get("exit_code")
            return code if isinstance(code, int) and code > 0 else 1
    return 0
