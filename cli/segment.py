"""`connecto segment predict | gt-affinities | fragments | agglomerate | extract | evaluate
| run`: blockwise affinities -> fragments -> segment graph in MongoDB -> segmentations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from connecto.names import check_name
from connecto.tasks.segmentation.config import CONFIG_NAME, STEPS

if TYPE_CHECKING:
    from connecto.tasks.segmentation.workflow import SegmentReport

app = typer.Typer(
    help="Neuron segmentation: affinities, fragments, the segment graph in MongoDB, "
    "agglomeration at thresholds, VOI/ARAND against ground truth.",
    no_args_is_help=True,
)

CONFIG = typer.Option(
    Path(CONFIG_NAME), "-c", "--config", help="segment config (TOML); paths relative to it"
)
OVERWRITE = typer.Option(False, "--overwrite", help="recompute outputs that exist")


def _table(title: str, results: list, chosen: float) -> Table:
    table = Table(
        "threshold", "VOI split", "VOI merge", "VOI", "ARAND", "ERL nm", "mergers", "splits",
        title=title,
    )  # fmt: skip
    for result in results:
        s, r = result.scores, result.run_length
        mark = " (best)" if result.threshold == chosen else ""
        table.add_row(
            f"{result.threshold:g}{mark}", f"{s.voi_split:.4f}", f"{s.voi_merge:.4f}",
            f"{s.voi:.4f}", f"{s.arand:.4f}",
            *((f"{r.erl:.0f} of {r.max_erl:.0f}", str(r.n_mergers), str(r.n_splits))
              if r else ("-", "-", "-")),
        )  # fmt: skip
    return table


def _print(report: SegmentReport) -> None:
    for step in report.steps:
        typer.echo(f"{step.step}: {'skipped, ' if step.skipped else ''}{step.detail}")
    evaluation = report.evaluation
    if evaluation is not None:
        best = evaluation.chosen
        console = Console(width=120)
        if evaluation.honest:
            console.print(_table("validation_roi (chooses the threshold)",
                                 evaluation.validation, best.threshold))  # fmt: skip
            console.print(_table("roi (reported)", evaluation.scores, best.threshold))
            chose = evaluation.chosen_validation
            assert chose is not None
            typer.echo(
                f"best threshold: {best.threshold:g}, chosen on validation_roi "
                f"{evaluation.selection_roi} (VOI {chose.scores.voi:.4f} there); on roi at "
                f"that threshold: VOI {best.scores.voi:.4f}, ARAND {best.scores.arand:.4f}"
            )
        else:
            console.print(_table("segmentation", evaluation.scores, best.threshold))
            typer.echo(
                f"best threshold: {best.threshold:g} (VOI {best.scores.voi:.4f}, "
                f"ARAND {best.scores.arand:.4f}), chosen on the evaluated data itself: an "
                "optimistic score; set validation_roi (disjoint from roi) to choose the "
                "threshold on other ground truth"
            )
        typer.echo("scores stored in the tracking database")
    for warning in report.warnings:
        typer.echo(warning)


SUBMIT = typer.Option(
    False, "--submit",
    help="run this driver as a cluster job (driver_config.toml beside the config); its "
    "workers go where worker_config.toml says",
)  # fmt: skip
WAIT = typer.Option(False, "--wait", help="with --submit: wait; Ctrl-C cancels the job")


def _step(*steps: str):  # noqa: ANN202 - a Typer command factory
    def command(
        config: Path = CONFIG, overwrite: bool = OVERWRITE, submit: bool = SUBMIT,
        wait: bool = WAIT,
    ) -> None:  # fmt: skip
        if submit:
            from cli.jobs import report_jobs
            from connecto.launch.workers import submit_driver

            name = steps[0] if len(steps) == 1 else "run"
            args = [name, *(["--overwrite"] if overwrite else [])]
            report_jobs(submit_driver(config, args, wait=wait), waited=wait)
            return
        from connecto.tasks.segmentation.workflow import run_steps  # heavy: loads only when used

        _print(run_steps(config, steps, overwrite=overwrite))

    return command


@app.command("gt-affinities")
def gt_affinities(
    config: Path = CONFIG,
    overwrite: bool = OVERWRITE,
    degrade: str | None = typer.Option(
        None, "--degrade", help="clean, mild or strong: blur, noise, leaks, missing sections"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the degradation"),
) -> None:
    """Affinities computed from the ground-truth labels: perfect, or degraded the way a
    network's predictions are (to tune the post-processing without a network)."""
    from connecto.tasks.segmentation.workflow import make_gt_affinities

    _print(make_gt_affinities(config, overwrite, degrade, seed))


@app.command("embedding-affinities")
def embedding_affinities(config: Path = CONFIG, overwrite: bool = OVERWRITE) -> None:
    """Affinities from the embeddings in features_container/features_dataset (cosine
    similarity of neighbouring voxels): segment without an affinity network."""
    from connecto.tasks.pixel_embedding.segment import make_embedding_affinities

    _print(make_embedding_affinities(config, overwrite))


HELP = {
    "predict": "Affinities (and LSDs) from the checkpoint, blockwise, resumable.",
    "fragments": "Fragments per block (watershed on the boundary distance, or mutex "
    "watershed) and their nodes in MongoDB.",
    "agglomerate": "Edges between fragments with the merge score of waterz's hierarchical "
    "agglomeration per block.",
    "extract": "One segmentation per threshold (lookup table + blockwise relabel).",
    "evaluate": "VOI split/merge, ARAND and ERL (expected run length) per threshold over "
    "roi; the best threshold is chosen on validation_roi when set (else on roi itself).",
}
for _name, _help in HELP.items():
    app.command(_name, help=_help)(_step(_name))
app.command("run", help=f"All steps in order ({', '.join(STEPS)}), skipping work done.")(
    _step(*STEPS)
)

NODES = typer.Option(None, "--nodes", help="nodes collection (default: <graph>_lsd_nodes)")
EDGES = typer.Option(None, "--edges", help="edges collection (default: <graph>_lsd_edges)")
DB = typer.Option(None, "--db", help="database of the collections (default: db_name)")


@app.command("export-graph")
def export_graph_command(
    config: Path = CONFIG, nodes: str | None = NODES, edges: str | None = EDGES,
    db: str | None = DB, overwrite: bool = typer.Option(
        False, "--overwrite", help="replace non-empty collections"),
) -> None:  # fmt: skip
    """The segment graph as one document per node and edge (LSD layout, mongo shell)."""
    from connecto.db.graph import process_client
    from connecto.db.graph_documents import export_graph
    from connecto.tasks.segmentation.config import load_segment_config
    from connecto.tasks.segmentation.steps import open_graph

    segment, _ = load_segment_config(config)
    database = process_client()[check_name("database name", db or segment.db_name)]
    nodes, edges = nodes or f"{segment.graph}_lsd_nodes", edges or f"{segment.graph}_lsd_edges"
    for written in (nodes, edges):
        check_name("collection name", written)
    counts = export_graph(open_graph(segment, "r"), database, nodes, edges, overwrite)
    typer.echo(f"exported {counts[0]} nodes to {database.name}.{nodes} and "
               f"{counts[1]} edges to {database.name}.{edges}")  # fmt: skip


@app.command("import-graph")
def import_graph_command(
    config: Path = CONFIG, nodes: str | None = NODES, edges: str | None = EDGES,
    db: str | None = DB, overwrite: bool = typer.Option(
        False, "--overwrite", help="replace the segment graph if it exists"),
) -> None:  # fmt: skip
    """Per-document nodes and edges (LSD layout) into the config's segment graph."""
    from connecto.db.graph import process_client
    from connecto.db.graph_documents import check_documents, import_graph
    from connecto.tasks.segmentation.config import load_segment_config
    from connecto.tasks.segmentation.steps import graph_config

    segment, _ = load_segment_config(config)
    database = process_client()[check_name("database name", db or segment.db_name)]
    nodes, edges = nodes or f"{segment.graph}_lsd_nodes", edges or f"{segment.graph}_lsd_edges"
    # before opening the graph "w" drops its collections
    check_documents(database, nodes, edges, into=(segment.db_name, segment.prefix))
    try:  # as volara's DB.init: create the graph only when it does not exist
        graph = graph_config(segment).open("w" if overwrite else "r+")
    except RuntimeError:
        graph = graph_config(segment).open("w")
    counts = import_graph(database, nodes, edges, graph)
    typer.echo(f"imported {counts[0]} nodes and {counts[1]} edges into the graph "
               f"'{segment.graph}' of database {segment.db_name}")  # fmt: skip


def register(root: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    root.add_typer(app, name="segment")
