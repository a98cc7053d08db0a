"""`connecto predict --split validation|test`."""

from __future__ import annotations

from pathlib import Path

import typer


def predict_command(
    split: str | None = typer.Option(
        None, "--split", help="split part: validation or test (a predict setup knows its own)"
    ),
    iterations: list[int] = typer.Option(
        [],
        "-i",
        "--iterations",
        help="checkpoint iterations (default: the latest): --iterations A B or -i A -i B",
    ),
    more_iterations: list[int] = typer.Argument(
        None,
        metavar="IT",
        help="more checkpoint iterations, after --iterations A",
        show_default=False,
    ),
    all_checkpoints: bool = typer.Option(
        False, "--all-checkpoints", help="every checkpoint of the train setup"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="predict again into a complete collection (replacing it)"
    ),
    number_by_iteration: bool = typer.Option(
        False,
        "--number-by-iteration",
        help="new predict setups write to ..._p<iteration> (synister's predict.py) instead "
        "of ..._p<setup number>",
    ),
    workers: int = typer.Option(1, "-w", "--workers", help="worker processes"),
    batch_size: int | None = typer.Option(
        None, "-b", "--batch-size", help="synapses per forward pass (default: batch_size)"
    ),
    submit: bool = typer.Option(
        False, "--submit", help="run as a job (worker_config's launcher and scheduler)"
    ),
    wait: bool = typer.Option(
        False, "--wait", help="with --submit: wait for the job, exit with its exit code"
    ),
) -> None:
    """Predict every synapse of a split part, run in a train setup (one predict setup per
    checkpoint, created or reused) or in a predict setup. An interrupted run resumes.
    In a setup of a volume task (barcode enhancement or expression, pixel embedding,
    synapse detection) predict the split's region into 03_predict/ instead."""
    if more_iterations and not iterations:
        raise typer.BadParameter(
            f"{' '.join(map(str, more_iterations))}: iterations come after --iterations/-i "
            "(--iterations A B)",
            param_hint="IT",
        )
    iterations = [*iterations, *(more_iterations or [])]
    if submit:
        from cli.jobs import report_jobs
        from connecto.launch.submit import submit_rerun

        options = {
            "split": split, "iterations": iterations, "all_checkpoints": all_checkpoints,
            "overwrite": overwrite, "workers": workers, "batch_size": batch_size,
            "number_by_iteration": number_by_iteration,
        }  # fmt: skip
        report_jobs(submit_rerun(Path.cwd(), "predict", [], options, wait), waited=wait)
        return
    from connecto.tasks.setup_predict import setup_predictor

    predict_volumes = setup_predictor(Path.cwd())  # tasks that predict volumes, not synapses
    if predict_volumes is not None:
        for line in predict_volumes(Path.cwd(), split, iterations, all_checkpoints, overwrite):
            typer.echo(line)
        return
    from connecto.tasks.synapse_classification.predict import predict  # torch: only when predicting

    runs = predict(
        Path.cwd(), split, iterations, all_checkpoints, overwrite, workers, batch_size,
        number_by_iteration=number_by_iteration,
    )  # fmt: skip
    for run in runs:
        resumed = f", {run.resumed_from} from an earlier run" if run.resumed_from else ""
        typer.echo(
            f"iteration {run.iteration} ({run.split_part}): {run.written} synapses predicted"
            f"{resumed} -> {run.database}.{run.collection}"
        )


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
