"""`connecto embed run | map | similar | probe`: per-synapse embeddings from a contrastive
checkpoint in MongoDB, their maps, similarity search and linear probes."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Synapse embeddings of a synapse-contrastive model: write them to MongoDB, map "
    "them, search them, probe them.",
    no_args_is_help=True,
)

DATABASE = typer.Option(
    None, "--db", help="data database (or its _embeddings); default: the latest embedded"
)
COLLECTION = typer.Option(
    None, "-c", "--collection", help="embeddings collection, e.g. clr_t0_i100000 "
    "(default: the latest embedded)",
)  # fmt: skip


@app.command("run")
def run_command(
    iteration: int | None = typer.Option(
        None, "-i", "--iteration", help="checkpoint iteration (default: the latest)"
    ),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="a model_checkpoint_<N> instead of the setup's"
    ),
    base: Path | None = typer.Option(None, "-d", "--base-dir", help="base directory"),
    experiment: str | None = typer.Option(None, "-e", "--experiment", help="experiment name"),
    train_id: int | None = typer.Option(None, "-t", "--train-id", help="train setup number"),
    split: str | None = typer.Option(
        None, "--split", help="only the synapses of this split (default: every synapse)"
    ),
    part: str | None = typer.Option(None, "--part", help="with --split: train, validation, test"),
    database: str | None = typer.Option(
        None, "--db", help="data database (default: the train config's db_name_data)"
    ),
    projection: bool = typer.Option(
        False, "--projection", help="the projection head's output instead of the encoder's"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="embed again synapses that have an embedding"
    ),
    batch_size: int | None = typer.Option(
        None, "-b", "--batch-size", help="synapses per forward pass (default: batch_size)"
    ),
) -> None:
    """Embed every synapse (or a split's) with a contrastive checkpoint, in a train setup
    or with -d/-e/-t; an interrupted run resumes."""
    from connecto.tasks.synapse_contrastive.embed import embed

    run = embed(
        base, experiment, train_id, iteration, checkpoint, split_name=split, split_part=part,
        data_db=database, overwrite=overwrite, projection=projection, batch_size=batch_size,
    )  # fmt: skip
    resumed = f", {run.resumed_from} from an earlier run" if run.resumed_from else ""
    typer.echo(
        f"iteration {run.iteration}: {run.written} synapses embedded ({run.dimension} "
        f"values each){resumed} -> {run.database}.{run.collection}"
    )


@app.command("map")
def map_command(
    color_by: str = typer.Option(
        "neurotransmitter",
        "--color-by",
        help="synapse or skeleton field: neurotransmitter, brain_region, splits.NAME, "
        "skeleton.nt_known, ...",
    ),  # fmt: skip
    database: str | None = DATABASE,
    collection: str | None = COLLECTION,
    out_dir: Path | None = typer.Option(None, "--out", help="directory (default: here)"),
    methods: list[str] = typer.Option(
        ["umap", "pca"], "--method", help="umap and/or pca (repeat the option)"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed of the projection"),
) -> None:
    """UMAP and PCA scatter PNGs of the embeddings, coloured by a field."""
    from connecto.tasks.synapse_contrastive.explore import embedding_map

    result = embedding_map(color_by, database, collection, out_dir, methods, seed)
    typer.echo(f"{result.collection}: {result.synapses} synapses by {result.color_by}")
    for plot in result.plots:
        typer.echo(f"  {plot}")


@app.command("similar")
def similar_command(
    synapse_id: int = typer.Argument(..., help="the synapse whose neighbours to list"),
    k: int = typer.Option(10, "-k", help="how many (the synapse itself included)"),
    database: str | None = DATABASE,
    collection: str | None = COLLECTION,
    fields: list[str] = typer.Option(
        ["skeleton_id", "neurotransmitter", "brain_region", "splits"],
        "--field",
        help="fields to show (repeat the option)",
    ),  # fmt: skip
) -> None:
    """The nearest synapses by cosine similarity of their embeddings."""
    from connecto.tasks.synapse_contrastive.explore import similar

    rows = similar(synapse_id, k, database, collection, fields)
    header = ["synapse_id", "similarity", *fields]
    table = [[str(r["synapse_id"]), f"{r['similarity']:.4f}", *(str(r[f]) for f in fields)]
             for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    for row in [header, *table]:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@app.command("probe")
def probe_command(
    split: str = typer.Option(..., "--split", help="split: trained on train, scored on the rest"),
    label_field: str = typer.Option(
        "neurotransmitter", "--field", help="the labelled field to predict"
    ),
    labels_per_class: int | None = typer.Option(
        None, "--labels-per-class", help="train on only N labelled synapses per class"
    ),
    seed: int = typer.Option(0, "--seed", help="which N labels (with --labels-per-class)"),
    parts: list[str] = typer.Option(
        ["validation", "test"], "--part", help="parts to score (repeat the option)"
    ),
    database: str | None = DATABASE,
    collection: str | None = COLLECTION,
    out_dir: Path | None = typer.Option(None, "--out", help="PNG directory (default: here)"),
    min_synapses: int = typer.Option(
        1, "--min-synapses", help="skeletons with fewer synapses are left out of the vote"
    ),
) -> None:
    """A linear probe (logistic regression on the frozen embeddings), scored like
    `connecto evaluate`: confusion matrices, PNGs, `scores` documents."""
    from connecto.tasks.synapse_contrastive.probe import linear_probe

    result = linear_probe(
        split, label_field, labels_per_class, seed, parts, database, collection, out_dir,
        min_synapses=min_synapses,
    )  # fmt: skip
    typer.echo(result.report())
    for evaluation in result.evaluations.values():
        typer.echo(f"plots: {', '.join(evaluation.plots)}")


@app.command("list")
def list_command() -> None:
    """The tracked embeddings collections: state, synapses written, checkpoint."""
    from connecto.db.client import tracking_database
    from connecto.tasks.synapse_contrastive.embed import list_embedding_runs

    runs = list_embedding_runs(tracking_database())
    if not runs:
        typer.echo("no embeddings yet (`connecto embed run` in a synapse-contrastive setup)")
    for run in runs:
        counts = f"{run.get('written')}/{run.get('expected')} synapses"
        typer.echo(f"{run['database']}.{run['collection']}: {run.get('state')}, {counts}, "
                   f"{run.get('checkpoint')}")  # fmt: skip


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="embed")
