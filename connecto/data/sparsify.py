"""Simulated sparse labels from dense ground truth, as in the sparsity experiments of
Thiyagarajan et al. (bioRxiv 2024.06.14.599135): a network trained on the sparse copy is
scored against the dense truth it came from.

Three modes, one at a time; 0 in the output means "unlabelled" (what training with
`sparse_labels = true` expects):

- `Disks(count, radius_nm)`: the paper's `disk_N`. In every section (z index) `count`
  centres are drawn among its labelled voxels (a disk centred on background or on
  unlabelled voxels would add nothing) and the labels within `radius_nm` of a centre
  (in-plane distance in nm) are kept. The draw of section z depends only on (seed, z),
  so a run is reproducible however it is sliced.
- `Sections(indices)`: whole sections kept (`every_kth` makes every k-th one, from 0).

The volume is streamed in slabs of whole chunk rows along z: only a slab is in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from funlib.persistence import Array

from connecto import ConnectoError
from connecto.data.ingest import create_volume
from connecto.data.volumes import open_container, open_raw

DEFAULT_DATASET = "volumes/labels/neuron_ids"
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Disks:
    """`count` disks of `radius_nm` per section, centres drawn from `seed`."""

    count: int
    radius_nm: float
    seed: int = DEFAULT_SEED

    def describe(self) -> str:
        return f"disk_{self.count} (radius {self.radius_nm:g} nm, seed {self.seed})"


@dataclass(frozen=True)
class Sections:
    """Whole sections (z voxel indices from the dataset's first section)."""

    indices: tuple[int, ...]
    every: int | None = None  # how `indices` were made, for the description

    def describe(self) -> str:
        if self.every is not None:
            return f"one section in every {self.every} ({len(self.indices)} sections)"
        return f"sections {','.join(map(str, self.indices))}"


Mode = Disks | Sections


@dataclass(frozen=True)
class SparsifyReport:
    container: Path
    dataset: str
    mode: Mode
    shape: tuple[int, ...]
    voxel_size: tuple[int, ...]
    kept: int  # labelled voxels in the output
    dense_labelled: int  # labelled (> 0) voxels in the dense truth
    total: int  # voxels in the volume
    # (n, 3) z, y, x voxel indices of the disk centres (empty for whole sections)
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))

    @property
    def fraction_of_truth(self) -> float:
        return self.kept / self.dense_labelled if self.dense_labelled else 0.0

    @property
    def fraction_of_volume(self) -> float:
        return self.kept / self.total if self.total else 0.0


def choose_mode(
    depth: int, disks: int | None = None, radius_nm: float | None = None,
    every: int | None = None, sections: Sequence[int] | None = None, seed: int | None = None,
) -> Mode:  # fmt: skip
    """The one mode the options ask for, checked against a volume of `depth` sections;
    ConnectoError naming the option otherwise."""
    given = [name for name, value in
             (("--disks", disks), ("--every", every), ("--sections", sections))
             if value is not None]  # fmt: skip
    if len(given) != 1:
        found = " and ".join(given) if given else "none"
        raise ConnectoError(
            f"give exactly one of --disks N --radius NM, --every K or --sections A,B (got {found})"
        )
    if disks is None and radius_nm is not None:
        raise ConnectoError(f"--radius {radius_nm:g}: only --disks uses a radius")
    if disks is None and seed is not None:
        raise ConnectoError(f"--seed {seed}: only --disks draws at random")
    if disks is not None:
        return _disks(disks, radius_nm, seed)
    if every is not None:
        if every < 1:
            raise ConnectoError(f"--every {every}: expected a positive section step")
        return Sections(tuple(range(0, depth, every)), every=every)
    return _sections(sections or (), depth)


def _disks(count: int, radius_nm: float | None, seed: int | None) -> Disks:
    if count < 1:
        raise ConnectoError(f"--disks {count}: expected a positive number of disks per section")
    if radius_nm is None:
        raise ConnectoError(f"--disks {count}: needs --radius NM (the disk radius in nm)")
    if not (math.isfinite(radius_nm) and radius_nm > 0):
        raise ConnectoError(f"--radius {radius_nm:g}: expected a positive radius in nm")
    return Disks(count, float(radius_nm), DEFAULT_SEED if seed is None else seed)


def _sections(indices: Sequence[int], depth: int) -> Sections:
    text = ",".join(map(str, indices))
    if not indices:
        raise ConnectoError("--sections: expected section indices, e.g. --sections 3,17")
    outside = [i for i in indices if not 0 <= i < depth]
    if outside:
        raise ConnectoError(
            f"--sections {text}: section {outside[0]} is outside the volume "
            f"(z voxel indices 0 to {depth - 1})"
        )
    if len(set(indices)) != len(indices):
        raise ConnectoError(f"--sections {text}: a section is listed twice")
    return Sections(tuple(sorted(indices)))


def disk_mask(
    labels: np.ndarray, count: int, radius_nm: float, pixel_size: Sequence[int],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The voxels of one section (y, x) within `radius_nm` of `count` centres drawn
    without replacement among its labelled voxels (all of them when fewer), and the
    centres (n, 2)."""
    candidates = np.flatnonzero(labels > 0)
    picked = rng.choice(candidates, size=min(count, candidates.size), replace=False)
    centres = np.stack(np.unravel_index(np.sort(picked), labels.shape), axis=1)
    keep = np.zeros(labels.shape, dtype=bool)
    vy, vx = pixel_size
    ry, rx = int(radius_nm // vy), int(radius_nm // vx)  # the disk's box, in pixels
    for cy, cx in centres:
        y0, y1 = max(cy - ry, 0), min(cy + ry + 1, labels.shape[0])
        x0, x1 = max(cx - rx, 0), min(cx + rx + 1, labels.shape[1])
        dy = (np.arange(y0, y1) - cy)[:, None] * vy
        dx = (np.arange(x0, x1) - cx)[None, :] * vx
        keep[y0:y1, x0:x1] |= dy**2 + dx**2 <= radius_nm**2
    return keep, centres


def _section_rng(seed: int, z: int) -> np.random.Generator:
    # one stream per section: the draw of section z never depends on the others
    return np.random.default_rng([seed, z])


def _slabs(depth: int, step: int) -> Iterable[tuple[int, int]]:
    for z0 in range(0, depth, step):
        yield z0, min(z0 + step, depth)


def _sparsify_slab(
    dense: np.ndarray, z0: int, mode: Mode, pixel_size: Sequence[int]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sparse copy of sections z0.. (`dense`: z, y, x) and the disk centres drawn."""
    sparse = np.zeros_like(dense)
    centres = []
    for i, section in enumerate(dense):
        z = z0 + i
        if isinstance(mode, Sections):
            if z in mode.indices:
                sparse[i] = section
            continue
        keep, drawn = disk_mask(section, mode.count, mode.radius_nm, pixel_size,
                                _section_rng(mode.seed, z))  # fmt: skip
        sparse[i][keep] = section[keep]
        centres.append(np.column_stack([np.full(len(drawn), z), drawn]))
    return sparse, centres


def _open_labels(source: Path, dataset: str) -> tuple[zarr.Array, Array]:
    """The stored labels (read slab by slab) and their funlib view (voxel size, offset)."""
    group = open_container(source)
    stored = group.get(dataset)
    if isinstance(stored, zarr.Array) and (
        stored.ndim != 3 or not np.issubdtype(stored.dtype, np.integer)
    ):
        raise ConnectoError(
            f"{source}/{dataset}: {stored.dtype} with shape {list(stored.shape)}; "
            "expected 3D integer labels (z, y, x)"
        )
    array = open_raw(source, dataset, "--dataset")  # names the datasets there if absent
    return group[dataset], array


def _output(
    out: Path, name: str, like: zarr.Array, voxel_size: Sequence[int], offset: Sequence[int],
    overwrite: bool,
) -> zarr.Array:  # fmt: skip
    root = zarr.open_group(str(out), mode="a")
    if name in root and not overwrite:
        raise ConnectoError(f"{out}/{name} exists; use --overwrite to replace it")
    return create_volume(root, name, like.shape, like.dtype, voxel_size, offset, like.chunks,
                         overwrite=True)  # fmt: skip


def _attrs(mode: Mode, source: str) -> dict:
    """What the output records of how it was made (with the seed, it can be remade)."""
    if isinstance(mode, Disks):
        made = {"mode": "disks", "disks": mode.count, "radius_nm": mode.radius_nm,
                "seed": mode.seed}  # fmt: skip
    else:
        made = {"mode": "sections", "sections": list(mode.indices), "every": mode.every}
    return {"source": source, **made}


def sparsify(
    source: Path, out: Path, dataset: str = DEFAULT_DATASET, out_dataset: str | None = None,
    *, disks: int | None = None, radius_nm: float | None = None, every: int | None = None,
    sections: Sequence[int] | None = None, seed: int | None = None, overwrite: bool = False,
) -> SparsifyReport:  # fmt: skip
    """Write a sparse copy of the dense labels `source/dataset` to `out/out_dataset`
    (default the same name): same shape, dtype, chunks, voxel size and offset, 0 where
    not kept. Exactly one of `disks` (with `radius_nm`, `seed`), `every` or `sections`."""
    out_dataset = out_dataset or dataset
    if Path(out).resolve() == Path(source).resolve() and out_dataset == dataset:
        raise ConnectoError(
            f"{out}/{out_dataset}: the output would replace the dense labels it is made "
            "from; give another container or --dataset SOURCE:DESTINATION"
        )
    stored, array = _open_labels(source, dataset)
    mode = choose_mode(stored.shape[0], disks, radius_nm, every, sections, seed)
    voxel_size = tuple(array.voxel_size)
    offset = tuple(array.roi.offset)
    target = _output(Path(out), out_dataset, stored, voxel_size, offset, overwrite)
    kept = dense_labelled = 0
    centres: list[np.ndarray] = []
    for z0, z1 in _slabs(stored.shape[0], stored.chunks[0]):
        dense = stored[z0:z1]
        sparse, drawn = _sparsify_slab(dense, z0, mode, voxel_size[1:])
        target[z0:z1] = sparse
        kept += int(np.count_nonzero(sparse > 0))
        dense_labelled += int(np.count_nonzero(dense > 0))
        centres += drawn
    report = SparsifyReport(
        Path(out), out_dataset, mode, tuple(stored.shape), voxel_size, kept, dense_labelled,
        int(np.prod(stored.shape)),
        np.concatenate(centres) if centres else np.zeros((0, 3), dtype=np.int64),
    )  # fmt: skip
    target.attrs["sparsified"] = {
        **_attrs(mode, f"{source}/{dataset}"),
        "fraction_of_truth": report.fraction_of_truth,
        "fraction_of_volume": report.fraction_of_volume,
    }
    return report
