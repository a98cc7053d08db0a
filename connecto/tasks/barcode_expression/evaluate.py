"""Per-neuron barcode calls from an expression prediction, scored against true barcodes.

A neuron's call for channel c is 1 when the mean predicted probability of c over the
neuron's voxels is above the threshold. With the true barcodes (the container's root
attribute `barcodes`: {"<neuron id>": [0/1 per channel]}), per-bit accuracy is the share
of (neuron, channel) pairs called right and exact-barcode accuracy the share of neurons
whose every bit is right.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from funlib.persistence import open_ds

from connecto import ConnectoError
from connecto.tasks.barcode_enhancement.evaluate import container_barcodes, neuron_means


@dataclass(frozen=True)
class BarcodeCalls:
    """Calls of the neurons in a prediction (rows in `neuron_ids` order)."""

    neuron_ids: np.ndarray  # (n,)
    sizes: np.ndarray  # (n,) voxels in the prediction
    mean_probability: np.ndarray  # (n, C)
    calls: np.ndarray  # (n, C) uint8
    truth: np.ndarray | None  # (n, C) uint8 of the scored neurons, None without barcodes
    scored: np.ndarray | None  # (n,) bool: the neuron has a true barcode
    bit_accuracy: float | None
    exact_accuracy: float | None

    def summary(self) -> dict[str, Any]:
        """The figures to store and print (JSON-ready)."""
        return {
            "neurons": int(len(self.neuron_ids)),
            "scored_neurons": int(self.scored.sum()) if self.scored is not None else 0,
            "bit_accuracy": self.bit_accuracy,
            "exact_accuracy": self.exact_accuracy,
        }


def barcode_calls(
    prediction: np.ndarray, labels: np.ndarray,
    barcodes: Mapping[str | int, Sequence[int]] | None = None, threshold: float = 0.5,
    min_voxels: int = 1,
) -> BarcodeCalls:  # fmt: skip
    """Calls of every neuron (label not 0, at least `min_voxels` voxels) of `labels`
    (z, y, x) from `prediction` (C, z, y, x; probabilities, or uint8 probability * 255),
    scored against `barcodes` ({neuron id: [0/1] * C}) when given."""
    ids, sizes, means = neuron_means(prediction, labels)
    channels = prediction.shape[0]
    keep = sizes >= min_voxels
    ids, sizes, means = ids[keep], sizes[keep], means[keep]
    calls = (means > threshold).astype(np.uint8)
    if barcodes is None:
        return BarcodeCalls(ids, sizes, means, calls, None, None, None, None)
    known = {int(k): np.asarray(v, dtype=np.uint8) for k, v in barcodes.items()}
    wrong = [k for k, v in known.items() if v.shape != (channels,)]
    if wrong:
        raise ConnectoError(
            f"barcodes of neuron {wrong[0]}: {len(known[wrong[0]])} bits, the prediction has "
            f"{channels} channels"
        )
    scored = np.array([int(i) in known for i in ids], dtype=bool)
    truth = np.zeros_like(calls)
    for row, neuron in enumerate(ids):
        if scored[row]:
            truth[row] = known[int(neuron)]
    if not scored.any():
        return BarcodeCalls(ids, sizes, means, calls, truth, scored, None, None)
    right = calls[scored] == truth[scored]
    return BarcodeCalls(
        ids, sizes, means, calls, truth, scored,
        bit_accuracy=float(right.mean()), exact_accuracy=float(right.all(axis=1).mean()),
    )  # fmt: skip


def evaluate_prediction(
    prediction_path: str | Path, container: str | Path, labels_dataset: str = "labels",
    threshold: float = 0.5, min_voxels: int = 1,
) -> BarcodeCalls:  # fmt: skip
    """Calls of the neurons in an expression prediction (a zarr dataset path), from the
    labels of `container` over the prediction's ROI, scored against its `barcodes`."""
    prediction = open_ds(str(prediction_path), mode="r")
    labels = open_ds(str(Path(container) / labels_dataset), mode="r")
    if not labels.roi.contains(prediction.roi):
        raise ConnectoError(
            f"{prediction_path}: ROI {prediction.roi} is not inside the labels {labels.roi}"
        )
    return barcode_calls(
        prediction.to_ndarray(prediction.roi), labels.to_ndarray(prediction.roi),
        container_barcodes(container), threshold, min_voxels,
    )  # fmt: skip
