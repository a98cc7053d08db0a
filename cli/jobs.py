"""`connecto jobs [list] | show | cancel | wait | run`: the tracked container and cluster jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from connecto.config import WorkerConfig, load_config
from connecto.db.client import tracking_database
from connecto.launch.jobs import (
    STALE,
    cancel_jobs,
    describe_state,
    exit_code_of,
    find_job,
    list_jobs,
    log_tail,
    refresh_jobs,
    stale_warnings,
    wait_for_jobs,
)
from connecto.launch.submit import submit_command

# Piped output (scripts, logs) gets full rows instead of an 80-column squeeze.
console = Console(width=None if sys.stdout.isatty() else 200)
TAIL = typer.Option(5, "--tail", help="log lines shown for each failed job")


def report_jobs(jobs: list[dict[str, Any]], waited: bool, tail: int = 20) -> None:
    """After a submission: the job ids; after --wait, the final states (the log tail of
    failures) and exit with the jobs' exit code."""
    for job in jobs:
        if not waited:
            typer.echo(
                f"submitted job {job['job_id']} ({job['scheduler']}, {job['launcher']}; "
                f"tracking id {job['_id']}): log {job['log_path']}"
            )
            continue
        typer.echo(f"job {job['job_id']} ({job['name']}): {describe_state(job)}")
        if job["state"] != "completed":
            typer.echo(f"--- last lines of {job['log_path']}:", err=True)
            typer.echo(log_tail(job["log_path"], tail), err=True)
    if waited:
        raise typer.Exit(exit_code_of(jobs))


def warn_stale(jobs: list[dict[str, Any]]) -> None:
    """A line on stderr for each scheduler that could not be reached."""
    for line in stale_warnings(jobs):
        typer.echo(f"connecto: {line}", err=True)


def state_text(job: dict[str, Any]) -> str:
    """The state; unknown (with the last known one) when the scheduler could not tell."""
    return describe_state(job) if job.get(STALE) else job["state"]


def path_text(path: str | None, pending: bool = False) -> str:
    """A job's file, said to be missing when it is not there (a pending job's log is not
    written yet; any other missing file is gone)."""
    if not path or Path(path).exists():
        return str(path)
    return f"{path} ({'not written yet' if pending else 'gone'})"


def list_command(
    state: list[str] = typer.Option([], "--state", help="only jobs in these states"),
    setup: Path | None = typer.Option(None, "--setup", help="only jobs of this setup directory"),
    limit: int = typer.Option(50, "--limit", help="how many of the latest jobs"),
    tail: int = TAIL,
) -> None:
    """Refresh unfinished jobs from their schedulers and list the latest ones."""
    jobs = list_jobs(
        tracking_database(), state or None, str(setup.resolve()) if setup else None, limit
    )
    table = Table("id", "name", "scheduler", "job", "launcher", "state", "exit", "submitted")
    for job in jobs:
        table.add_row(
            job["_id"], job["name"], job["scheduler"], str(job["job_id"]), job["launcher"],
            state_text(job), "" if job.get("exit_code") is None else str(job["exit_code"]),
            job["submitted"].strftime("%Y-%m-%d %H:%M:%S"),
        )  # fmt: skip
    console.print(table)
    warn_stale(jobs)
    for job in jobs:
        if job["state"] == "failed" and tail:
            console.print(f"[red]{job['_id']} {job['name']}: {describe_state(job)}[/red]")
            console.print(log_tail(job["log_path"], tail), markup=False, highlight=False)


def show_command(
    ident: str = typer.Argument(..., help="tracking id or scheduler job id"),
    tail: int = typer.Option(20, "--tail", help="log lines shown"),
) -> None:
    """One job's record (refreshed) and the tail of its log."""
    db = tracking_database()
    job = refresh_jobs(db, [find_job(db, ident)])[0]
    for key in ("_id", "name", "kind", "state", "exit_code", "reason", "scheduler", "job_id",
                "launcher", "image", "image_digest", "setup_dir", "log_path", "script_path",
                "submitted", "started", "finished", "host", "user"):  # fmt: skip
        value = job.get(key)
        if key == "state":
            value = state_text(job)
        elif key in ("log_path", "script_path"):
            value = path_text(value, key == "log_path" and job["state"] == "pending")
        typer.echo(f"{key:>13}: {value}")
    typer.echo(f"{'command':>13}: {' '.join(job['command'])}")
    warn_stale([job])
    typer.echo(f"--- last lines of {job['log_path']}:")
    typer.echo(log_tail(job["log_path"], tail))


def cancel_command(
    idents: list[str] = typer.Argument(..., help="tracking ids or scheduler job ids"),
) -> None:
    """Cancel jobs (scancel / bkill / stop the local process and its container)."""
    db = tracking_database()
    for job in cancel_jobs(db, [find_job(db, ident) for ident in idents]):
        typer.echo(f"job {job['job_id']} ({job['name']}): {describe_state(job)}")


def wait_command(
    idents: list[str] = typer.Argument(..., help="tracking ids or scheduler job ids"),
) -> None:
    """Wait for jobs to finish; exit with the first failure's exit code. Ctrl-C cancels them."""
    db = tracking_database()
    report_jobs(wait_for_jobs(db, [find_job(db, ident) for ident in idents]), waited=True)


def run_command(
    command: list[str] = typer.Argument(..., help="the command (after --)"),
    workdir: Path = typer.Option(Path("."), "--dir", help="working directory of the job"),
    worker_config: Path | None = typer.Option(
        None, "--worker-config", help="worker_config.toml (default: local, 1 CPU, no GPU)"
    ),
    name: str | None = typer.Option(None, "--name", help="job name"),
    wait: bool = typer.Option(False, "--wait", help="block until it ends; its exit code"),
) -> None:
    """Run any command as a tracked job: `connecto jobs run --wait -- connecto --version`."""
    worker = load_config(worker_config, WorkerConfig) if worker_config else None
    report_jobs(submit_command(command, workdir.resolve(), worker, name, wait), waited=wait)


def register(root: typer.Typer) -> None:
    jobs_app = typer.Typer(
        help="Container and cluster jobs: list (default), show, cancel, wait, run.",
        invoke_without_command=True,
    )

    @jobs_app.callback(invoke_without_command=True)
    def _default(
        ctx: typer.Context,
        state: list[str] = typer.Option([], "--state", help="only jobs in these states"),
        setup: Path | None = typer.Option(None, "--setup", help="only this setup's jobs"),
        limit: int = typer.Option(50, "--limit", help="how many of the latest jobs"),
        tail: int = TAIL,
    ) -> None:
        """Refresh unfinished jobs from their schedulers and list the latest ones."""
        if ctx.invoked_subcommand is None:
            list_command(state, setup, limit, tail)

    jobs_app.command("list")(list_command)
    jobs_app.command("show")(show_command)
    jobs_app.command("cancel")(cancel_command)
    jobs_app.command("wait")(wait_command)
    jobs_app.command("run")(run_command)
    root.add_typer(jobs_app, name="jobs")
