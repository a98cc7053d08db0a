"""`connecto submit SETUP_DIR ...`: many train or predict setups at once on the cluster."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.jobs import report_jobs
from connecto.launch.submit import submit_setups


def submit_command(
    setups: list[Path] = typer.Argument(..., help="train or predict setup directories"),
    iterations: int | None = typer.Option(
        None, "--iterations", help="train setups: run `connecto train ITERATIONS`"
    ),
    array: bool = typer.Option(
        True, "--array/--no-array", help="one job array per worker config, or one job each"
    ),
    wait: bool = typer.Option(False, "--wait", help="block until all end; Ctrl-C cancels them"),
) -> None:
    """Submit `connecto predict` in each predict setup (`connecto train N` in train setups
    with --iterations), through each setup's worker_config launcher and scheduler."""
    args = ["train", str(iterations)] if iterations is not None else None
    report_jobs(submit_setups(setups, args, array, wait), waited=wait)


def register(app: typer.Typer) -> None:
    app.command("submit")(submit_command)
