"""`connecto detections evaluate`: precision, recall and F1 of detected synapses (task
synapse-detection) against the ground truth, a PR curve PNG and a stored score."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Synapse detections (task synapse-detection): evaluate them against the ground truth.",
    no_args_is_help=True,
)


@app.command("evaluate")
def evaluate_command(
    setup: Path = typer.Option(
        Path("."), "--setup", help="the synapse-detection train setup (default: here)"
    ),
    tolerance: float = typer.Option(
        200.0, "--tolerance", help="largest distance (nm) of a matched detection and synapse"
    ),
    collections: list[str] = typer.Option(
        None, "-c", "--collection", help="detection collections (default: all of the setup)"
    ),
) -> None:
    """Hungarian matching within --tolerance nm per detection score threshold: the PR
    curve (PNG under 04_evaluate/), the best-F1 threshold and the share of matched
    detections on the right (pre, post) neurons; stored in the tracking `scores`."""
    from connecto.tasks.synapse_detection.evaluate import evaluate_in_setup

    for result in evaluate_in_setup(setup, tolerance, collections or []):
        typer.echo(result.report())


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="detections")
