"""The contrastive pretraining pipeline (SimCLR on synapse crops).

`ContrastiveBatchSource` makes whole batches: for `batch_size` random synapses (labels are
never read) it reads raw around each once and draws two augmented views
(`connecto.tasks.synapse_contrastive.augment`). VIEWS holds (2B, z, y, x) float32 in
[-1, 1]: rows 0..B-1 are the first views, rows B..2B-1 the second views of the same
crops, the layout `NTXentLoss` expects. Worker processes cache the batches (`PreCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate
from funlib.persistence import Array

from connecto.config import WorkerConfig
from connecto.data.volumes import NETWORK_RANGE, crop_roi, read_roi, scale_raw
from connecto.tasks.parts import CACHE_SIZE_PER_WORKER, TaskParts
from connecto.tasks.synapse_contrastive.augment import ViewAugmentation
from connecto.tasks.synapse_contrastive.config import ContrastiveTrainConfig
from connecto.tasks.synapse_contrastive.crops import crop_source
from connecto.tasks.synapse_contrastive.loss import NTXentLoss, positive_accuracy
from connecto.tasks.synapse_contrastive.model import build_contrastive_model

VIEWS = gp.ArrayKey("VIEWS")
SYNAPSE_IDS = gp.ArrayKey("SYNAPSE_IDS")
PROJECTIONS = gp.ArrayKey("PROJECTIONS")
SNAPSHOT_PAIRS = 8  # crops shown in a snapshot's grid of view pairs


class ContrastiveBatchSource(gp.BatchProvider):
    """Batches of two views of `batch_size` random synapses: VIEWS (2B, z, y, x)
    float32 in [-1, 1] and SYNAPSE_IDS (B,) int64. World coordinates are relative to
    each synapse (as the classifier's `SynapseBatchSource`): the request's ROI around
    the origin is the crop `crop_roi` reads. Without `augmentation` both views are the
    plain crop."""

    def __init__(
        self, views_key: gp.ArrayKey, ids_key: gp.ArrayKey, raw: Array,
        synapse_ids: np.ndarray, positions: np.ndarray, batch_size: int,
        augmentation: ViewAugmentation | None,
    ) -> None:  # fmt: skip
        if not len(synapse_ids):
            raise ValueError("ContrastiveBatchSource needs at least one synapse")
        self.views_key = views_key
        self.ids_key = ids_key
        self.raw = raw
        self.synapse_ids = np.asarray(synapse_ids, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.batch_size = batch_size
        self.augmentation = augmentation

    def setup(self) -> None:
        dims = self.raw.voxel_size.dims
        unbounded = gp.Roi((None,) * dims, (None,) * dims)
        voxel_size = gp.Coordinate(self.raw.voxel_size)
        self.provides(
            self.views_key,
            gp.ArraySpec(unbounded, voxel_size, interpolatable=True, dtype=np.float32),
        )
        self.provides(self.ids_key, gp.ArraySpec(nonspatial=True, dtype=np.int64))

    def choose(self) -> np.ndarray:
        """Indices of the batch's synapses: distinct while there are enough (a repeated
        synapse would be its own negative)."""
        n = len(self.synapse_ids)
        return np.random.choice(n, self.batch_size, replace=n < self.batch_size)

    def provide(self, request: gp.BatchRequest) -> gp.Batch:
        # gunpowder seeded numpy's global generator from this request
        chosen = self.choose()
        batch = gp.Batch()
        spec = self.spec[self.views_key].copy()
        roi = request[self.views_key].roi if self.views_key in request else None
        if roi is not None:
            spec.roi = roi
            shape = tuple(roi.shape / spec.voxel_size)
            data = np.empty((2, self.batch_size, *shape), np.float32)
            for index, synapse in enumerate(chosen):
                data[0, index], data[1, index] = self.views(self.positions[synapse], shape)
            low, high = NETWORK_RANGE
            data *= high - low
            data += low
            batch[self.views_key] = gp.Array(data.reshape(-1, *shape), spec)
        if self.ids_key in request:
            batch[self.ids_key] = gp.Array(
                self.synapse_ids[chosen], gp.ArraySpec(nonspatial=True, dtype=np.int64)
            )
        return batch

    def views(self, position: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Two views (z, y, x) in [0, 1] of the crop of `shape` around `position` (nm)."""
        if self.augmentation is None:
            crop = scale_raw(read_roi(self.raw, crop_roi(self.raw, position, shape)))
            return crop, crop
        context_shape = self.augmentation.context_shape
        context = scale_raw(read_roi(self.raw, crop_roi(self.raw, position, context_shape)))
        return self.augmentation(context), self.augmentation(context)


def data_pipeline(
    raw: Array, synapse_ids: np.ndarray, positions: np.ndarray, config: ContrastiveTrainConfig,
    cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    augmentation = (
        ViewAugmentation(config.input_shape, config.augmentation) if config.augment else None
    )
    source = ContrastiveBatchSource(
        VIEWS, SYNAPSE_IDS, raw, synapse_ids, positions, config.batch_size, augmentation
    )
    pipeline = gp.Pipeline(source)
    if cache_workers > 0:
        pipeline += gp.PreCache(
            cache_size=CACHE_SIZE_PER_WORKER * cache_workers, num_workers=cache_workers
        )
    return pipeline


def batch_request(input_shape: Sequence[int], voxel_size: Sequence[int]) -> gp.BatchRequest:
    """VIEWS of `input_shape` with the synapse in voxel `input_shape // 2`, SYNAPSE_IDS."""
    shape = Coordinate(input_shape)
    voxels = Coordinate(voxel_size)
    request = gp.BatchRequest()
    request[VIEWS] = gp.ArraySpec(roi=gp.Roi(-(shape // 2) * voxels, shape * voxels))
    request[SYNAPSE_IDS] = gp.ArraySpec(nonspatial=True)
    return request


def pair_grid(views: np.ndarray, pairs: int = SNAPSHOT_PAIRS) -> np.ndarray:
    """uint8 image of the centre sections of the first `pairs` crops: one row per
    crop, its first view left of its second, a 2-pixel gap between."""
    first, second = np.split(np.asarray(views), 2)
    rows = []
    for a, b in zip(first[:pairs], second[:pairs], strict=True):
        a, b = a[a.shape[0] // 2], b[b.shape[0] // 2]
        gap = np.full((a.shape[0], 2), 1.0, np.float32)
        rows += [np.concatenate([a, gap, b], axis=1), np.full((2, 2 * a.shape[1] + 2), 1.0)]
    image = np.concatenate(rows[:-1]) if rows else np.zeros((1, 1))
    low, high = NETWORK_RANGE
    return np.clip((image - low) / (high - low) * 255, 0, 255).astype(np.uint8)


@dataclass
class ContrastiveSnapshot:
    """What `snapshots/batch_<it>.zarr` holds: the two views (b, z, y, x), the synapse
    ids, the projections and `pairs`, a 2D grid of view pairs' centre sections."""

    voxel_size: tuple[int, ...]

    def __call__(self, batch: gp.Batch) -> dict[str, tuple[np.ndarray, dict]]:
        first, second = np.split(batch[VIEWS].data, 2)
        spatial = {
            "voxel_size": list(self.voxel_size), "offset": [0, 0, 0],
            "axis_names": ["b^", "z", "y", "x"],
        }  # fmt: skip
        return {
            "view_1": (first, spatial),
            "view_2": (second, spatial),
            "synapse_ids": (batch[SYNAPSE_IDS].data, {}),
            "projections": (batch[PROJECTIONS].data, {"rows": "first views, then second"}),
            "pairs": (
                pair_grid(batch[VIEWS].data),
                # png: a 2D uint8 image meant to be looked at as it is
                {"image": "centre sections: one row per crop, view 1 | view 2", "png": True},
            ),
        }


def contrastive_metrics(batch: gp.Batch) -> dict[str, float]:
    """`positive_accuracy`: how often a view's nearest other view is its pair."""
    first, second = torch.as_tensor(batch[PROJECTIONS].data).chunk(2)
    return {"positive_accuracy": positive_accuracy(first, second)}


def task_parts(config: ContrastiveTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs for contrastive pretraining; every check
    that can fail runs here, before any training."""
    crops = crop_source(config, source=source)
    model = build_contrastive_model(config)
    pipeline = data_pipeline(
        crops.raw, crops.synapse_ids, crops.positions, config, worker.num_cache_workers
    )
    request = batch_request(config.input_shape, config.voxel_size)
    request[PROJECTIONS] = gp.ArraySpec(nonspatial=True)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    return TaskParts(
        model=model,
        loss=NTXentLoss(config.temperature),
        optimizer=optimizer,
        pipeline=pipeline,
        request=request,
        inputs={"x": VIEWS},
        outputs={0: PROJECTIONS},
        loss_inputs={0: PROJECTIONS},
        array_specs={PROJECTIONS: gp.ArraySpec(nonspatial=True)},
        snapshot=ContrastiveSnapshot(tuple(config.voxel_size)),
        metrics=contrastive_metrics,
    )
