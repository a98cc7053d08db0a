"""The MTLSD training pipeline (affinities + local shape descriptors, Sheridan et al.
2023) in gunpowder: random locations inside the train ROI, optional augmentation,
boundaries grown between labels, LSDs (`lsd.train.gp.AddLocalShapeDescriptor`),
affinities of the configured neighbourhood with class-balancing weights, and an optional
`unlabelled` mask (1: labelled) so sparse labels train only where labelled: read from
`unlabelled_dataset`, or with `sparse_labels` derived from labels > 0 (`LabelledMask`).
With `min_labelled_fraction`, gunpowder's `Reject` resamples batches whose output region
is less labelled than that.

Raw is normalised as everywhere else (`connecto.data.volumes`): [0, 1] for the
augmentations, then [-1, 1].
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from lsd.train.gp import AddLocalShapeDescriptor

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import RAW_SCALE, RAW_SHIFT, open_configured, raw_scale
from connecto.tasks.channel_augment import ChannelAugmentConfig, channel_augmentations
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.segmentation.config import SegmentationTrainConfig
from connecto.tasks.segmentation.model import MtlsdLoss, build_mtlsd, check_raw_channels

RAW = gp.ArrayKey("RAW")
LABELS = gp.ArrayKey("LABELS")
UNLABELLED = gp.ArrayKey("UNLABELLED")
GT_LSDS = gp.ArrayKey("GT_LSDS")
LSDS_WEIGHTS = gp.ArrayKey("LSDS_WEIGHTS")
GT_AFFS = gp.ArrayKey("GT_AFFS")
GT_AFFS_MASK = gp.ArrayKey("GT_AFFS_MASK")
AFFS_WEIGHTS = gp.ArrayKey("AFFS_WEIGHTS")
PRED_LSDS = gp.ArrayKey("PRED_LSDS")
PRED_AFFS = gp.ArrayKey("PRED_AFFS")


def output_reach(input_shape: Sequence[int], output: Sequence[int]) -> Coordinate:
    """How far (voxels) an output may stick out of the labels: the network's context, but
    less than the output itself, so that part of it always lies on them. Padding the
    labels further (possible when the output is thinner than the context, e.g. 4 sections
    of anisotropic data) lets a random location fall wholly in the padding, where
    gunpowder's Pad fails."""
    context = [(i - o) // 2 for i, o in zip(input_shape, output, strict=True)]
    return Coordinate(min(c, o - 1) for c, o in zip(context, output, strict=True))


def checked_roi(
    value: list[list[int]] | None, key: str, volumes: dict[str, Array], source: str
) -> Roi | None:
    """`value` as a Roi, checked to lie on the voxel grid and inside every volume."""
    if value is None:
        return None
    roi = Roi(value[0], value[1])
    if any(s <= 0 for s in roi.shape):
        raise ConnectoError(f"{source}: key '{key}' = {value}: the shape must be positive")
    for name, volume in volumes.items():
        voxel_size = volume.voxel_size
        if (roi.offset - volume.roi.offset) % voxel_size != (0,) * 3 or (
            roi.shape % voxel_size != (0,) * 3
        ):
            raise ConnectoError(
                f"{source}: key '{key}' = {value} is not on the voxel grid of the {name} "
                f"volume (voxel size {list(voxel_size)} nm, offset {list(volume.roi.offset)})"
            )
        if not volume.roi.contains(roi):
            raise ConnectoError(
                f"{source}: key '{key}' = {value} is not inside the {name} volume "
                f"[{list(volume.roi.offset)}, {list(volume.roi.shape)}] nm; "
                "set it to a region of this volume"
            )
    return roi


def _check_shapes(
    config: SegmentationTrainConfig, raw: Array, train_roi: Roi, source: str
) -> None:  # fmt: skip
    """The network's input must fit in the raw volume (else it mostly sees zero padding),
    and its output in the train region (else it mostly learns from padded labels)."""
    voxel_size = raw.voxel_size
    volume = raw.roi.shape / voxel_size
    for axis, want, have in zip("zyx", config.input_shape, volume, strict=True):
        if want > have:
            raise ConnectoError(
                f"{source}: key 'input_shape' = {list(config.input_shape)} voxels does not fit "
                f"the raw volume of {list(volume)} voxels ({want} > {have} along {axis}); "
                f"choose at most {have} along {axis}, divisible by downsample_factors"
            )
    output = config.network_output_shape
    region = train_roi.shape / voxel_size
    for axis, want, have in zip("zyx", output, region, strict=True):
        if want > have:
            key = "train_roi" if config.train_roi is not None else "train_roi (unset: labels)"
            raise ConnectoError(
                f"{source}: key '{key}' holds {list(region)} voxels, fewer than the network's "
                f"output {list(output)} of input_shape {list(config.input_shape)} "
                f"({want} > {have} along {axis}); enlarge it or choose a smaller input_shape"
            )


class LabelledMask(gp.BatchFilter):
    """`mask` = 1 where `labels` > 0: sparse labels, where 0 means "not labelled" rather
    than background, as the `unlabelled` mask gunpowder's target nodes read."""

    def __init__(self, labels: gp.ArrayKey, mask: gp.ArrayKey) -> None:
        self.labels = labels
        self.mask = mask

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.uint8
        spec.interpolatable = False
        self.provides(self.mask, spec)
        self.enable_autoskip()

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        deps[self.labels] = gp.ArraySpec(roi=request[self.mask].roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        labels = batch[self.labels]
        spec = self.spec[self.mask].copy()
        spec.roi = labels.spec.roi
        outputs = gp.Batch()
        outputs[self.mask] = gp.Array((labels.data > 0).astype(np.uint8), spec)
        return outputs


def augmentations(config: SegmentationTrainConfig) -> gp.BatchFilter:
    """Elastic deformation, mirrors/transposes and intensity changes; in-plane only
    where the downsampling keeps z (anisotropic data)."""
    anisotropic = all(f[0] == 1 for f in config.downsample_factors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        elastic = gp.ElasticAugment(
            control_point_spacing=(4, 10, 10) if anisotropic else (10, 10, 10),
            jitter_sigma=(0, 2, 2) if anisotropic else (2, 2, 2),
            rotation_interval=(0, math.pi / 2),
            subsample=4,
        )
        if config.in_channels > 1:
            # each channel (and section, if anisotropic) its own gain and offset: the
            # channels of light microscopy vary independently
            slab = (1, 1 if anisotropic else -1, -1, -1)
            intensity = gp.IntensityAugment(RAW, 0.9, 1.1, -0.1, 0.1, slab=slab)
        else:
            intensity = gp.IntensityAugment(RAW, 0.9, 1.1, -0.1, 0.1, z_section_wise=anisotropic)
    axes = [1, 2] if anisotropic else None
    return elastic + gp.SimpleAugment(mirror_only=axes, transpose_only=axes) + intensity


def data_pipeline(
    config: SegmentationTrainConfig, raw: Array, labels: Array, unlabelled: Array | None,
    train_roi: Roi, cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    """Batches of RAW, GT_LSDS, LSDS_WEIGHTS, GT_AFFS, AFFS_WEIGHTS (and UNLABELLED with a
    mask: `unlabelled`, or `config.sparse_labels`)."""
    if unlabelled is not None and config.sparse_labels:
        raise ConnectoError("sparse_labels derives the unlabelled mask: pass no unlabelled array")
    voxel_size = gp.Coordinate(config.voxel_size)
    # labels are zero-padded by what the LSD gaussian (3 sigma) and the affinity offsets
    # read beyond the network's context, so outputs reach the train ROI's border
    reach = max(abs(o) for offset in config.neighborhood for o in offset)
    # per axis: on anisotropic data (40 x 4 x 4 nm) the gaussian spans 10 times fewer
    # sections than pixels; the smallest voxel for every axis padded a thin stack so far
    # that crops landed wholly outside the raw
    lsd_reach = gp.Coordinate(
        math.ceil(3 * config.lsd_sigma / v) if config.lsds else 0 for v in voxel_size
    )
    wanted = (
        output_reach(config.input_shape, config.network_output_shape)
        + gp.Coordinate((reach,) * 3)
        + lsd_reach
    )
    # the affinities grow the labels' request on one side only, the gaussian on both: pad
    # by more than the output plus the gaussian and an output can lie wholly in the
    # padding on the other side (long offsets on a small volume), where Pad fails
    most = gp.Coordinate(config.network_output_shape) - gp.Coordinate((1, 1, 1)) + lsd_reach
    context = gp.Coordinate(min(w, m) for w, m in zip(wanted, most, strict=True)) * voxel_size
    sources = [
        gp.ArraySource(RAW, raw, interpolatable=True)
        + gp.Normalize(RAW, factor=raw_scale(raw.dtype))
        + gp.Pad(RAW, None),
        gp.ArraySource(LABELS, labels, interpolatable=False)
        + gp.Crop(LABELS, train_roi)
        + gp.Pad(LABELS, context),
    ]
    if unlabelled is not None:
        sources.append(
            gp.ArraySource(UNLABELLED, unlabelled, interpolatable=False)
            + gp.Crop(UNLABELLED, train_roi)
            + gp.Pad(UNLABELLED, context)
        )
    pipeline = tuple(sources) + gp.MergeProvider() + gp.RandomLocation()
    if config.augment:
        pipeline += augmentations(config)
        if config.channel_augment is not None:  # raw only: labels have no channels
            settings = ChannelAugmentConfig.model_validate(config.channel_augment)
            for node in channel_augmentations(settings, RAW):
                pipeline += node
    if config.sparse_labels:
        # after the augmentations, so the mask is exactly the labels the targets see, and
        # before GrowBoundary: the boundary it grows between two labels is labelled (0 there
        # is background, which trains)
        pipeline += LabelledMask(LABELS, UNLABELLED)
    mask = UNLABELLED if unlabelled is not None or config.sparse_labels else None
    anisotropic = all(f[0] == 1 for f in config.downsample_factors)
    if config.grow_boundary:
        pipeline += gp.GrowBoundary(LABELS, mask=mask, steps=config.grow_boundary,
                                    only_xy=anisotropic)  # fmt: skip
    if config.lsds:
        pipeline += AddLocalShapeDescriptor(
            LABELS, GT_LSDS, lsds_mask=LSDS_WEIGHTS, unlabelled=mask, sigma=config.lsd_sigma,
            downsample=2,
        )  # fmt: skip
    # gunpowder's `unlabelled` keeps a pair from a labelled to an unlabelled voxel as
    # "boundary" (right for an explicit mask over dense labels, and for whole objects);
    # where a labelled object may go on unlabelled that end says nothing, so the mask as
    # `labels_mask` keeps only pairs with both ends labelled
    both_ends = config.sparse_labels and config.unlabelled_edges == "ignored"
    pipeline += gp.AddAffinities(
        config.neighborhood, LABELS, GT_AFFS, unlabelled=mask, affinities_mask=GT_AFFS_MASK,
        labels_mask=UNLABELLED if both_ends else None, dtype=np.float32,
    )  # fmt: skip
    pipeline += gp.BalanceLabels(GT_AFFS, AFFS_WEIGHTS, mask=GT_AFFS_MASK)
    if config.min_labelled_fraction > 0:
        # after the targets, where UNLABELLED is cropped to the requested output region;
        # gunpowder's test is strict (">"), so what passes has at least the fraction
        pipeline += gp.Reject(mask=UNLABELLED, min_masked=config.min_labelled_fraction)
    pipeline += gp.IntensityScaleShift(RAW, RAW_SCALE, RAW_SHIFT)
    return stacked(pipeline, config.batch_size, cache_workers)


def batch_request(config: SegmentationTrainConfig, with_unlabelled: bool) -> gp.BatchRequest:
    voxel_size = gp.Coordinate(config.voxel_size)
    input_size = gp.Coordinate(config.input_shape) * voxel_size
    output_size = gp.Coordinate(config.network_output_shape) * voxel_size
    offset = (input_size - output_size) / 2
    request = gp.BatchRequest()
    request[RAW] = gp.ArraySpec(roi=gp.Roi((0, 0, 0), input_size))
    keys = [LABELS, GT_AFFS, AFFS_WEIGHTS, GT_AFFS_MASK, PRED_AFFS]
    keys += [GT_LSDS, LSDS_WEIGHTS, PRED_LSDS] if config.lsds else []
    keys += [UNLABELLED] if with_unlabelled or config.sparse_labels else []
    for key in keys:
        request[key] = gp.ArraySpec(roi=gp.Roi(offset, output_size))
    return request


@dataclass
class SegmentationSnapshot:
    """What `snapshots/batch_<it>.zarr` holds: raw, labels, target and predicted
    affinities (and LSDs), each with its voxel size and offset."""

    voxel_size: tuple[int, ...]
    keys: tuple[tuple[str, gp.ArrayKey], ...]

    def __call__(self, batch: gp.Batch) -> dict[str, tuple[np.ndarray, dict]]:
        out = {}
        for name, key in self.keys:
            array = batch[key]
            attrs = {
                "voxel_size": list(self.voxel_size),
                "offset": [int(o) for o in array.spec.roi.offset],
            }
            out[name] = (np.asarray(array.data), attrs)
        return out


def open_volumes(config: Any, source: str) -> tuple[Array, Array]:
    """Raw and labels of a train config with `raw_container`, `raw_dataset`,
    `labels_container` (None: raw's) and `labels_dataset`; errors name the keys."""
    raw_keys = ("raw_container", "raw_dataset")
    raw = open_configured(config.raw_container, config.raw_dataset, raw_keys, source)
    label_keys = ("labels_container" if config.labels_container else "raw_container",
                  "labels_dataset")  # fmt: skip
    return raw, open_configured(config.labels_source, config.labels_dataset, label_keys, source)


def task_parts(config: SegmentationTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs for MTLSD; every check runs here first."""
    raw, labels = open_volumes(config, source)
    check_raw_channels(raw, config.in_channels, source)
    unlabelled = None
    if config.unlabelled_dataset:
        container_key = next(
            k for k in ("unlabelled_container", "labels_container", "raw_container")
            if getattr(config, k)
        )  # fmt: skip
        unlabelled = open_configured(config.unlabelled_source, config.unlabelled_dataset,
                           (container_key, "unlabelled_dataset"), source)  # fmt: skip
    volumes = {"raw": raw, "labels": labels}
    if unlabelled is not None:
        volumes["unlabelled"] = unlabelled
    for name, volume in volumes.items():
        if tuple(volume.voxel_size) != tuple(config.voxel_size):
            raise ConnectoError(
                f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the "
                f"voxel size {list(volume.voxel_size)} of the {name} dataset"
            )
    for key in ("validation_roi", "test_roi"):
        checked_roi(getattr(config, key), key, {"raw": raw, "labels": labels}, source)
    train_roi = checked_roi(config.train_roi, "train_roi", volumes, source) or labels.roi
    _check_shapes(config, raw, train_roi, source)
    model = build_mtlsd(config)
    pipeline = data_pipeline(config, raw, labels, unlabelled, train_roi, worker.num_cache_workers)
    request = batch_request(config, unlabelled is not None)
    output_spec = gp.ArraySpec(voxel_size=gp.Coordinate(config.voxel_size))
    outputs = {1: PRED_AFFS}
    loss_inputs = {"affs": PRED_AFFS, "gt_affs": GT_AFFS, "affs_weights": AFFS_WEIGHTS}
    snapshot_keys = [("raw", RAW), ("labels", LABELS), ("gt_affs", GT_AFFS),
                     ("pred_affs", PRED_AFFS)]  # fmt: skip
    if config.lsds:
        outputs[0] = PRED_LSDS
        loss_inputs.update(lsds=PRED_LSDS, gt_lsds=GT_LSDS, lsds_weights=LSDS_WEIGHTS)
        snapshot_keys += [("gt_lsds", GT_LSDS), ("pred_lsds", PRED_LSDS)]
    if UNLABELLED in request:
        snapshot_keys.append(("unlabelled", UNLABELLED))
    return TaskParts(
        model=model,
        loss=MtlsdLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=pipeline,
        request=request,
        inputs={"raw": RAW},
        outputs=outputs,
        loss_inputs=loss_inputs,
        array_specs={key: output_spec.copy() for key in outputs.values()},
        snapshot=SegmentationSnapshot(tuple(config.voxel_size), tuple(snapshot_keys)),
    )
