"""`connecto bootstrap run | lineage | pseudo-labels`: dense 3D segmentation from a sparse
painting (2D models, 2D->3D affinities, bootstrapped 3D rounds)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Dense 3D segmentation from sparse 2D labels: one config runs the chain, "
    "resumable, with its lineage in MongoDB.",
    no_args_is_help=True,
)

CONFIG = typer.Argument(Path("bootstrap.toml"), help="bootstrap config (TOML)")


@app.command("run")
def run_command(
    config: Path = CONFIG,
    start: str | None = typer.Option(
        None, "--from", help="redo this step and the ones after it (default: resume)"
    ),
) -> None:
    """Run the chain; steps recorded as done are skipped, training resumes."""
    from connecto.bootstrap.chain import run_chain

    run_chain(config, start)


@app.command("lineage")
def lineage_command(config: Path = CONFIG) -> None:
    """The chain's recorded steps, each under the one it was made from."""
    from connecto.bootstrap.chain import lineage

    steps = lineage(config)
    if not steps:
        typer.echo("nothing recorded yet (`connecto bootstrap run` starts the chain)")
    depth: dict[str, int] = {}
    for step in steps:
        depth[step["step"]] = depth.get(step.get("parent") or "", -1) + 1
        figures = ", ".join(f"{k} {v}" for k, v in (step.get("stats") or {}).items()
                            if k != "warnings")  # fmt: skip
        typer.echo(f"{'  ' * depth[step['step']]}{step['step']}: {step.get('state')}"
                   + (f" ({figures})" if figures else ""))  # fmt: skip


@app.command("predict-2d")
def predict_2d_command(
    checkpoint: Path = typer.Argument(..., help="model_checkpoint_<N> of a segmentation-2d setup"),
    raw: Path = typer.Argument(..., help="zarr container with raw"),
    out: Path = typer.Argument(..., help="zarr container for affs_2d and lsds_2d"),
    raw_dataset: str = typer.Option("raw", "--raw-dataset", help="raw's dataset"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing predictions"),
) -> None:
    """Predict every section with a 2D model into a stack (uint8, C x z x y x)."""
    from connecto.tasks.segmentation_2d.predict import predict_with_checkpoint

    result = predict_with_checkpoint(checkpoint, raw, raw_dataset, out, overwrite)
    typer.echo(f"{result.affs}: {result.sections} sections" +
               (f"; {result.lsds}" if result.lsds else ""))  # fmt: skip


@app.command("predict-3d")
def predict_3d_command(
    checkpoint: Path = typer.Argument(
        ..., help="model_checkpoint_<N> of an affinities-from-2d setup"
    ),
    stack: Path = typer.Argument(..., help="zarr container with affs_2d (and lsds_2d)"),
    out: Path = typer.Argument(..., help="zarr container for the 3D affinities (`affs`)"),
) -> None:
    """3D affinities from a stack of 2D predictions, for `connecto segment`."""
    from connecto.tasks.affinities_from_2d.predict import predict_with_checkpoint

    result = predict_with_checkpoint(checkpoint, stack, out)
    typer.echo(f"{result.path}: {result.tiles} tiles over {result.roi}")


@app.command("pseudo-labels")
def pseudo_labels_command(
    segmentation: Path = typer.Argument(..., help="zarr container of the segmentation"),
    dataset: str = typer.Argument(..., help="its dataset, e.g. segmentation/0.50"),
    out: Path = typer.Argument(..., help="output zarr container (dataset `labels`)"),
    min_size: int = typer.Option(0, "--min-size", help="voxels; smaller segments are dropped"),
    max_size: int | None = typer.Option(None, "--max-size", help="voxels; larger are dropped"),
    outlier_std: float | None = typer.Option(
        3.0, "--outlier-std", help="drop sizes beyond mean +- this many std (0: off)"
    ),
    min_sections: int = typer.Option(1, "--min-sections", help="sections a segment must span"),
    painting: Path | None = typer.Option(
        None, "--painting", help="zarr container of the sparse labels: drop the merges they show"
    ),
    painting_dataset: str = typer.Option("labels", "--painting-dataset", help="its dataset"),
    painted_overlap: float = typer.Option(
        0.5, "--painted-overlap", help="share of each of two painted objects a merge covers"
    ),
) -> None:
    """Keep the segments a next round can trust; dropped ones become 0 = unlabelled."""
    from connecto.bootstrap.pseudo_labels import SegmentFilter, make_pseudo_labels
    from connecto.config import validate

    rule = validate(SegmentFilter, {
        "min_size": min_size, "max_size": max_size, "min_sections": min_sections,
        "outlier_std": outlier_std or None, "painted_overlap": painted_overlap,
    }, "options")  # fmt: skip
    painted = (painting, painting_dataset) if painting is not None else None
    report = make_pseudo_labels((segmentation, dataset), (out, "labels"), rule, painting=painted)
    typer.echo(f"{out}/labels: {report.summary()}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="bootstrap")
