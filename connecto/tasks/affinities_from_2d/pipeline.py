"""The 2D->3D training pipeline in gunpowder: `SyntheticSource` makes every sample (random
3D labels and the stacked 2D predictions simulated from them), then, as in the
segmentation task, boundaries grown between labels, 3D affinities of the configured
neighbourhood and class-balancing weights. Nothing is read from disk, so `task_parts` has
no data to check; `augment` changes nothing (every sample is new).
"""

from __future__ import annotations

from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch

from connecto.config import WorkerConfig
from connecto.tasks.affinities_from_2d.config import AffinitiesFrom2dTrainConfig
from connecto.tasks.affinities_from_2d.model import AffinitiesLoss, build_model
from connecto.tasks.affinities_from_2d.synthetic import (
    NeuriteSettings,
    PredictionSettings,
    random_neurites,
    simulate_2d_predictions,
)
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.section_contrast import section_levels, stretch

STACK = gp.ArrayKey("STACK")  # the stacked 2D predictions, the network's input
LABELS = gp.ArrayKey("LABELS")
GT_AFFS = gp.ArrayKey("GT_AFFS")
AFFS_WEIGHTS = gp.ArrayKey("AFFS_WEIGHTS")
PRED_AFFS = gp.ArrayKey("PRED_AFFS")


class SyntheticSource(gp.BatchProvider):
    """Provides `stack` (C, z, y, x float32) and `labels` (uint64) anywhere: each request
    gets a new random label volume covering all it asks for, and the 2D predictions
    simulated from it. Randomness comes from the request's seed (gunpowder's), so a
    seeded request is reproducible and cache workers never repeat each other."""

    def __init__(
        self, stack: gp.ArrayKey, labels: gp.ArrayKey, voxel_size: tuple[int, int, int],
        neurites: NeuriteSettings, predictions: PredictionSettings,
        section_percentiles: tuple[float, float] | None = None,
    ) -> None:  # fmt: skip
        self.stack, self.labels = stack, labels
        self.voxel_size = gp.Coordinate(voxel_size)
        self.neurites, self.predictions = neurites, predictions
        self.section_percentiles = section_percentiles

    def setup(self) -> None:
        everywhere = gp.Roi((None,) * 3, (None,) * 3)
        self.provides(self.stack, gp.ArraySpec(roi=everywhere, voxel_size=self.voxel_size,
                                               dtype=np.float32, interpolatable=True))  # fmt: skip
        self.provides(self.labels, gp.ArraySpec(roi=everywhere, voxel_size=self.voxel_size,
                                                dtype=np.uint64, interpolatable=False))  # fmt: skip

    def provide(self, request: gp.BatchRequest) -> gp.Batch:
        rng = np.random.default_rng(request.random_seed)
        # the stack's channels read `reach` pixels beyond it: generate those too, so its
        # border holds true affinities and LSDs rather than the volume's edge
        reach = self.predictions.reach(self.voxel_size) if self.stack in request else 0
        margin = gp.Coordinate((0, reach, reach)) * self.voxel_size
        rois = [request[key].roi for key in (self.stack, self.labels) if key in request]
        total = rois[0]
        for roi in rois[1:]:
            total = total.union(roi)
        total = total.grow(margin, margin)
        labels = random_neurites(total.shape / self.voxel_size, self.voxel_size, rng,
                                 self.neurites)  # fmt: skip
        batch = gp.Batch()
        for key in (self.labels, self.stack):
            if key not in request:
                continue
            roi = request[key].roi
            if key == self.stack:
                roi = roi.grow(margin, margin)
            crop = ((roi.offset - total.offset) / self.voxel_size,
                    roi.shape / self.voxel_size)  # fmt: skip
            data = labels[tuple(slice(o, o + s) for o, s in zip(*crop, strict=True))]
            if key == self.stack:
                data = simulate_2d_predictions(data, self.voxel_size, self.predictions, rng,
                                               margin=reach)  # fmt: skip
                if self.section_percentiles is not None:
                    data = stretch(data, section_levels(data, self.section_percentiles))
            spec = self.spec[key].copy()
            spec.roi = request[key].roi
            batch[key] = gp.Array(np.ascontiguousarray(data), spec)
        return batch


def neurite_settings(config: AffinitiesFrom2dTrainConfig) -> NeuriteSettings:
    return NeuriteSettings(
        diameter=config.neurite_diameter, curvature=config.curvature, warp=config.warp,
        warp_spacing=config.warp_spacing,
    )  # fmt: skip


def prediction_settings(config: AffinitiesFrom2dTrainConfig) -> PredictionSettings:
    return PredictionSettings(
        offsets=tuple(config.input_offsets), lsds=config.input_lsds, lsd_sigma=config.lsd_sigma,
        lsd_downsample=config.lsd_downsample, split_rate=config.split_rate,
        merge_rate=config.merge_rate, shift_rate=config.shift_rate, shift_max=config.shift_max,
        boundary_width=config.boundary_width, blur_sigma=config.blur_sigma,
        noise_std=config.noise_std, contrast=config.contrast, brightness=config.brightness,
        blob_strength=config.blob_strength, blob_size=config.blob_size,
        missing_rate=config.missing_rate,
    )  # fmt: skip


def data_pipeline(config: AffinitiesFrom2dTrainConfig, cache_workers: int = 0) -> gp.Pipeline:
    """Batches of STACK, LABELS, GT_AFFS and AFFS_WEIGHTS."""
    pipeline = SyntheticSource(STACK, LABELS, config.voxel_size, neurite_settings(config),
                               prediction_settings(config), config.section_percentiles)  # fmt: skip
    if config.grow_boundary:
        pipeline += gp.GrowBoundary(LABELS, steps=config.grow_boundary,
                                    only_xy=config.anisotropic)  # fmt: skip
    pipeline += gp.AddAffinities(config.neighborhood, LABELS, GT_AFFS, dtype=np.float32)
    pipeline += gp.BalanceLabels(GT_AFFS, AFFS_WEIGHTS)
    return stacked(pipeline, config.batch_size, cache_workers)


def batch_request(config: AffinitiesFrom2dTrainConfig, predictions: bool = True) -> (
    gp.BatchRequest
):  # fmt: skip
    """The network's input and output regions; `predictions=False` leaves out PRED_AFFS,
    which only the Train node provides."""
    voxel_size = gp.Coordinate(config.voxel_size)
    input_size = gp.Coordinate(config.input_shape) * voxel_size
    output_size = gp.Coordinate(config.network_output_shape) * voxel_size
    offset = (input_size - output_size) / 2
    request = gp.BatchRequest()
    request[STACK] = gp.ArraySpec(roi=gp.Roi((0, 0, 0), input_size))
    for key in (LABELS, GT_AFFS, AFFS_WEIGHTS) + ((PRED_AFFS,) if predictions else ()):
        request[key] = gp.ArraySpec(roi=gp.Roi(offset, output_size))
    return request


@dataclass
class Snapshot:
    """What `snapshots/batch_<it>.zarr` holds: the input stack, labels, target, weights
    and predicted affinities, each with its voxel size and offset."""

    voxel_size: tuple[int, ...]
    keys: tuple[tuple[str, gp.ArrayKey], ...] = (
        ("stack", STACK), ("labels", LABELS), ("gt_affs", GT_AFFS),
        ("affs_weights", AFFS_WEIGHTS), ("pred_affs", PRED_AFFS),
    )  # fmt: skip

    def __call__(self, batch: gp.Batch) -> dict[str, tuple[np.ndarray, dict]]:
        out = {}
        for name, key in self.keys:
            array = batch[key]
            attrs = {"voxel_size": list(self.voxel_size),
                     "offset": [int(o) for o in array.spec.roi.offset]}  # fmt: skip
            out[name] = (np.asarray(array.data), attrs)
        return out


def task_parts(
    config: AffinitiesFrom2dTrainConfig, worker: WorkerConfig, source: str
) -> TaskParts:  # fmt: skip
    """What the training driver needs; the config's own checks are all there is to check."""
    model = build_model(config)
    output_spec = gp.ArraySpec(voxel_size=gp.Coordinate(config.voxel_size))
    return TaskParts(
        model=model,
        loss=AffinitiesLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=data_pipeline(config, worker.num_cache_workers),
        request=batch_request(config),
        inputs={"stack": STACK},
        outputs={0: PRED_AFFS},
        loss_inputs={"affs": PRED_AFFS, "gt_affs": GT_AFFS, "affs_weights": AFFS_WEIGHTS},
        array_specs={PRED_AFFS: output_spec},
        snapshot=Snapshot(tuple(config.voxel_size)),
    )
