"""`connecto split`: balanced train/validation/test splits of whole groups."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from connecto.db.client import get_database
from connecto.db.synapses import PARTS
from connecto.splits import GROUP_BY, make_split, parse_fractions

console = Console()


def split_command(
    db: str = typer.Option(..., "--db", help="Data database name."),
    by: str = typer.Option(..., "--by", help=f"Group kept whole: {' | '.join(GROUP_BY)}."),
    name: str = typer.Option(..., "--name", help="Split name (stored as splits.<name>)."),
    fractions: str = typer.Option("0.8,0.1,0.1", "--fractions", help="Train,validation,test."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Classes to balance: transmitters (gaba,acetylcholine) or synapse labels "
        "(background,synapse); default: all.",
    ),
    seed: int = typer.Option(0, "--seed", help="Shuffles the groups before solving."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing split."),
) -> None:
    """Assign whole skeletons/hemilineages/brain regions to parts, balancing every class."""
    report = make_split(
        get_database(db),
        by,
        name,
        parse_fractions(fractions),
        [c.strip() for c in classes.split(",") if c.strip()] if classes else None,
        seed=seed,
        overwrite=overwrite,
        progress=True,
    )
    table = Table(
        "class", *(f"{p} ({f:.0%})" for p, f in zip(PARTS, report.fractions, strict=True)), "total"
    )
    for class_name in report.classes:
        counts = report.counts[class_name]
        table.add_row(
            class_name,
            *(f"{counts[p]} ({report.share(class_name, p):.2%})" for p in PARTS),
            str(sum(counts.values())),
        )
    console.print(table)
    typer.echo(
        f"split {name!r} by {by}: groups "
        + ", ".join(f"{p} {report.groups[p]}" for p in PARTS)
        + f"; largest deviation from target {report.max_deviation:.2%} ({report.solver}); "
        f"{report.written} synapses labelled in {report.seconds + report.write_seconds:.1f} s"
    )
    if report.excluded:
        typer.echo(f"note: {report.excluded} synapses of these classes have no {by} and no part")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("split")(split_command)
