"""`connecto view PATH.zarr`."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def view_command(
    container: Path = typer.Argument(..., help="zarr/N5 container (volume or snapshot)"),
    datasets: list[str] = typer.Option(
        [], "--dataset", help="datasets to show (default: all volumes)"
    ),
    bind_address: str = typer.Option("127.0.0.1", "--bind-address", help="address to serve on"),
    port: int = typer.Option(0, "--port", help="port (0: any free port)"),
    print_only: bool = typer.Option(
        False, "--print-only", "--no-serve", help="list the layers and exit"
    ),
) -> None:
    """Open a neuroglancer viewer on the container's volumes and serve until Ctrl-C."""
    from connecto.data.viewer import open_viewer, plan_layers

    layers, skipped = plan_layers(container, datasets or None)
    for layer in layers:
        typer.echo(
            f"layer {layer.name}: {layer.kind} {list(layer.shape)} "
            f"voxel size {list(layer.voxel_size)}"
        )
    for name in skipped:
        typer.echo(f"not a volume, left out: {name}")
    if print_only:
        return
    viewer = open_viewer(container, layers, bind_address, port)
    typer.echo(f"neuroglancer: {viewer.get_viewer_url()}  (Ctrl-C to stop)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")


def register(app: typer.Typer) -> None:
    app.command("view")(view_command)
