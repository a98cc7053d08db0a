"""`connecto segment predict | gt-affinities | fragments | agglomerate | extract | evaluate
| run`: blockwise affinities -> fragments -> segment graph in MongoDB -> segmentations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from connecto.segment.config import CONFIG_NAME, STEPS

if TYPE_CHECKING:
    from connecto.segment.workflow import SegmentReport

app = typer.Typer(
    help="Neuron segmentation: affinities, fragments, the segment graph in MongoDB, "
    "agglomeration at thresholds, VOI/ARAND against ground truth.",
    no_args_is_help=True,
)

CONFIG = typer.Option(
    Path(CONFIG_NAME), "-c", "--config", help="segment config (TOML); paths relative to it"
)
OVERWRITE = typer.Option(False, "--overwrite", help="recompute outputs that exist")


def _print(report: SegmentReport) -> None:
    for step in report.steps:
        typer.echo(f"{step.step}: {'skipped, ' if step.skipped else ''}{step.detail}")
    if not report.scores:
        return
    table = Table("threshold", "VOI split", "VOI merge", "VOI", "ARAND", title="segmentation")
    best = report.best
    for result in report.scores:
        s = result.scores
        mark = " (best)" if result is best else ""
        table.add_row(
            f"{result.threshold:g}{mark}", f"{s.voi_split:.4f}", f"{s.voi_merge:.4f}",
            f"{s.voi:.4f}", f"{s.arand:.4f}",
        )  # fmt: skip
    Console(width=100).print(table)
    assert best is not None
    typer.echo(
        f"best threshold: {best.threshold:g} (VOI {best.scores.voi:.4f}, "
        f"ARAND {best.scores.arand:.4f}); scores stored in the tracking database"
    )


def _step(*steps: str):  # noqa: ANN202 - a Typer command factory
    def command(config: Path = CONFIG, overwrite: bool = OVERWRITE) -> None:
        from connecto.segment.workflow import run_steps  # heavy: loads only when used

        _print(run_steps(config, steps, overwrite=overwrite))

    return command


HELP = {
    "gt-affinities": "Affinities computed from the ground-truth labels (perfect predictions).",
    "predict": "Affinities (and LSDs) from the checkpoint, blockwise, resumable.",
    "fragments": "Fragments per block (mutex watershed) and their nodes in MongoDB.",
    "agglomerate": "Edges between fragments with mean affinity and merge score.",
    "extract": "One segmentation per threshold (lookup table + blockwise relabel).",
    "evaluate": "VOI split/merge and ARAND per threshold; names the best.",
}
for _name, _help in HELP.items():
    app.command(_name, help=_help)(_step(_name))
app.command("run", help=f"All steps in order ({', '.join(STEPS)}), skipping work done.")(
    _step(*STEPS)
)


def register(root: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    root.add_typer(app, name="segment")
