"""How well a volume shows each neuron's barcode: per-neuron correlation between the
neuron's mean signal per channel and its true barcode (issue #15's enhancement measure).

Enhancement should raise it over raw's: the mean of raw over a neuron is blurred by its
neighbours, patchy expression and noise; the enhanced volume should be close to the
neuron's average barcode everywhere in it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from connecto import ConnectoError


def neuron_means(
    values: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, sizes, means (n, C)) of every label but 0 in `labels` (z, y, x), of
    `values` (C, z, y, x); uint8 values read as value / 255."""
    if values.ndim != 4 or values.shape[1:] != labels.shape:
        raise ConnectoError(
            f"prediction {values.shape} and labels {labels.shape}: expected (C, z, y, x) "
            "and (z, y, x) of the same region"
        )
    if np.issubdtype(values.dtype, np.integer):  # uint8 volumes: value * 255
        scale = 1.0 / float(np.iinfo(values.dtype).max)
    else:
        scale = 1.0
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(ids))
    flat = values.reshape(values.shape[0], -1)
    sums = np.stack(
        [np.bincount(inverse, weights=c.astype(np.float64), minlength=len(ids)) for c in flat], 1
    )
    keep = ids != 0
    return ids[keep], sizes[keep], sums[keep] * scale / sizes[keep, None]


@dataclass(frozen=True)
class BarcodeCorrelation:
    neuron_ids: np.ndarray  # (n,) neurons with a true barcode that is neither all on nor off
    correlation: np.ndarray  # (n,) Pearson correlation of mean signal and barcode

    @property
    def mean(self) -> float | None:
        return float(self.correlation.mean()) if len(self.correlation) else None


def barcode_correlation(
    values: np.ndarray, labels: np.ndarray, barcodes: Mapping[str | int, Sequence[int]],
    min_voxels: int = 1,
) -> BarcodeCorrelation:  # fmt: skip
    """Per neuron of `labels` with a true barcode (and at least `min_voxels` voxels): the
    correlation over channels of its mean `values` and its barcode. Barcodes with every
    channel on or off have no correlation and are left out."""
    ids, sizes, means = neuron_means(values, labels)
    rows, scores = [], []
    for row, neuron in enumerate(ids):
        truth = barcodes.get(str(int(neuron)), barcodes.get(int(neuron)))  # type: ignore[call-overload]
        if truth is None or sizes[row] < min_voxels:
            continue
        truth = np.asarray(truth, dtype=np.float64)
        if truth.shape != (means.shape[1],):
            raise ConnectoError(
                f"barcode of neuron {int(neuron)}: {len(truth)} bits, the volume has "
                f"{means.shape[1]} channels"
            )
        if truth.std() == 0:
            continue
        signal = means[row]
        rows.append(neuron)
        scores.append(0.0 if signal.std() == 0 else float(np.corrcoef(signal, truth)[0, 1]))
    return BarcodeCorrelation(np.asarray(rows), np.asarray(scores, dtype=np.float64))


def container_barcodes(container: str | Path) -> dict[str, list[int]] | None:
    """The true barcodes in a container's root attributes (None when it has none)."""
    try:
        attrs = zarr.open_group(str(container), mode="r").attrs.asdict()
    except Exception:  # zarr raises several kinds for a missing or foreign store
        return None
    barcodes = attrs.get("barcodes")
    return dict(barcodes) if isinstance(barcodes, Mapping) else None
