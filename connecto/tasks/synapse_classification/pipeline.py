"""The synapse classification training pipeline (synister's, in gunpowder).

`SynapseBatchSource` makes whole class-balanced batches: raw around random synapses,
read straight from zarr/N5 and augmented as synister does (`SynapseAugmentation`: in-plane
deformation, as sections are 10x thicker than pixels are wide; mirror and transpose in
y-x; intensity per section), mapped to [-1, 1] as `connecto.data.volumes.normalize_raw`
does, with their class indices. Worker processes cache the batches (`PreCache`).

One node does per batch what gunpowder would chain per sample (`ArraySource`,
`Normalize`, `Pad`, `SpecifiedLocation`, `ElasticAugment`, `SimpleAugment`,
`IntensityAugment`, a label node, `RandomProvider`, `IntensityScaleShift`, `Stack`):
gunpowder deep-copies the request at every node for every sample, which at synister's
16x160x160 cost about 2 ms a sample even with two nodes per sample, a sixth of the time."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import (
    NETWORK_RANGE,
    open_raw,
    raw_scale,
    read_roi,
    scale_raw,
    voxel_origin,
)
from connecto.tasks.parts import TaskParts
from connecto.tasks.synapse_classification.config import SynapseTrainConfig
from connecto.tasks.synapse_classification.model import ResNetClassifier, build_classifier
from connecto.tasks.synapse_contrastive.model import load_pretrained_encoder

RAW = gp.ArrayKey("RAW")
LABEL = gp.ArrayKey("LABEL")
LOGITS = gp.ArrayKey("LOGITS")
CACHE_SIZE_PER_WORKER = 4


@dataclass
class AugmentPlan:
    """The random draws of one augmented sample, and where its raw must be read."""

    box: Roi  # in voxels, relative to the target crop's first voxel: the raw to read
    grid: np.ndarray  # (h, w, 2) float32: grid_sample's x, y in [-1, 1] of each window
    corners: np.ndarray  # (z, 2) int: (y, x) of each section's window in the raw read
    window: tuple[int, int]  # (y, x) size of every section's window
    scale: np.ndarray  # (z,) intensity scale per section
    shift: np.ndarray  # (z,) intensity shift per section


class SynapseAugmentation:
    """synister's augmentations, aware of anisotropy, fused into one bilinear
    resampling of a raw crop:

    - elastic deformation and rotation in y-x, the same in every section (synister's
      `ElasticAugment` settings deform nothing across sections);
    - section slips and shifts by whole pixels (as gunpowder's `ElasticAugment`);
    - mirror and transpose in y-x (as `SimpleAugment(mirror_only=[1, 2],
      transpose_only=[1, 2])`): a flip or transpose of the sampling grid, free;
    - intensity scale and shift per section of the [0, 1]-scaled raw, clipped to [0, 1]
      (as `IntensityAugment(z_section_wise=True)`).

    The y-x sampling grid is computed once and shared by all sections (torch's
    `grid_sample` with sections as channels); misalignment only moves each section's
    window of the raw by whole pixels. Draws come from numpy's global generator, which
    gunpowder seeds per request."""

    def __init__(
        self, control_point_spacing: int = 40, jitter_sigma: float = 2.0,
        max_rotation: float = math.pi / 2, prob_slip: float = 0.05, prob_shift: float = 0.05,
        max_misalign: int = 10, scale: tuple[float, float] = (0.9, 1.1),
        shift: tuple[float, float] = (-0.1, 0.1),
    ) -> None:  # fmt: skip
        self.spacing = control_point_spacing
        self.jitter_sigma = jitter_sigma
        self.max_rotation = max_rotation
        self.prob_slip = prob_slip
        self.prob_shift = prob_shift
        self.max_misalign = max_misalign
        self.scale = scale
        self.shift = shift

    def warp(self, height: int, width: int) -> np.ndarray:
        """Source (y, x) of each target pixel, in target pixels: (2, height, width).
        Rotation about the centre plus a bilinearly upsampled random jitter, then a
        random mirror per axis and (square crops) transpose."""
        centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
        yy = np.arange(height) - centre_y
        xx = np.arange(width) - centre_x
        angle = np.random.uniform(0, self.max_rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        grid = (math.ceil(height / self.spacing) + 1, math.ceil(width / self.spacing) + 1)
        jitter = np.random.normal(0, self.jitter_sigma, (2, *grid))
        # up_y @ jitter @ up_x.T is ndimage.zoom(jitter, order=1, grid_mode=True, mode="nearest")
        coordinates = _upsampling(height, grid[0]) @ jitter @ _upsampling(width, grid[1]).T
        coordinates[0] += (cos * yy + centre_y)[:, None] - (sin * xx)[None, :]
        coordinates[1] += (sin * yy)[:, None] + (cos * xx + centre_x)[None, :]
        flips = np.random.random(2) < 0.5
        coordinates = coordinates[:, :: -1 if flips[0] else 1, :: -1 if flips[1] else 1]
        if height == width and np.random.random() < 0.5:
            coordinates = coordinates.transpose(0, 2, 1)
        return coordinates

    def misalignment(self, sections: int) -> np.ndarray:
        """(y, x) offset in whole pixels of each section: (sections, 2). A slip moves
        one section, a shift that section and all after it (as gunpowder's, though a slip
        here is relative to the sections around it, shifted or not)."""
        draw = np.random.random(sections)
        slip = draw < self.prob_slip
        shift = ~slip & (draw < self.prob_slip + self.prob_shift)
        moves = np.random.randint(-self.max_misalign, self.max_misalign + 1, (sections, 2))
        return np.cumsum(moves * shift[:, None], axis=0) + moves * slip[:, None]

    def plan(self, shape: Sequence[int]) -> AugmentPlan:
        """Draw the augmentation of a (z, y, x) crop of `shape`."""
        sections, height, width = shape
        coordinates = self.warp(height, width)
        offsets = self.misalignment(sections)
        # the window the shared grid samples, then the box all sections' windows are in:
        # what is read, as `ElasticAugment` reads the bounding box of what it samples
        low = np.floor(coordinates.min(axis=(1, 2))).astype(int)
        high = np.ceil(coordinates.max(axis=(1, 2))).astype(int)
        window = high - low + 1
        begin = low + offsets.min(axis=0)
        end = high + offsets.max(axis=0) + 1
        grid = np.empty((height, width, 2), dtype=np.float32)  # grid_sample wants x, y
        for axis, (index, size) in enumerate(((1, window[1]), (0, window[0]))):
            scale = 2 / max(size - 1, 1)
            grid[..., axis] = coordinates[index] * scale - (low[index] * scale + 1)
        return AugmentPlan(
            box=Roi((0, *begin), (sections, *(end - begin))),
            grid=grid,
            corners=low + offsets - begin,
            window=(int(window[0]), int(window[1])),
            scale=np.random.uniform(*self.scale, sections),
            shift=np.random.uniform(*self.shift, sections),
        )

    def apply(
        self, raw: np.ndarray, plan: AugmentPlan, out: np.ndarray,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> np.ndarray:  # fmt: skip
        """Write the augmented crop into `out` (z, h, w, float), mapped linearly from
        [0, 1] to `value_range`; `raw` is what `plan.box` holds, in its own dtype."""
        sampled = resample_sections(section_windows(raw, plan.corners, plan.window), plan.grid)
        # the intensity augmentation on [0, 1] (`mean + (x - mean) * scale + shift`,
        # clipped), the dtype's scaling before it and `value_range` after it: one
        # multiply, add and clip per voxel
        low, high = value_range
        to_unit = raw_scale(raw.dtype)
        scale, shift = plan.scale[:, None, None], plan.shift[:, None, None]
        mean = sampled.mean(axis=(1, 2), keepdims=True) * to_unit
        sampled *= (scale * to_unit * (high - low)).astype(np.float32)
        sampled += ((mean * (1 - scale) + shift) * (high - low) + low).astype(np.float32)
        return np.clip(sampled, low, high, out=out)


@functools.cache
def _upsampling(size: int, points: int) -> np.ndarray:
    """(size, points) linear interpolation weights from `points` control points to
    `size` pixels, pixel-area aligned and edges extended (`ndimage.zoom`'s
    `grid_mode=True, mode="nearest"`; torch's `align_corners=False`)."""
    position = np.clip((np.arange(size) + 0.5) * (points / size) - 0.5, 0, points - 1)
    low = np.minimum(np.floor(position).astype(int), points - 2)
    weights = np.zeros((size, points))
    weights[np.arange(size), low] = low + 1 - position
    weights[np.arange(size), low + 1] = position - low
    weights.flags.writeable = False  # shared between calls
    return weights


def section_windows(raw: np.ndarray, corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The window of `shape` (y, x) at `corners[z]` of each section of `raw`, as float32
    (the conversion is the copy)."""
    if (corners == corners[0]).all():  # no misalignment, most samples
        y, x = corners[0]
        return raw[:, y : y + shape[0], x : x + shape[1]].astype(np.float32)
    windows = np.empty((raw.shape[0], *shape), dtype=np.float32)
    for z, (y, x) in enumerate(corners):
        windows[z] = raw[z, y : y + shape[0], x : x + shape[1]]
    return windows


def resample_sections(source: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Bilinear lookup of every section of `source` (z, H, W) float32 at the same points
    `grid` (h, w, 2: x, y scaled to [-1, 1] over W, H), edges extended: (z, h, w).
    torch's `grid_sample` with sections as channels computes the grid's weights once
    for all sections, and with one batch item it stays on one thread (splitting costs
    more than it gains on a shared CPU)."""
    sampled = torch.nn.functional.grid_sample(
        torch.from_numpy(source)[None], torch.from_numpy(grid)[None],
        mode="bilinear", padding_mode="border", align_corners=True,
    )  # fmt: skip
    return sampled[0].numpy()


class SynapseBatchSource(gp.BatchProvider):
    """Whole batches: raw (b, z, y, x) float32 in `value_range` around `batch_size`
    random synapses, augmented by `augmentation` if given, and their class indices (b,)
    int64. Classes are equally likely, then synapses within a class (class-balanced
    batches, as a `RandomProvider` over one branch per class).

    World coordinates are relative to each synapse: (0, 0, 0) is the voxel it lies in, so
    a ROI requested around the origin (`batch_request`) is the crop `crop_roi` (and
    prediction's `read_crop`) reads. Raw outside the volume reads as zero, so synapses
    near its border are used too."""

    def __init__(
        self, raw_key: gp.ArrayKey, label_key: gp.ArrayKey, raw: Array,
        locations: Sequence[Sequence[Sequence[float]]], batch_size: int,
        augmentation: SynapseAugmentation | None = None,
        value_range: tuple[float, float] = NETWORK_RANGE,
    ) -> None:  # fmt: skip
        """`locations[c]`: (z, y, x) nm of the synapses of class `c`."""
        if not locations or not all(len(points) for points in locations):
            raise ValueError("SynapseBatchSource needs at least one location per class")
        self.raw_key = raw_key
        self.label_key = label_key
        self.raw = raw
        self.locations = [np.asarray(points, dtype=np.float64) for points in locations]
        self.batch_size = batch_size
        self.augmentation = augmentation
        self.value_range = value_range

    def setup(self) -> None:
        dims = self.raw.voxel_size.dims
        unbounded = gp.Roi((None,) * dims, (None,) * dims)
        voxel_size = gp.Coordinate(self.raw.voxel_size)
        self.provides(
            self.raw_key,
            gp.ArraySpec(unbounded, voxel_size, interpolatable=True, dtype=np.float32),
        )
        self.provides(self.label_key, gp.ArraySpec(nonspatial=True, dtype=np.int64))

    def provide(self, request: gp.BatchRequest) -> gp.Batch:
        # gunpowder seeded numpy's global generator from this request
        labels = np.random.randint(len(self.locations), size=self.batch_size)
        batch = gp.Batch()
        if self.raw_key in request:
            spec = self.spec[self.raw_key].copy()
            spec.roi = request[self.raw_key].roi
            data = np.empty((self.batch_size, *(spec.roi.shape / spec.voxel_size)), np.float32)
            for sample, label in zip(data, labels, strict=True):
                points = self.locations[label]
                self.crop(points[np.random.randint(len(points))], spec.roi, sample)
            batch[self.raw_key] = gp.Array(data, spec)
        if self.label_key in request:
            spec = gp.ArraySpec(nonspatial=True, dtype=np.int64)
            batch[self.label_key] = gp.Array(labels.astype(np.int64), spec)
        return batch

    def crop(self, location: np.ndarray, roi: Roi, out: np.ndarray) -> None:
        """Raw of `roi` relative to `location` (nm), augmented, into `out`."""
        voxel_size = Coordinate(self.raw.voxel_size)
        roi = roi.shift(voxel_origin(voxel_size, location))
        if self.augmentation is None:
            scale_raw(read_roi(self.raw, roi), self.value_range, out=out)
            return
        plan = self.augmentation.plan(out.shape)
        box = Roi(roi.offset + plan.box.offset * voxel_size, plan.box.shape * voxel_size)
        self.augmentation.apply(read_roi(self.raw, box), plan, out, self.value_range)


def data_pipeline(
    raw: Array, locations: Mapping[str, Sequence[Sequence[float]]], classes: Sequence[str],
    batch_size: int, augment: bool = True, cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    """Batches of (RAW (b, z, y, x) float32 in [-1, 1], LABEL (b,) int64), class-balanced;
    with `cache_workers` > 0 they are produced by that many worker processes."""
    source = SynapseBatchSource(
        RAW, LABEL, raw, [locations[name] for name in classes], batch_size,
        SynapseAugmentation() if augment else None,
    )  # fmt: skip
    pipeline = gp.Pipeline(source)
    if cache_workers > 0:
        pipeline += gp.PreCache(
            cache_size=CACHE_SIZE_PER_WORKER * cache_workers, num_workers=cache_workers
        )
    return pipeline


def batch_request(input_shape: Sequence[int], voxel_size: Sequence[int]) -> gp.BatchRequest:
    """RAW of `input_shape` with the synapse in voxel `input_shape // 2` (as `crop_roi`),
    and LABEL."""
    shape = gp.Coordinate(input_shape)
    request = gp.BatchRequest()
    request[RAW] = gp.ArraySpec(
        roi=gp.Roi(-(shape // 2) * gp.Coordinate(voxel_size), shape * gp.Coordinate(voxel_size))
    )
    request[LABEL] = gp.ArraySpec(nonspatial=True)
    return request


def check_voxel_size(raw: Array, config: SynapseTrainConfig, source: str) -> None:
    if tuple(raw.voxel_size) != tuple(config.voxel_size):
        raise ConnectoError(
            f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the "
            f"voxel size {list(raw.voxel_size)} of {config.raw_container}/{config.raw_dataset}"
        )


def check_locations(
    locations: Mapping[str, Sequence[Sequence[float]]], config: SynapseTrainConfig, source: str
) -> None:
    empty = [name for name in config.synapse_types if not locations.get(name)]
    if empty:
        raise ConnectoError(
            f"{source}: key 'synapse_types' lists {', '.join(map(repr, empty))} with no "
            f"synapses in the train part of split {config.split_name!r} of database "
            f"{config.db_name_data!r}"
        )
    if config.neither_class:
        raise ConnectoError(
            f"{source}: key 'neither_class' = true: training with a 'neither' class needs "
            "non-synapse locations, which this pipeline does not sample yet"
        )


def train_locations(config: SynapseTrainConfig) -> dict[str, list[tuple[float, float, float]]]:
    """(z, y, x) nm of the train-part synapses of each class, from the data database."""
    from connecto.db.client import get_database
    from connecto.db.synapses import synapses_by_class

    grouped = synapses_by_class(
        get_database(config.db_name_data), config.split_name, "train", config.synapse_types
    )
    return {
        name: [(s["z"], s["y"], s["x"]) for s in grouped.get(name, [])]
        for name in config.synapse_types
    }


@dataclass
class SynapseSnapshot:
    """What `snapshots/batch_<it>.zarr` holds for synapse classification."""

    class_names: list[str]
    voxel_size: tuple[int, ...]

    def __call__(self, batch: gp.Batch) -> dict[str, tuple[np.ndarray, dict]]:
        logits = torch.as_tensor(batch[LOGITS].data)
        probabilities = torch.softmax(logits, dim=1).numpy()
        spatial = {"voxel_size": list(self.voxel_size), "offset": [0, 0, 0]}
        return {
            "raw": (batch[RAW].data, {**spatial, "axis_names": ["b^", "z", "y", "x"]}),
            "label": (batch[LABEL].data, {"class_names": self.class_names}),
            "prediction": (probabilities, {"class_names": self.class_names}),
        }


def accuracy(batch: gp.Batch) -> dict[str, float]:
    predicted = np.argmax(batch[LOGITS].data, axis=1)
    return {"accuracy": float(np.mean(predicted == batch[LABEL].data))}


def task_parts(config: SynapseTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs for synapse classification; every check
    that can fail runs here, before any training."""
    raw = open_raw(config.raw_container, config.raw_dataset)
    check_voxel_size(raw, config, source)
    locations = train_locations(config)
    check_locations(locations, config, source)
    model = build_classifier(config)
    if config.init_from is not None and isinstance(model, ResNetClassifier):
        # the pretrained encoder; a resumed run then loads its own checkpoint over it
        load_pretrained_encoder(model.encoder, config.init_from, config.voxel_size, source)
    pipeline = data_pipeline(
        raw, locations, config.synapse_types, config.batch_size, config.augment,
        worker.num_cache_workers,
    )  # fmt: skip
    request = batch_request(config.input_shape, config.voxel_size)
    request[LOGITS] = gp.ArraySpec(nonspatial=True)
    return TaskParts(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=pipeline,
        request=request,
        inputs={"raw": RAW},
        outputs={0: LOGITS},
        loss_inputs={0: LOGITS, 1: LABEL},
        array_specs={LOGITS: gp.ArraySpec(nonspatial=True)},
        snapshot=SynapseSnapshot(config.class_names, tuple(config.voxel_size)),
        metrics=accuracy,
    )
