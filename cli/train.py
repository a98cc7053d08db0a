"""`connecto train ITERATIONS`."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.jobs import report_jobs
from connecto.experiment import resolve_train_setup
from connecto.launch.submit import submit_rerun


def train_command(
    iterations: int = typer.Argument(..., help="train until this total iteration count"),
    base: Path | None = typer.Option(None, "-d", "--base-dir", help="base directory"),
    experiment: str | None = typer.Option(None, "-e", "--experiment", help="experiment name"),
    train_id: int | None = typer.Option(None, "-t", "--train-id", help="train setup number"),
    device: str | None = typer.Option(
        None, "--device", help="torch device (default: cuda if available, else cpu)"
    ),
    submit: bool = typer.Option(
        False, "--submit", help="run as a job (worker_config's launcher and scheduler)"
    ),
    wait: bool = typer.Option(
        False, "--wait", help="with --submit: wait for the job, exit with its exit code"
    ),
) -> None:
    """Train the setup here (or -d/-e/-t) up to ITERATIONS, continuing from its latest
    checkpoint; Ctrl-C or SIGTERM stops with a checkpoint."""
    setup = resolve_train_setup(base, experiment, train_id)
    if submit:  # the job runs in the setup directory: -d/-e/-t are not passed on
        jobs = submit_rerun(setup.path, "train", [iterations], {"device": device}, wait)
        report_jobs(jobs, waited=wait)
        return
    from connecto.train import train  # torch and gunpowder: only when training here

    result = train(setup, iterations, device=device)
    if result.start_iteration >= iterations:
        typer.echo(f"{setup.path}: already at iteration {result.start_iteration}")
        return
    loss = f", last loss {result.last_loss:.4f}" if result.last_loss is not None else ""
    typer.echo(
        f"{result.state} at iteration {result.iteration} "
        f"(from {result.start_iteration}{loss}); checkpoint {setup.checkpoint(result.iteration)}"
    )
    if result.state != "finished":
        raise typer.Exit(130)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
