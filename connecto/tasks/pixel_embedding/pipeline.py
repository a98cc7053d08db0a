"""The training pipeline of pixel embedding in gunpowder.

Raw (C, z, y, x) is read around a random output window inside train_roi (zero beyond the
volume, as in prediction) and scaled to [0, 1]; the labels (and the mask of known truth)
over the output window. `LabelledIds` sets the labels to 0 where the truth is unknown,
so the loss sees one labels array (0: no loss). Then yx mirrors and transposes and the
channel augmentations on raw alone (the objective needs no per-channel target: a
shuffled or zeroed channel changes the input, never which voxels belong together).
"""

from __future__ import annotations

from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import open_configured, raw_scale
from connecto.tasks.barcode_enhancement.pipeline import barcode_channels
from connecto.tasks.channel_augment import channel_augmentations
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.pixel_embedding.config import PixelEmbeddingTrainConfig
from connecto.tasks.pixel_embedding.model import build_loss, build_model
from connecto.tasks.segmentation.pipeline import SegmentationSnapshot, checked_roi

RAW = gp.ArrayKey("RAW")
LABELS = gp.ArrayKey("LABELS")
MASK = gp.ArrayKey("MASK")
LABELLED = gp.ArrayKey("LABELLED")
EMBEDDING = gp.ArrayKey("EMBEDDING")


class LabelledIds(gp.BatchFilter):
    """`labels` as int64 (torch has no uint64 arithmetic), 0 where `mask` is 0; and
    `labelled` (uint8), 1 where the loss counts (for `gp.Reject`)."""

    def __init__(self, labels: gp.ArrayKey, mask: gp.ArrayKey | None, labelled: gp.ArrayKey):
        self.labels, self.mask, self.labelled = labels, mask, labelled

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.int64
        self.updates(self.labels, spec)
        flags = spec.copy()
        flags.dtype = np.uint8
        self.provides(self.labelled, flags)

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        roi = request[self.labelled].roi if self.labelled in request else None
        if self.labels in request:
            roi = request[self.labels].roi if roi is None else roi.union(request[self.labels].roi)
        deps = gp.BatchRequest()
        deps[self.labels] = gp.ArraySpec(roi=roi)
        if self.mask is not None:
            deps[self.mask] = gp.ArraySpec(roi=roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        labels = batch[self.labels]
        ids = labels.data.astype(np.int64)
        if self.mask is not None:
            ids[batch[self.mask].crop(labels.spec.roi).data == 0] = 0
        out = gp.Batch()
        spec = labels.spec.copy()
        spec.dtype = np.int64
        if self.labels in request:
            out[self.labels] = gp.Array(ids, spec).crop(request[self.labels].roi)
        if self.labelled in request:
            flags = spec.copy()
            flags.dtype = np.uint8
            labelled = gp.Array((ids != 0).astype(np.uint8), flags)
            out[self.labelled] = labelled.crop(request[self.labelled].roi)
        return out


@dataclass(frozen=True)
class EmbeddingData:
    """The opened volumes of a pixel-embedding config, checked against each other."""

    raw: Array
    labels: Array
    mask: Array | None
    region: Roi  # where outputs are drawn from
    voxel_size: Coordinate


def open_embedding_data(config: PixelEmbeddingTrainConfig, source: str) -> EmbeddingData:
    """Raw, labels and mask of `config`, checked: shapes, channels, voxel sizes, ROIs;
    errors name the config key."""
    raw_key = "raw_container" if config.raw_container else "container"
    raw = open_configured(config.input_source, config.raw_dataset, (raw_key, "raw_dataset"),
                          source)  # fmt: skip
    raw = barcode_channels(raw, config.input_source)
    if len(raw.shape) != 4:
        raise ConnectoError(
            f"{source}: key 'raw_dataset': shape {tuple(raw.shape)}, expected (C, z, y, x)"
        )
    if raw.shape[0] != config.in_channels:
        raise ConnectoError(
            f"{source}: key 'in_channels' = {config.in_channels}: the raw has "
            f"{raw.shape[0]} channels; set in_channels = {raw.shape[0]}"
        )
    labels = open_configured(config.container, config.labels_dataset,
                             ("container", "labels_dataset"), source)  # fmt: skip
    mask = None
    if config.mask_dataset is not None:
        mask = open_configured(config.container, config.mask_dataset,
                               ("container", "mask_dataset"), source)  # fmt: skip
    truth = {"labels_dataset": labels, **({"mask_dataset": mask} if mask is not None else {})}
    for key, array in truth.items():
        if len(array.shape) != 3:
            raise ConnectoError(
                f"{source}: key '{key}': shape {tuple(array.shape)}, expected (z, y, x)"
            )
    voxel_size = Coordinate(raw.voxel_size)
    if config.voxel_size is not None and Coordinate(config.voxel_size) != voxel_size:
        raise ConnectoError(
            f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the raw "
            f"voxel size {list(voxel_size)}"
        )
    for key, array in truth.items():
        if Coordinate(array.voxel_size) != voxel_size:
            raise ConnectoError(
                f"{source}: key '{key}': voxel size {list(array.voxel_size)} differs from "
                f"raw's {list(voxel_size)}"
            )
    for key in ("validation_roi", "test_roi"):
        checked_roi(getattr(config, key), key, {"raw": raw}, source)
    region = checked_roi(config.train_roi, "train_roi", truth, source) or labels.roi
    if mask is not None:
        region = region.intersect(mask.roi)
    output = Coordinate(config.network_output_shape) * voxel_size
    if any(r < o for r, o in zip(region.shape, output, strict=True)):
        raise ConnectoError(
            f"{source}: key 'train_roi': the training region {list(region.shape)} nm is "
            f"smaller than the network's output {list(output)} nm (input_shape "
            f"{list(config.input_shape)}); enlarge it or lower input_shape"
        )
    return EmbeddingData(raw, labels, mask, region, voxel_size)


def data_pipeline(
    config: PixelEmbeddingTrainConfig, data: EmbeddingData, cache_workers: int = 0
) -> gp.Pipeline:  # fmt: skip
    """Batches of RAW (b, C, z, y, x) in [0, 1], LABELS (b, z', y', x') int64 (0: no
    loss) and LABELLED (b, z', y', x')."""
    raw_source = (
        gp.ArraySource(RAW, data.raw, interpolatable=True)
        + gp.Normalize(RAW, factor=raw_scale(data.raw.dtype))
        + gp.Pad(RAW, None)
    )
    sources = [
        raw_source,
        gp.ArraySource(LABELS, data.labels, interpolatable=False) + gp.Crop(LABELS, data.region),
    ]
    if data.mask is not None:
        sources.append(
            gp.ArraySource(MASK, data.mask, interpolatable=False) + gp.Crop(MASK, data.region)
        )
    pipeline = tuple(sources) + gp.MergeProvider()
    pipeline += gp.RandomLocation()
    pipeline += LabelledIds(LABELS, MASK if data.mask is not None else None, LABELLED)
    if config.min_masked > 0:
        pipeline += gp.Reject(mask=LABELLED, min_masked=config.min_masked)
    if config.augment:
        plane = [1, 2]  # z may be anisotropic
        pipeline += gp.SimpleAugment(mirror_only=plane, transpose_only=plane)
        for node in channel_augmentations(config.channel_augment, RAW):
            pipeline += node
    return stacked(pipeline, config.batch_size, cache_workers)


def batch_request(
    config: PixelEmbeddingTrainConfig, voxel_size: Coordinate, predictions: bool = True
) -> gp.BatchRequest:  # fmt: skip
    """RAW around LABELS and LABELLED (and EMBEDDING), centred on each other."""
    request = gp.BatchRequest()
    request.add(RAW, Coordinate(config.input_shape) * voxel_size)
    output = Coordinate(config.network_output_shape) * voxel_size
    for key in [LABELS, LABELLED] + ([EMBEDDING] if predictions else []):
        request.add(key, output)
    return request


def batch_metrics(batch: gp.Batch) -> dict[str, float]:
    """The share of the output where the loss counts and the objects there."""
    labels = batch[LABELS].data
    return {
        "labelled_fraction": float(np.mean(labels != 0)),
        "objects": float(np.unique(labels[labels != 0]).size),
    }


def task_parts(config: PixelEmbeddingTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs; every check runs here first."""
    data = open_embedding_data(config, source)
    model = build_model(config)
    snapshot_keys = (("raw", RAW), ("labels", LABELS), ("embedding", EMBEDDING))
    return TaskParts(
        model=model,
        loss=build_loss(config),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=data_pipeline(config, data, worker.num_cache_workers),
        request=batch_request(config, data.voxel_size),
        inputs={"raw": RAW},
        outputs={0: EMBEDDING},
        loss_inputs={"embedding": EMBEDDING, "labels": LABELS},
        array_specs={EMBEDDING: gp.ArraySpec(voxel_size=data.voxel_size)},
        snapshot=SegmentationSnapshot(tuple(data.voxel_size), snapshot_keys),
        metrics=batch_metrics,
    )
