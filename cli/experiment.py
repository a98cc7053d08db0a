"""`connecto prepare-training | prepare-prediction | runs`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from connecto.db.client import tracking_database
from connecto.db.tracking import list_runs
from connecto.experiment import TrainSetup, prepare_training, template_names
from connecto.tasks.synapse_classification.setups import prepare_prediction

console = Console()
BASE = typer.Option(..., "-d", "--base-dir", help="base directory of experiments")
EXPERIMENT = typer.Option(..., "-e", "--experiment", help="experiment name")
TRAIN_ID = typer.Option(..., "-t", "--train-id", help="train setup number")


def prepare_training_command(
    base: Path = BASE,
    experiment: str = EXPERIMENT,
    train_id: int = TRAIN_ID,
    task: str | None = typer.Option(
        None, "--task", help="synapse-classification (default) or segmentation"
    ),
    template: str | None = typer.Option(
        None, "--template", help=f"template in experiments/ ({', '.join(template_names())})"
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="key=value for train_config, worker.key=value for worker_config"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite the configs of an existing setup"),
    init_from: Path | None = typer.Option(
        None, "--init-from", help="synapse-contrastive checkpoint: start the classifier's encoder"
    ),
) -> None:
    """Create <base>/<experiment>/02_train/setup_t<ID>/ with train and worker configs."""
    setup, _, _ = prepare_training(
        base, experiment, train_id, task, template, overrides, force,
        tracking=tracking_database, init_from=init_from,
    )  # fmt: skip
    typer.echo(f"prepared {setup.path}")
    typer.echo(
        f"  edit train_config.toml and worker_config.toml, then: "
        f"cd {setup.path} && connecto train <iterations>"
    )


def prepare_prediction_command(
    base: Path = BASE,
    experiment: str = EXPERIMENT,
    train_id: int = TRAIN_ID,
    iterations: list[int] = typer.Option(
        ..., "-i", "--iterations", help="checkpoint iterations: -i A B or -i A -i B"
    ),
    more_iterations: list[int] = typer.Argument(
        None, metavar="IT", help="more checkpoint iterations, after -i A", show_default=False
    ),
    split: str = typer.Option("test", "--split", help="split part: validation or test"),
    validation: bool = typer.Option(
        False, "-v", help="synister's flag: same as --split validation"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="allow replacing predictions"),
    number_by_iteration: bool = typer.Option(
        False,
        "--number-by-iteration",
        help="collections ..._p<iteration> (synister's predict.py), not ..._p<setup number>",
    ),
) -> None:
    """Create one 03_predict/setup_t<ID>_p<N>/ per checkpoint iteration."""
    if split not in ("validation", "test"):
        raise typer.BadParameter(f"{split!r}: expected validation or test", param_hint="--split")
    setup = TrainSetup(base.resolve(), experiment, train_id)
    created = prepare_prediction(
        setup, [*iterations, *(more_iterations or [])], "validation" if validation else split,
        overwrite, number_by_iteration=number_by_iteration,
    )  # fmt: skip
    for predict_setup, config in created:
        typer.echo(
            f"prepared {predict_setup.path} (iteration {config.iteration}, {config.split_part})"
        )


def runs_command(
    experiment: str | None = typer.Option(None, "-e", "--experiment", help="only this experiment"),
    all_runs: bool = typer.Option(
        False, "--all", help="every run, also inside an experiment directory"
    ),
) -> None:
    """List the tracked training runs: inside an experiment directory (or a setup in it)
    only that experiment's, elsewhere all (--all: all anywhere)."""
    within = None if all_runs or experiment else Path.cwd()
    runs = list_runs(tracking_database(), experiment, within)
    where = {str(Path(run.get("base", "?"), run.get("experiment", "?"))) for run in runs}
    table = Table(
        "experiment", "train", "task", "state", "iteration", "updated", "setup",
        title=f"runs of {where.pop()}" if len(where) == 1 else None,
    )  # fmt: skip
    for run in runs:
        updated = run.get("updated")
        table.add_row(
            run.get("experiment", "?"), str(run.get("train_id", "?")), str(run.get("task")),
            str(run.get("state")), str(run.get("iteration", 0)),
            updated.strftime("%Y-%m-%d %H:%M") if updated else "", run.get("setup_dir", ""),
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("prepare-training")(prepare_training_command)
    app.command("prepare-prediction")(prepare_prediction_command)
    app.command("runs")(runs_command)
