"""The training pipeline of the channel-agnostic barcode tasks in gunpowder.

Raw (C, z, y, x) is read around a random output window inside train_roi (zero beyond the
volume, as in prediction) and scaled to [0, 1]; the per-channel target is read over the
output window; the loss weights (C, z, y, x) are the product of the task's masks, the
same for every channel until the channel augmentations zero some. Then yx mirrors and
transposes (z can be anisotropic), the channel augmentations
(`connecto.tasks.channel_augment`) and, for enhancement with `residual`, the target
minus raw. `channel_task_parts` assembles what the driver needs; barcode-expression
reuses it with its own target, masks, model and loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gunpowder as gp
import numpy as np
import torch
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import open_configured, raw_scale
from connecto.tasks.barcode_enhancement.config import (
    BarcodeEnhancementTrainConfig,
    ChannelAgnosticSettings,
)
from connecto.tasks.barcode_enhancement.model import MaskedMseLoss, build_model
from connecto.tasks.channel_augment import channel_augmentations
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.segmentation.pipeline import SegmentationSnapshot, checked_roi

RAW = gp.ArrayKey("RAW")
TARGET = gp.ArrayKey("TARGET")
WEIGHTS = gp.ArrayKey("WEIGHTS")
PREDICTION = gp.ArrayKey("PREDICTION")


class ChannelWeights(gp.BatchFilter):
    """`weights` (channels, z, y, x) float32: the product of the (z, y, x) `masks`,
    repeated for every channel (each channel's weights can then change on its own)."""

    def __init__(self, masks: list[gp.ArrayKey], weights: gp.ArrayKey, channels: int) -> None:
        self.masks, self.weights, self.channels = masks, weights, channels

    def setup(self) -> None:
        spec = self.spec[self.masks[0]].copy()
        spec.dtype = np.float32
        spec.interpolatable = False
        self.provides(self.weights, spec)

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        for mask in self.masks:
            deps[mask] = gp.ArraySpec(roi=request[self.weights].roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        roi = request[self.weights].roi
        product = np.ones(batch[self.masks[0]].crop(roi).data.shape, dtype=np.float32)
        for mask in self.masks:
            product *= batch[mask].crop(roi).data > 0
        spec = self.spec[self.weights].copy()
        spec.roi = roi
        out = gp.Batch()
        out[self.weights] = gp.Array(np.repeat(product[None], self.channels, axis=0), spec)
        return out


class SubtractRaw(gp.BatchFilter):
    """`target` - `raw` (raw cropped to the target's ROI): the residual enhancement adds
    to raw. After the augmentations, so the residual is to the raw the network sees."""

    def __init__(self, raw: gp.ArrayKey, target: gp.ArrayKey) -> None:
        self.raw, self.target = raw, target

    def setup(self) -> None:
        self.updates(self.target, self.spec[self.target].copy())

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        deps[self.target] = request[self.target].copy()
        roi = request[self.target].roi
        if self.raw in request:  # raw passes on too: the upstream request must cover both
            roi = roi.union(request[self.raw].roi)
        deps[self.raw] = gp.ArraySpec(roi=roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> None:
        target = batch[self.target]
        raw = batch[self.raw].crop(target.spec.roi).data
        target.data = (target.data - raw).astype(np.float32)


def barcode_channels(raw: Array, container: str | Path) -> Array:
    """Raw without the channels after the container's `barcode_channels` (root attribute
    of `connecto data synthesize-barcodes`: synapse marker channels follow the barcode
    channels); all of raw when the attribute is absent."""
    try:
        count = zarr.open_group(str(container), mode="r").attrs.get("barcode_channels")
    except Exception:  # zarr raises several kinds for a foreign store
        count = None
    if not isinstance(count, int) or len(raw.shape) != 4 or count >= raw.shape[0]:
        return raw
    return Array(raw.data[:count], offset=raw.offset, voxel_size=raw.voxel_size,
                 axis_names=raw.axis_names, units=raw.units)  # fmt: skip


@dataclass(frozen=True)
class ChannelData:
    """The opened volumes of a channel-agnostic task, checked against each other."""

    raw: Array
    target: Array
    masks: list[Array]
    region: Roi  # where outputs are drawn from
    voxel_size: Coordinate

    @property
    def channels(self) -> int:
        return int(self.raw.shape[0])


def open_channel_data(
    config: ChannelAgnosticSettings, target_dataset: str, target_key: str,
    masks: list[tuple[str, str]], source: str,
) -> ChannelData:  # fmt: skip
    """Raw, the per-channel target and the masks ((dataset, config key) pairs) of
    `config`, checked: channel axes, voxel sizes, ROIs; errors name the config key."""
    raw_key = "raw_container" if config.raw_container else "container"
    raw = open_configured(config.input_source, config.raw_dataset, (raw_key, "raw_dataset"),
                          source)  # fmt: skip
    raw = barcode_channels(raw, config.input_source)
    target = open_configured(config.container, target_dataset, ("container", target_key), source)
    mask_arrays = [open_configured(config.container, dataset, ("container", key), source)
                   for dataset, key in masks]  # fmt: skip
    for name, array, dims in [("raw_dataset", raw, 4), (target_key, target, 4)] + [
        (key, array, 3) for (_, key), array in zip(masks, mask_arrays, strict=True)
    ]:
        if len(array.shape) != dims:
            expected = "(C, z, y, x)" if dims == 4 else "(z, y, x)"
            raise ConnectoError(
                f"{source}: key '{name}': shape {tuple(array.shape)}, expected {expected}"
            )
    if target.shape[0] != raw.shape[0]:
        raise ConnectoError(
            f"{source}: key '{target_key}': {target.shape[0]} channels, raw has {raw.shape[0]}"
        )
    voxel_size = Coordinate(raw.voxel_size)
    if config.voxel_size is not None and Coordinate(config.voxel_size) != voxel_size:
        raise ConnectoError(
            f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the raw "
            f"voxel size {list(voxel_size)}"
        )
    for name, array in [(target_key, target)] + [
        (key, a) for (_, key), a in zip(masks, mask_arrays, strict=True)
    ]:
        if Coordinate(array.voxel_size) != voxel_size:
            raise ConnectoError(
                f"{source}: key '{name}': voxel size {list(array.voxel_size)} differs from "
                f"raw's {list(voxel_size)}"
            )
    truth = {"target": target, **{key: a for (_, key), a in zip(masks, mask_arrays, strict=True)}}
    for key in ("validation_roi", "test_roi"):
        checked_roi(getattr(config, key), key, {"raw": raw}, source)
    region = checked_roi(config.train_roi, "train_roi", truth, source) or target.roi
    for array in mask_arrays:
        region = region.intersect(array.roi)
    output = Coordinate(config.network_output_shape) * voxel_size
    if any(r < o for r, o in zip(region.shape, output, strict=True)):
        raise ConnectoError(
            f"{source}: key 'train_roi': the training region {list(region.shape)} nm is "
            f"smaller than the network's output {list(output)} nm (input_shape "
            f"{list(config.input_shape)}); enlarge it or lower input_shape"
        )
    return ChannelData(raw, target, mask_arrays, region, voxel_size)


def data_pipeline(
    config: ChannelAgnosticSettings, data: ChannelData, residual: bool, cache_workers: int = 0,
    target_in_raw_units: bool = False,
) -> tuple[gp.Pipeline, list[gp.ArrayKey]]:  # fmt: skip
    """Batches of RAW (b, C, z, y, x) in [0, 1], TARGET and WEIGHTS (b, C, z', y', x');
    also returns the mask keys (for the request). `target_in_raw_units`: TARGET takes raw's
    channel-wise intensity augmentation (an average of raw does; a 0/1 target does not)."""
    mask_keys = [gp.ArrayKey(f"MASK_{i}") for i in range(len(data.masks))]
    raw_source = (
        gp.ArraySource(RAW, data.raw, interpolatable=True)
        + gp.Normalize(RAW, factor=raw_scale(data.raw.dtype))
        + gp.Pad(RAW, None)
    )
    target_source = (
        gp.ArraySource(TARGET, data.target, interpolatable=False)
        + gp.Normalize(TARGET, factor=1.0)  # float32; the truth is in [0, 1] already
        + gp.Crop(TARGET, data.region)
    )
    mask_sources = tuple(
        gp.ArraySource(key, array, interpolatable=False) + gp.Crop(key, data.region)
        for key, array in zip(mask_keys, data.masks, strict=True)
    )
    pipeline = (raw_source, target_source, *mask_sources) + gp.MergeProvider()
    pipeline += gp.RandomLocation()
    pipeline += ChannelWeights(mask_keys, WEIGHTS, data.channels)
    if config.min_masked > 0:
        pipeline += gp.Reject(mask=WEIGHTS, min_masked=config.min_masked)
    if config.augment:
        plane = [1, 2]  # z may be anisotropic
        pipeline += gp.SimpleAugment(mirror_only=plane, transpose_only=plane)
        follow = [TARGET] if target_in_raw_units else []
        for node in channel_augmentations(config.channel_augment, RAW, [TARGET], [WEIGHTS],
                                          follow):  # fmt: skip
            pipeline += node
    if residual:
        pipeline += SubtractRaw(RAW, TARGET)
    return stacked(pipeline, config.batch_size, cache_workers), mask_keys


def batch_request(
    config: ChannelAgnosticSettings, voxel_size: Coordinate, predictions: bool = True
) -> gp.BatchRequest:  # fmt: skip
    """RAW around TARGET and WEIGHTS (and PREDICTION), centred on each other."""
    request = gp.BatchRequest()
    request.add(RAW, Coordinate(config.input_shape) * voxel_size)
    output = Coordinate(config.network_output_shape) * voxel_size
    for key in [TARGET, WEIGHTS] + ([PREDICTION] if predictions else []):
        request.add(key, output)
    return request


def masked_fraction(batch: gp.Batch) -> dict[str, float]:
    """The share of the output where the loss counts (tensorboard shows the masking)."""
    return {"masked_fraction": float(np.mean(batch[WEIGHTS].data > 0))}


def channel_task_parts(
    config: ChannelAgnosticSettings, worker: WorkerConfig, data: ChannelData, residual: bool,
    loss: torch.nn.Module, target_in_raw_units: bool = False,
) -> TaskParts:  # fmt: skip
    """What the driver needs for a channel-agnostic task on `data` (snapshots hold the
    network's output as it is: residual, average or logits)."""
    model = build_model(config)
    pipeline, _ = data_pipeline(config, data, residual, worker.num_cache_workers,
                                target_in_raw_units)  # fmt: skip
    snapshot_keys = (("raw", RAW), ("target", TARGET), ("weights", WEIGHTS),
                     ("prediction", PREDICTION))  # fmt: skip
    return TaskParts(
        model=model,
        loss=loss,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=pipeline,
        request=batch_request(config, data.voxel_size),
        inputs={"raw": RAW},
        outputs={0: PREDICTION},
        loss_inputs={"prediction": PREDICTION, "target": TARGET, "weights": WEIGHTS},
        array_specs={PREDICTION: gp.ArraySpec(voxel_size=data.voxel_size)},
        snapshot=SegmentationSnapshot(tuple(data.voxel_size), snapshot_keys),
        metrics=masked_fraction,
    )


def task_parts(
    config: BarcodeEnhancementTrainConfig, worker: WorkerConfig, source: str
) -> TaskParts:  # fmt: skip
    """Everything the training driver needs; every check runs here first."""
    data = open_channel_data(config, config.target_dataset, "target_dataset",
                             [(config.mask_dataset, "mask_dataset")], source)  # fmt: skip
    return channel_task_parts(
        config, worker, data, config.residual, MaskedMseLoss(), target_in_raw_units=True
    )  # the average of raw: its units
