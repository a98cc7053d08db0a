"""Tiny barcoded containers in the agreed PRISM format (what `connecto data
synthesize-barcodes` writes), for the barcode task tests: `raw` (C, z, y, x) uint8,
`labels`, `average_barcode`, `expression`, `unlabelled`, `border_mask`, and the true
barcodes in the root attributes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from funlib.persistence import prepare_ds
from scipy import ndimage

VOXEL_SIZE = (10, 10, 10)
SHAPE = (24, 40, 40)
CHANNELS = 4


def _write(path: Path, data: np.ndarray, voxel_size: Sequence[int]) -> None:
    channels = data.ndim == 4
    array = prepare_ds(
        path, shape=data.shape, offset=(0, 0, 0), voxel_size=voxel_size,
        axis_names=(["c^"] if channels else []) + ["z", "y", "x"], units=["nm"] * 3,
        dtype=data.dtype, mode="w",
    )  # fmt: skip
    array[array.roi] = data


def neuron_labels(shape: Sequence[int], neurons: int, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells around random seeds (1..neurons), with background (0) where a cell
    is thin: a dense labelling with borders between touching objects."""
    seeds = np.zeros(shape, dtype=np.uint64)
    for neuron in range(1, neurons + 1):
        seeds[tuple(int(rng.integers(0, s)) for s in shape)] = neuron
    distance, (iz, iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[iz, iy, ix]
    labels[distance > 9] = 0  # far from every seed: background
    return labels


def write_barcode_container(
    path: Path, shape: Sequence[int] = SHAPE, channels: int = CHANNELS, neurons: int = 12,
    seed: int = 0, noise: float = 25.0,
) -> Path:  # fmt: skip
    """A container whose raw is each neuron's barcode (bright where on) with patchy
    gain and noise, and the derived targets."""
    rng = np.random.default_rng(seed)
    labels = neuron_labels(shape, neurons, rng)
    barcodes = rng.integers(0, 2, size=(neurons + 1, channels)).astype(np.uint8)
    barcodes[0] = 0  # background expresses nothing
    expression = np.moveaxis(barcodes[labels.astype(np.int64)], -1, 0)
    gain = ndimage.gaussian_filter(rng.uniform(0.4, 1.0, size=(channels, *shape)), (0, 2, 2, 2))
    raw = 40 + 160 * expression * gain + rng.normal(0, noise, size=(channels, *shape))
    raw = np.clip(raw, 0, 255).astype(np.uint8)
    average = np.zeros((channels, *shape), dtype=np.float32)
    index = labels.astype(np.int64)
    counts = np.bincount(index.ravel(), minlength=neurons + 1)
    for c in range(channels):
        sums = np.bincount(index.ravel(), weights=raw[c].ravel() / 255.0, minlength=neurons + 1)
        means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        means[0] = 0
        average[c] = means[index]
    eroded = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    root = Path(path)
    _write(root / "raw", raw, VOXEL_SIZE)
    _write(root / "labels", labels, VOXEL_SIZE)
    _write(root / "average_barcode", average, VOXEL_SIZE)
    _write(root / "expression", expression.astype(np.uint8), VOXEL_SIZE)
    _write(root / "unlabelled", (labels > 0).astype(np.uint8), VOXEL_SIZE)
    _write(root / "border_mask", eroded.astype(np.uint8), VOXEL_SIZE)
    present = set(np.unique(labels).tolist()) - {0}
    zarr.open_group(str(root), mode="a").attrs.update(
        barcodes={str(n): barcodes[n].tolist() for n in sorted(present)},
        barcode_channels=channels,
    )
    return root
