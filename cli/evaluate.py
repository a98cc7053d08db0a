"""`connecto evaluate`: confusion matrices, accuracies, the best checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_command(
    collections: list[str] = typer.Argument(
        None, help="prediction collections (default: the predict setups here)"
    ),
    database: str | None = typer.Option(
        None, "--db", help="data database (or its _predictions) of the named collections"
    ),
    split: str | None = typer.Option(None, "--split", help="only predictions of this part"),
    min_synapses: int = typer.Option(
        1, "--min-synapses", help="skeletons with fewer synapses are left out of the vote"
    ),
    select_best: bool = typer.Option(
        False, "--select-best", help="compare the checkpoints and name the best"
    ),
    metric: str = typer.Option(
        "balanced_accuracy",
        "--metric",
        help="for --select-best: balanced_accuracy, accuracy, "
        "skeleton_accuracy or skeleton_balanced_accuracy",
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="where the PNGs go (default: the experiment's 04_evaluate/)"
    ),
    synapse_types: str | None = typer.Option(
        None,
        "--synapse-types",
        help="comma-separated classes in the order of the predictions, e.g. "
        "gaba,acetylcholine,glutamate: names synister's lists of probabilities (needed for "
        "named collections synister wrote; overrides a setup's classes)",
    ),
) -> None:
    """Per-synapse and per-skeleton (majority vote) confusion matrices, precision, recall,
    accuracy and balanced accuracy; stored in `scores`, plotted under 04_evaluate/."""
    from connecto.tasks.synapse_classification import evaluate as synapses

    if select_best:
        best = synapses.select_best(Path.cwd(), split or "validation", metric, min_synapses)
        typer.echo(best.report())
        return
    types = synapse_types.split(",") if synapse_types is not None else None
    for evaluation in synapses.evaluate(
        Path.cwd(), collections or [], database, split, min_synapses, out_dir,
        synapse_types=types,
    ):  # fmt: skip
        typer.echo(evaluation.report())
        typer.echo(f"plots: {', '.join(evaluation.plots)}\n")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
