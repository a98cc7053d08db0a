"""The 2D training pipeline in gunpowder: a random labelled section with its neighbours.

Each batch is one section z of the labels (inside train_roi) and the raw sections
z-k..z+k around it. With sparse labels only sections holding labels are sampled (one
random location per run of consecutive labelled sections, runs drawn by their number of
sections), batches with less than `min_labelled_fraction` labelled voxels are redrawn
(Reject), and the loss weights are 0 where nothing is labelled. Augmentation is in-plane
only and the same for all sections of a batch (their alignment is the signal), except the
intensity, which varies per section as it does between real sections. Targets: in-plane
affinities (gunpowder's AddAffinities, class-balanced) and 2D LSDs of the centre section.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from scipy.ndimage import uniform_filter

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import RAW_SCALE, RAW_SHIFT, raw_scale, read_roi
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.section_contrast import volume_section_levels
from connecto.tasks.segmentation.pipeline import (
    AFFS_WEIGHTS,
    GT_AFFS,
    GT_AFFS_MASK,
    GT_LSDS,
    LABELS,
    LSDS_WEIGHTS,
    PRED_AFFS,
    PRED_LSDS,
    RAW,
    SegmentationSnapshot,
    checked_roi,
    open_volumes,
    output_reach,
)
from connecto.tasks.segmentation_2d.config import Segmentation2dTrainConfig
from connecto.tasks.segmentation_2d.model import MaskedMseLoss, build_model
from connecto.tasks.segmentation_2d.nodes import AddSectionLsds, LabelledMask, StretchSections

LABELLED = gp.ArrayKey("LABELLED")  # 1 where labels are known (the segmentation keys: same)


# ---------------------------------------------------------------- checks


def _train_region(config: Segmentation2dTrainConfig, raw: Array, labels: Array,
                  source: str) -> Roi:  # fmt: skip
    """`train_roi` (default: the labels), on the voxel grid and inside both volumes."""
    volumes = {"raw": raw, "labels": labels}
    return checked_roi(config.train_roi, "train_roi", volumes, source) or labels.roi


def _voxel_size(config: Segmentation2dTrainConfig, raw: Array, labels: Array,
                source: str) -> Coordinate:  # fmt: skip
    voxel_size = Coordinate(raw.voxel_size)
    if len(voxel_size) != 3:
        raise ConnectoError(f"{source}: the raw dataset is not 3D (voxel size {voxel_size})")
    expected = Coordinate(config.voxel_size) if config.voxel_size else voxel_size
    for name, volume in (("raw", raw), ("labels", labels)):
        if Coordinate(volume.voxel_size) != expected:
            raise ConnectoError(
                f"{source}: key 'voxel_size' = {list(expected)} does not match the voxel "
                f"size {list(volume.voxel_size)} of the {name} dataset"
            )
    return expected


def _check_shapes(config: Segmentation2dTrainConfig, raw: Array, region: Roi,
                  source: str) -> None:  # fmt: skip
    """The input must fit the raw sections and the output the train region in y, x."""
    voxel_size = Coordinate(raw.voxel_size)
    volume = (raw.roi.shape / voxel_size)[1:]
    for axis, want, have in zip("yx", config.input_shape, volume, strict=True):
        if want > have:
            raise ConnectoError(
                f"{source}: key 'input_shape' = {list(config.input_shape)} voxels does not fit "
                f"the raw sections of {list(volume)} voxels ({want} > {have} along {axis})"
            )
    inside = (region.shape / voxel_size)[1:]
    for axis, want, have in zip("yx", config.network_output_shape, inside, strict=True):
        if want > have:
            raise ConnectoError(
                f"{source}: key 'train_roi' holds {list(inside)} voxels in y, x, fewer than "
                f"the network's output {list(config.network_output_shape)} ({want} > {have} "
                f"along {axis}); enlarge it or choose a smaller input_shape"
            )


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class LabelledSections:
    """The runs of consecutive sections to train on, and the largest labelled share of
    an output window on any of them (what `min_labelled_fraction` can ask for)."""

    runs: list[Roi]
    best_fraction: float


def labelled_sections(labels: Array, region: Roi, sparse: bool,
                      window: tuple[int, int]) -> LabelledSections:  # fmt: skip
    """With sparse labels the sections of `region` holding a label (read section by
    section), else all of `region` as one run (every voxel labelled)."""
    if not sparse:
        return LabelledSections([region], 1.0)
    voxel_size = Coordinate(labels.voxel_size)
    runs: list[Roi] = []
    start: int | None = None
    best = 0.0
    depth = region.shape[0] // voxel_size[0]
    for index in range(depth + 1):
        z = region.offset[0] + index * voxel_size[0]
        labelled = False
        if index < depth:
            section = Roi((z, *region.offset[1:]), (voxel_size[0], *region.shape[1:]))
            known = read_roi(labels, section)[0] > 0
            labelled = bool(known.any())
            if labelled:
                best = max(best, _best_window_fraction(known, window))
        if labelled and start is None:
            start = z
        elif not labelled and start is not None:
            runs.append(Roi((start, *region.offset[1:]), (z - start, *region.shape[1:])))
            start = None
    return LabelledSections(runs, best)


def _best_window_fraction(known: np.ndarray, window: tuple[int, int]) -> float:
    """The largest labelled share of any `window` (clipped to the section) in `known`."""
    size = tuple(min(w, s) for w, s in zip(window, known.shape, strict=True))
    return float(uniform_filter(known.astype(np.float32), size, mode="constant").max())


# ---------------------------------------------------------------- pipeline


def _labels_context(config: Segmentation2dTrainConfig, voxel_size: Coordinate) -> Coordinate:
    """How far in y, x beyond the output the labels are read (network context, longest
    affinity offset, LSD gaussian): the labels are padded by this (padding is unlabelled),
    so outputs reach the train region's border."""
    network = output_reach(config.input_shape, config.network_output_shape)
    reach = max(max(abs(o[1]), abs(o[2])) for o in config.neighborhood)
    lsd = [math.ceil(3 * config.lsd_sigma / v) if config.lsds else 0 for v in voxel_size[1:]]
    grow = [n + reach + r + config.grow_boundary for n, r in zip(network, lsd, strict=True)]
    return Coordinate((0, *grow)) * voxel_size


def _run_source(config: Segmentation2dTrainConfig, raw: Array, labels: Array, run: Roi,
                context: Coordinate, levels: np.ndarray | None) -> gp.Pipeline:  # fmt: skip
    """Random locations whose output section lies in `run` (sections stacked around it
    from the whole raw volume, zero beyond it, as in prediction)."""
    raw_source = gp.ArraySource(RAW, raw, interpolatable=True) + gp.Normalize(
        RAW, factor=raw_scale(raw.dtype)
    )
    if levels is not None:
        raw_source += StretchSections(RAW, levels, raw.roi.begin[0], raw.voxel_size[0])
    raw_source += gp.Pad(RAW, None)
    labels_source = (
        gp.ArraySource(LABELS, labels, interpolatable=False)
        + gp.Crop(LABELS, run)
        + gp.Pad(LABELS, context)
        + LabelledMask(LABELS, LABELLED, run, config.sparse_labels)
    )
    return (raw_source, labels_source) + gp.MergeProvider() + gp.RandomLocation()


def augmentations(config: Segmentation2dTrainConfig) -> gp.BatchFilter:
    """In-plane deformation, rotation, mirrors and transposes (the same for every section
    of a batch), and per-section intensity changes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        elastic = gp.ElasticAugment(
            control_point_spacing=(10, 10), jitter_sigma=(2, 2),
            rotation_interval=(0, math.pi / 2), subsample=4, spatial_dims=2,
        )  # fmt: skip
        intensity = gp.IntensityAugment(RAW, 0.9, 1.1, -0.1, 0.1, z_section_wise=True)
    plane = [1, 2]
    return elastic + gp.SimpleAugment(mirror_only=plane, transpose_only=plane) + intensity


def data_pipeline(
    config: Segmentation2dTrainConfig, raw: Array, labels: Array, runs: list[Roi],
    cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    """Batches of RAW (b, 2k+1, y, x) and the centre section's LABELS, LABELLED, GT_AFFS,
    GT_AFFS_MASK, AFFS_WEIGHTS (and GT_LSDS, LSDS_WEIGHTS), each (b, [C,] 1, y, x)."""
    voxel_size = Coordinate(raw.voxel_size)
    context = _labels_context(config, voxel_size)
    levels = (
        None if config.section_percentiles is None
        else volume_section_levels(raw, config.section_percentiles)
    )  # fmt: skip
    sources = tuple(_run_source(config, raw, labels, run, context, levels) for run in runs)
    if len(sources) == 1:
        pipeline = sources[0]
    else:  # every labelled section equally likely
        sections = [run.shape[0] // voxel_size[0] for run in runs]
        pipeline = sources + gp.RandomProvider(probabilities=sections)
    if config.min_labelled_fraction > 0:
        # measured on the mask around the output (the region the targets read)
        pipeline += gp.Reject(mask=LABELLED, min_masked=config.min_labelled_fraction)
    if config.augment:
        pipeline += augmentations(config)
    if config.grow_boundary:
        pipeline += gp.GrowBoundary(LABELS, mask=LABELLED, steps=config.grow_boundary,
                                    only_xy=True)  # fmt: skip
    if config.lsds:
        pipeline += AddSectionLsds(LABELS, LABELLED, GT_LSDS, LSDS_WEIGHTS, config.lsd_sigma,
                                   config.lsd_downsample)  # fmt: skip
    # with sparse labels an unlabelled end says nothing (a painted object may continue
    # unpainted): only pairs with both ends labelled train, as in `segmentation`
    pipeline += gp.AddAffinities(
        config.neighborhood, LABELS, GT_AFFS, unlabelled=LABELLED, affinities_mask=GT_AFFS_MASK,
        labels_mask=LABELLED if config.sparse_labels else None, dtype=np.float32,
    )  # fmt: skip
    pipeline += gp.BalanceLabels(GT_AFFS, AFFS_WEIGHTS, mask=GT_AFFS_MASK)
    pipeline += gp.IntensityScaleShift(RAW, RAW_SCALE, RAW_SHIFT)
    return stacked(pipeline, config.batch_size, cache_workers)


def input_roi(config: Segmentation2dTrainConfig, voxel_size: Coordinate) -> Roi:
    """The raw a prediction of the section at z = 0, y, x = [0, output) reads."""
    k = config.context_sections
    shape = Coordinate((2 * k + 1, *config.input_shape))
    network = output_reach(config.input_shape, config.network_output_shape)
    offset = Coordinate((-k, *(-n for n in network)))
    return Roi(offset * voxel_size, shape * voxel_size)


def output_roi(config: Segmentation2dTrainConfig, voxel_size: Coordinate) -> Roi:
    return Roi((0, 0, 0), Coordinate((1, *config.network_output_shape)) * voxel_size)


def batch_request(config: Segmentation2dTrainConfig, voxel_size: Coordinate,
                  predictions: bool = True) -> gp.BatchRequest:  # fmt: skip
    """RAW around one output section; `predictions=False`: without the Train node's keys."""
    request = gp.BatchRequest()
    request[RAW] = gp.ArraySpec(roi=input_roi(config, voxel_size))
    keys = [LABELS, LABELLED, GT_AFFS, AFFS_WEIGHTS, GT_AFFS_MASK]
    keys += [GT_LSDS, LSDS_WEIGHTS] if config.lsds else []
    keys += ([PRED_AFFS] + ([PRED_LSDS] if config.lsds else [])) if predictions else []
    for key in keys:
        request[key] = gp.ArraySpec(roi=output_roi(config, voxel_size))
    return request


# ---------------------------------------------------------------- driver parts


def labelled_fraction(batch: gp.Batch) -> dict[str, float]:
    """The share of the output that carries labels: tensorboard shows how sparse the
    batches are."""
    return {"labelled_fraction": float(np.mean(batch[LABELLED].data))}


def task_parts(config: Segmentation2dTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs; every check runs here first."""
    raw, labels = open_volumes(config, source)
    voxel_size = _voxel_size(config, raw, labels, source)
    region = _train_region(config, raw, labels, source)
    _check_shapes(config, raw, region, source)
    sections = labelled_sections(labels, region, config.sparse_labels,
                                 config.network_output_shape)  # fmt: skip
    if not sections.runs:
        raise ConnectoError(
            f"{source}: no section of train_roi holds a label (every label is 0, which "
            "sparse_labels = true reads as unlabelled); paint some, or check labels_dataset"
        )
    # Reject would redraw forever: no batch could ever have enough labels
    if sections.best_fraction + 1e-6 < config.min_labelled_fraction:
        raise ConnectoError(
            f"{source}: key 'min_labelled_fraction' = {config.min_labelled_fraction}: no "
            f"output window of {list(config.network_output_shape)} voxels on the labelled "
            f"sections is more than {sections.best_fraction:.3f} labelled; lower it (or paint "
            "more)"
        )
    model = build_model(config)
    outputs: dict[str | int, gp.ArrayKey] = {1: PRED_AFFS}
    loss_inputs: dict[str | int, gp.ArrayKey] = {
        "affs": PRED_AFFS, "gt_affs": GT_AFFS, "affs_weights": AFFS_WEIGHTS,
    }  # fmt: skip
    snapshot_keys = [("raw", RAW), ("labels", LABELS), ("labelled", LABELLED),
                     ("gt_affs", GT_AFFS), ("affs_weights", AFFS_WEIGHTS),
                     ("pred_affs", PRED_AFFS)]  # fmt: skip
    if config.lsds:
        outputs[0] = PRED_LSDS
        loss_inputs.update(lsds=PRED_LSDS, gt_lsds=GT_LSDS, lsds_weights=LSDS_WEIGHTS)
        snapshot_keys += [("gt_lsds", GT_LSDS), ("pred_lsds", PRED_LSDS)]
    output_spec = gp.ArraySpec(voxel_size=voxel_size)
    return TaskParts(
        model=model,
        loss=MaskedMseLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=data_pipeline(config, raw, labels, sections.runs, worker.num_cache_workers),
        request=batch_request(config, voxel_size),
        inputs={"raw": RAW},
        outputs=outputs,
        loss_inputs=loss_inputs,
        array_specs={key: output_spec.copy() for key in outputs.values()},
        snapshot=SegmentationSnapshot(tuple(voxel_size), tuple(snapshot_keys)),
        metrics=labelled_fraction,
    )
