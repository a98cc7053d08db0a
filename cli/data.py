"""`connecto data ingest | sparsify | synthesize-synapses | synthesize-barcodes`."""

from __future__ import annotations

from pathlib import Path

import typer

from connecto import ConnectoError
from connecto.db.client import get_database

data_app = typer.Typer(
    help="EM volumes: ingest into zarr, synthetic synapse data.", no_args_is_help=True
)


def _triple(text: str | None, option: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        whole = "" if option == "--chunks" else (
            " (coordinates are whole nm: for 4.6 nm give a rounded value, or every size and "
            "position in a finer unit, e.g. 46 in Å)"
        )  # fmt: skip
        raise typer.BadParameter(
            f"{text!r}: expected Z,Y,X integers{whole}", param_hint=option
        ) from None
    if len(values) != 3:
        raise typer.BadParameter(f"{text!r}: expected three values Z,Y,X", param_hint=option)
    return values  # type: ignore[return-value]


@data_app.command("ingest")
def ingest_command(
    source: Path = typer.Argument(..., help="HDF5 file, multi-page TIFF or directory of TIFFs"),
    out: Path = typer.Argument(..., help="output zarr container (e.g. volume.zarr)"),
    datasets: list[str] = typer.Option(
        [],
        "--dataset",
        help="HDF5 dataset, or SOURCE:DESTINATION to store it under another name (e.g. "
        "stack:volumes/raw); repeatable; default all 3D ones. Name for a TIFF stack (default raw)",
    ),
    voxel_size: str | None = typer.Option(
        None,
        "--voxel-size",
        help="Z,Y,X whole nm (default: the HDF5 resolution attribute; a fractional one, "
        "e.g. 4.6, is refused, never truncated)",
    ),
    offset: str | None = typer.Option(
        None, "--offset", help="Z,Y,X nm (default: the HDF5 offset attribute, else 0)"
    ),
    chunks: str = typer.Option("32,128,128", "--chunks", help="chunk shape Z,Y,X voxels"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing datasets"),
) -> None:
    """Convert HDF5 datasets or TIFF stacks into chunked, compressed zarr."""
    from connecto.data.ingest import ingest

    results = ingest(
        source, out, datasets or None, _triple(voxel_size, "--voxel-size"),
        _triple(offset, "--offset"), _triple(chunks, "--chunks"), overwrite,
    )  # fmt: skip
    for r in results:
        state = "already complete" if r.skipped else "written"
        typer.echo(
            f"{out}/{r.name}: {r.dtype} {list(r.shape)}, voxel size {list(r.voxel_size)} nm, "
            f"offset {list(r.offset)} nm ({state})"
        )


def _sections(text: str | None) -> list[int] | None:
    """`--sections 3,17` as indices; a ConnectoError (one line) for anything else."""
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ConnectoError(
            f"--sections {text!r}: expected comma-separated section indices (z voxel "
            "indices), e.g. 3,17"
        ) from None


@data_app.command("sparsify")
def sparsify_command(
    source: Path = typer.Argument(..., help="zarr/N5 container with the dense labels"),
    out: Path = typer.Argument(..., help="zarr container for the sparse labels (may be SOURCE)"),
    dataset: str = typer.Option(
        "volumes/labels/neuron_ids",
        "--dataset",
        help="labels dataset, or SOURCE:DESTINATION to write under another name",
    ),
    disks: int | None = typer.Option(
        None, "--disks", help="N random disks per section, centred on labelled voxels (disk_N)"
    ),
    radius: float | None = typer.Option(None, "--radius", help="disk radius in nm (--disks)"),
    every: int | None = typer.Option(None, "--every", help="every K-th section (0, K, 2K, ...)"),
    sections: str | None = typer.Option(
        None, "--sections", help="comma-separated sections (z voxel indices), e.g. 3,17"
    ),
    seed: int | None = typer.Option(None, "--seed", help="seed of the disks (default 0)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset"),
) -> None:
    """Simulated sparse labels from dense ground truth (0 = unlabelled; train them with
    sparse_labels = true, score against the dense truth)."""
    from connecto.data.sparsify import sparsify

    name, _, destination = dataset.partition(":")
    report = sparsify(
        source, out, name, destination or None, disks=disks, radius_nm=radius, every=every,
        sections=_sections(sections), seed=seed, overwrite=overwrite,
    )  # fmt: skip
    typer.echo(
        f"{report.container}/{report.dataset}: {report.mode.describe()}: kept {report.kept} "
        f"of {report.dense_labelled} labelled voxels ({report.fraction_of_truth:.2%} of the "
        f"dense labels, {report.fraction_of_volume:.2%} of the volume)"
    )


@data_app.command("synthesize-synapses")
def synthesize_command(
    out: Path = typer.Argument(..., help="output zarr container"),
    db: str = typer.Option(..., "--db", help="data database for the synapse documents"),
    synapses: int = typer.Option(300, "--synapses", help="number of synapses"),
    classes: str | None = typer.Option(
        None, "--classes", help="comma-separated class names (default gaba,acetylcholine,glutamate)"
    ),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    dataset: str = typer.Option("raw", "--dataset", help="dataset name in the container"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing dataset"),
) -> None:
    """Make an EM-like volume with class-dependent synapses, and their database documents."""
    from connecto.data.synthetic import synthesize_synapses

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    report = synthesize_synapses(
        out, get_database(db), synapses, names, seed, dataset, overwrite=overwrite
    )
    counts = ", ".join(f"{k} {v}" for k, v in report.per_class.items())
    typer.echo(
        f"{report.container}/{report.dataset}: {list(report.shape)} voxels at "
        f"{list(report.voxel_size)} nm; {report.synapses} synapses ({counts}) on "
        f"{report.skeletons} skeletons in database {db!r}"
    )


@data_app.command("synthesize-barcodes")
def synthesize_barcodes_command(
    out: Path = typer.Argument(..., help="output zarr container (e.g. data/prism.zarr)"),
    db: str = typer.Option(..., "--db", help="database for the `neurons` (and synapse) documents"),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="dense neuron labels PATH[:DATASET] (HDF5 or zarr; default the NeuroProof truth "
        "in ../shared/data, dataset volumes/labels/neuron_ids)",
    ),
    crop: str | None = typer.Option(
        None, "--crop", help="sub-volume z0:z1,y0:y1,x0:x1 in source voxels, e.g. 0:64,0:128,0:128"
    ),
    downsample: str | None = typer.Option(
        None,
        "--downsample",
        help="Z,Y,X whole factors: coarser (anisotropic) voxels, e.g. 4,1,1 for 40x10x10 nm",
    ),
    channels: int | None = typer.Option(None, "--channels", help="barcode channels (default 18)"),
    seed: int | None = typer.Option(None, "--seed", help="random seed (default 0)"),
    synapses: int | None = typer.Option(
        None, "--synapses", help="synapses at neuron contacts, adding 2 marker channels (default 0)"
    ),
    params_file: Path | None = typer.Option(
        None, "--params", help="TOML file with generator parameters (see BarcodeParameters)"
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="one generator parameter KEY=VALUE, e.g. patchiness=0; repeatable"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="replace the container's arrays and this volume's documents"
    ),
) -> None:
    """Barcoded multi-channel light microscopy (PRISM-like) rendered from real neuron labels,
    with its training targets and the true barcodes (container attributes and MongoDB)."""
    from connecto.config import parse_cli_value, read_toml, validate
    from connecto.data.barcodes import (
        DEFAULT_LABELS_DATASET,
        BarcodeParameters,
        parse_crop,
        synthesize_barcodes_from_file,
    )

    values = read_toml(params_file) if params_file is not None else {}
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConnectoError(f"--set {item!r}: expected KEY=VALUE, e.g. patchiness=0")
        values[key.strip()] = parse_cli_value(text.strip())
    for key, value in (("channels", channels), ("seed", seed), ("synapses", synapses)):
        if value is not None:
            values[key] = value
    params = validate(BarcodeParameters, values, str(params_file or "parameters"))
    path, dataset = None, DEFAULT_LABELS_DATASET
    if labels is not None:
        # PATH:DATASET, where PATH itself may hold no ':' (a dataset name may hold '/')
        head, sep, tail = labels.partition(":")
        path, dataset = Path(head), (tail if sep and tail else DEFAULT_LABELS_DATASET)
    factors = None
    if downsample is not None:
        try:
            factors = tuple(int(p) for p in downsample.replace("x", ",").split(","))
        except ValueError:
            raise ConnectoError(
                f"--downsample {downsample!r}: expected Z,Y,X whole factors, e.g. 4,1,1"
            ) from None
    report = synthesize_barcodes_from_file(
        out, get_database(db), params, path, dataset,
        parse_crop(crop) if crop is not None else None, factors, overwrite=overwrite,
    )  # fmt: skip
    extra = f", {report.synapses} synapses (+2 marker channels)" if report.synapses else ""
    typer.echo(
        f"{report.container}: {report.channels} barcode channels over {list(report.shape)} "
        f"voxels at {list(report.voxel_size)} nm; {report.neurons} neurons ({report.shared} "
        f"sharing a barcode, {report.weak} weak){extra}; documents in database {db!r}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
