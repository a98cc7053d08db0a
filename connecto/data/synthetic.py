"""A synthetic synapse benchmark: an EM-like anisotropic volume with synapses whose look
depends on their class, and the matching synapse and skeleton documents.

There is no public EM with transmitter labels small enough to ship, so tests, the demo
and the benchmarks use this. The volume has cells (Voronoi regions of seeds that drift
along z, like neurites), dark membranes, textured interiors, noise and section-wise
contrast changes. Each synapse is a dark cleft with a vesicle cloud on one side; vesicle
size, number and darkness and the cleft width depend on the class, each property
overlapping between neighbouring classes, so no single one decides the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from pymongo.database import Database
from scipy import ndimage
from tqdm import tqdm

from connecto import ConnectoError
from connecto.data.ingest import create_volume

DEFAULT_CLASSES = ("gaba", "acetylcholine", "glutamate")
DEFAULT_VOXEL_SIZE = (40, 4, 4)
GRID_SPACING = (10, 48, 48)  # voxels between synapse sites (z, y, x)
SYNAPSE_HALF_DEPTH = 2  # a synapse spans 2 * 2 + 1 sections


@dataclass(frozen=True)
class SyntheticSynapse:
    voxel: tuple[int, int, int]
    class_index: int


@dataclass(frozen=True)
class SyntheticReport:
    container: Path
    dataset: str
    shape: tuple[int, int, int]
    voxel_size: tuple[int, int, int]
    synapses: int
    skeletons: int
    per_class: dict[str, int]


def class_properties(class_index: int, n_classes: int) -> dict[str, float]:
    """Mean look of a class. Each property orders the classes differently, and the
    per-synapse spread (`PROPERTY_SPREAD`) makes neighbours overlap."""
    t = class_index / max(n_classes - 1, 1)
    twisted = ((class_index * 2) % n_classes) / max(n_classes - 1, 1)
    return {
        "vesicle_radius": 1.6 + 3.0 * t,  # pixels
        "vesicle_count": 5.0 + 9.0 * twisted,
        "vesicle_intensity": 35.0 + 70.0 * (1.0 - t),  # 0 black .. 255 white
        "cleft_width": 1.5 + 2.5 * twisted,  # pixels
    }


PROPERTY_SPREAD = {
    "vesicle_radius": 0.35,
    "vesicle_count": 2.0,
    "vesicle_intensity": 12.0,
    "cleft_width": 0.5,
}


def _cells(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Cell ids per voxel: 2D Voronoi regions per section, seeds drifting slowly in z."""
    z_size, y_size, x_size = shape
    n_cells = max(8, y_size * x_size // (40 * 40))
    seeds = rng.uniform(0, (y_size, x_size), size=(n_cells, 2))
    drift = rng.normal(0, 0.8, size=(n_cells, 2))
    cells = np.empty(shape, dtype=np.int32)
    for z in range(z_size):
        marker = np.zeros((y_size, x_size), dtype=np.int32)
        points = np.clip(np.round(seeds + drift * z), 0, (y_size - 1, x_size - 1)).astype(int)
        marker[points[:, 0], points[:, 1]] = np.arange(1, n_cells + 1)
        _, (iy, ix) = ndimage.distance_transform_edt(marker == 0, return_indices=True)
        cells[z] = marker[iy, ix]
    return cells


def _background(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    cells = _cells(shape, rng)
    membrane = np.zeros(shape, dtype=bool)
    membrane[:, 1:, :] |= cells[:, 1:, :] != cells[:, :-1, :]
    membrane[:, :, 1:] |= cells[:, :, 1:] != cells[:, :, :-1]
    membrane = ndimage.binary_dilation(membrane, structure=np.ones((1, 2, 2), dtype=bool))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), (0, 3, 3))
    interior = 165.0 + rng.normal(0, 10, cells.max() + 1)[cells]  # cell-wise brightness
    raw = interior + 40.0 * texture
    raw[membrane] = 70.0
    return raw.astype(np.float32)


def _draw_synapse(
    raw: np.ndarray, voxel: tuple[int, int, int], props: dict[str, float],
    rng: np.random.Generator,
) -> None:  # fmt: skip
    z0, y0, x0 = voxel
    half = 20
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    normal = (math.cos(angle), math.sin(angle))
    across = yy * normal[0] + xx * normal[1]  # signed distance from the cleft line
    along = -yy * normal[1] + xx * normal[0]
    length = rng.uniform(11, 15)
    cleft = (np.abs(across) <= props["cleft_width"] / 2 + 0.5) & (np.abs(along) <= length)
    density = (across > props["cleft_width"] / 2) & (across <= props["cleft_width"] / 2 + 2.5)
    density &= np.abs(along) <= length
    count = max(2, int(round(props["vesicle_count"])))
    radius = max(1.0, props["vesicle_radius"])
    for dz in range(-SYNAPSE_HALF_DEPTH, SYNAPSE_HALF_DEPTH + 1):
        z = z0 + dz
        if not 0 <= z < raw.shape[0]:
            continue
        patch = raw[z, y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
        if patch.shape != yy.shape:
            continue
        patch[cleft] = 55.0
        patch[density] = 35.0
        # vesicles: discs in the presynaptic half-disc (across < 0), fewer off-centre
        n = rng.poisson(count * (1.0 - abs(dz) / (SYNAPSE_HALF_DEPTH + 1)))
        centers_across = -rng.uniform(radius + props["cleft_width"], 16, size=n)
        centers_along = rng.uniform(-length, length, size=n)
        for ca, cl in zip(centers_across, centers_along, strict=True):
            r = radius * rng.uniform(0.85, 1.15)
            disc = (across - ca) ** 2 + (along - cl) ** 2 <= r * r
            patch[disc] = props["vesicle_intensity"]


def make_volume(
    n_synapses: int, n_classes: int, seed: int = 0
) -> tuple[np.ndarray, list[SyntheticSynapse]]:
    """An EM-like uint8 volume (z, y, x) and its synapses (voxel positions, classes)."""
    if n_synapses < 1:
        raise ConnectoError(f"--synapses {n_synapses}: must be at least 1")
    rng = np.random.default_rng(seed)
    layers = max(2, math.ceil(n_synapses / 64))
    side = math.ceil(math.sqrt(n_synapses / layers))
    while layers * side * side < n_synapses:
        side += 1
    margin = (GRID_SPACING[0] // 2, GRID_SPACING[1] // 2, GRID_SPACING[2] // 2)
    shape = (
        layers * GRID_SPACING[0] + 2 * margin[0] - GRID_SPACING[0] // 2,
        side * GRID_SPACING[1] + 2 * margin[1] - GRID_SPACING[1] // 2,
        side * GRID_SPACING[2] + 2 * margin[2] - GRID_SPACING[2] // 2,
    )
    raw = _background(shape, rng)
    sites = [(z, y, x) for z in range(layers) for y in range(side) for x in range(side)]
    chosen = rng.permutation(len(sites))[:n_synapses]
    classes = np.arange(n_synapses) % n_classes  # balanced classes
    rng.shuffle(classes)
    synapses = []
    for index, class_index in zip(chosen, classes, strict=True):
        grid = sites[index]
        voxel = tuple(
            margin[d] + grid[d] * GRID_SPACING[d] + int(rng.integers(-2, 3)) * (d > 0)
            for d in range(3)
        )
        mean = class_properties(int(class_index), n_classes)
        props = {k: v + rng.normal(0, PROPERTY_SPREAD[k]) for k, v in mean.items()}
        _draw_synapse(raw, voxel, props, rng)  # type: ignore[arg-type]
        synapses.append(SyntheticSynapse(voxel, int(class_index)))  # type: ignore[arg-type]
    # imaging: blur, section-wise contrast and brightness, noise
    raw = ndimage.gaussian_filter(raw, (0, 0.7, 0.7))
    gain = rng.uniform(0.8, 1.2, size=(shape[0], 1, 1))
    shift = rng.uniform(-15, 15, size=(shape[0], 1, 1))
    raw = (raw - 128.0) * gain + 128.0 + shift + rng.normal(0, 10, size=shape)
    return np.clip(raw, 0, 255).astype(np.uint8), synapses


def synapse_documents(
    synapses: Sequence[SyntheticSynapse], classes: Sequence[str],
    voxel_size: Sequence[int], synapses_per_skeleton: int = 5,
) -> tuple[list[dict], list[dict], list[dict]]:  # fmt: skip
    """Synapse, skeleton and hemi lineage documents: synapses of one class grouped into
    skeletons of `synapses_per_skeleton`, two hemi lineages per class (upper-case names, as
    synister looks them up)."""
    synapse_docs, skeleton_docs = [], []
    hemi_lineages = [
        {
            "hemi_lineage_id": 2 * c + h + 1,
            "hemi_lineage_name": f"{name.upper()}_{'AB'[h]}",
            "nt_guess": [name],
        }
        for c, name in enumerate(classes)
        for h in range(2)
    ]
    for class_index, name in enumerate(classes):
        members = [s for s in synapses if s.class_index == class_index]
        for start in range(0, len(members), synapses_per_skeleton):
            skeleton_id = len(skeleton_docs) + 1
            hemi_lineage_id = 2 * class_index + (skeleton_id % 2) + 1
            skeleton_docs.append(
                {"skeleton_id": skeleton_id, "nt_known": [name], "hemi_lineage_id": hemi_lineage_id}
            )
            for synapse in members[start : start + synapses_per_skeleton]:
                z, y, x = (float(v * s) for v, s in zip(synapse.voxel, voxel_size, strict=True))
                synapse_docs.append({
                    "synapse_id": 1_000_000 + len(synapse_docs), "x": x, "y": y, "z": z,
                    "skeleton_id": skeleton_id, "confidence": 1.0, "prepost": "pre",
                    "brain_region": "left" if skeleton_id % 2 else "right",
                })  # fmt: skip
    return synapse_docs, skeleton_docs, hemi_lineages


def synthesize_synapses(
    out: Path, db: Database, n_synapses: int = 300,
    classes: Sequence[str] | None = None, seed: int = 0, dataset: str = "raw",
    voxel_size: Sequence[int] = DEFAULT_VOXEL_SIZE, synapses_per_skeleton: int = 5,
    overwrite: bool = False, progress: bool = True,
) -> SyntheticReport:  # fmt: skip
    """Write the synthetic volume to `out/dataset` and its synapses to `db`."""
    from connecto.db.synapse_import import write_synapse_data

    classes = list(classes or DEFAULT_CLASSES)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConnectoError(f"--classes {classes}: need at least two distinct class names")
    if n_synapses < len(classes) * 2:
        raise ConnectoError(f"--synapses {n_synapses}: need at least two per class")
    root = zarr.open_group(str(out), mode="a")
    if dataset in root and not overwrite:
        raise ConnectoError(f"{out}/{dataset} exists; use --overwrite to replace it")
    with tqdm(total=3, desc="synthesize", unit="step", disable=not progress) as bar:
        raw, synapses = make_volume(n_synapses, len(classes), seed)
        bar.update()
        array = create_volume(
            root, dataset, raw.shape, raw.dtype, voxel_size, (0, 0, 0), overwrite=True
        )
        array[:] = raw
        bar.update()
        synapse_docs, skeleton_docs, hemi_lineages = synapse_documents(
            synapses, classes, voxel_size, synapses_per_skeleton
        )
        write_synapse_data(db, synapse_docs, skeleton_docs, hemi_lineages, progress=False)
        bar.update()
    per_class = {name: sum(s.class_index == i for s in synapses) for i, name in enumerate(classes)}
    return SyntheticReport(
        Path(out), dataset, tuple(raw.shape), tuple(voxel_size),  # type: ignore[arg-type]
        len(synapse_docs), len(skeleton_docs), per_class,
    )  # fmt: skip
