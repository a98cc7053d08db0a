"""`connecto report [SETUP_OR_EXPERIMENT_DIR]`: an experiment as one HTML page."""

from __future__ import annotations

from pathlib import Path

import typer


def report_command(
    path: Path = typer.Argument(
        Path("."),
        metavar="SETUP_OR_EXPERIMENT_DIR",
        help="experiment directory, or a setup (or any directory) inside one",
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        help="where index.html and its PNGs go (default: <experiment>/05_report); "
        "the PNGs of an earlier report there are replaced",
    ),
    use_database: bool = typer.Option(
        True, "--db/--no-db", help="include what the tracking database holds"
    ),
) -> None:
    """Write an experiment's report: training curves, snapshots, scores per checkpoint,
    confusion matrices, segmentation scores, tracked runs, predictions and jobs."""
    from connecto.report.build import write_report

    written = write_report(path, out_dir, use_database=use_database)
    typer.echo(f"report: {written.page} ({len(written.pictures)} pictures beside it)")
    if written.missing:
        typer.echo(f"none yet: {', '.join(written.missing)}")
    typer.echo(f"open {written.url}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
