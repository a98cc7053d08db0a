"""The synapse classification training pipeline (synister's, in gunpowder).

One branch per class samples that class's synapse locations at random, so
`RandomProvider` over the branches gives class-balanced batches. Raw is read from
zarr/N5, normalised to [0, 1], deformed (in-plane only: sections are 10x thicker than
pixels are wide), mirrored and transposed in y-x, intensity-augmented per section,
mapped to [-1, 1] (as `connecto.data.volumes.normalize_raw`), stacked into batches and
cached by worker processes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import gunpowder as gp
import numpy as np
import torch
from funlib.persistence import Array
from scipy import ndimage

from connecto import ConnectoError
from connecto.config import SynapseTrainConfig, WorkerConfig
from connecto.data.volumes import RAW_SCALE, RAW_SHIFT, open_raw, raw_scale
from connecto.models.vgg3d import build_vgg3d
from connecto.train import TaskParts

RAW = gp.ArrayKey("RAW")
LABEL = gp.ArrayKey("LABEL")
LOGITS = gp.ArrayKey("LOGITS")
CACHE_SIZE_PER_WORKER = 4


class AddClassLabel(gp.BatchFilter):
    """Adds a non-spatial array holding the class index of this branch."""

    def __init__(self, key: gp.ArrayKey, class_index: int) -> None:
        self.key = key
        self.class_index = class_index

    def setup(self) -> None:
        self.provides(self.key, gp.ArraySpec(nonspatial=True, dtype=np.int64))

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        return gp.BatchRequest()  # nothing needed upstream beyond the rest of the request

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        out = gp.Batch()
        spec = gp.ArraySpec(nonspatial=True, dtype=np.int64)
        out[self.key] = gp.Array(np.array(self.class_index, dtype=np.int64), spec)
        return out


class SectionElasticAugment(gp.BatchFilter):
    """Elastic deformation and rotation in y-x, the same for every section, plus
    occasional section slips and shifts (as synister's `ElasticAugment` settings, which
    deform nothing across sections), for one array.

    The displacement field is computed once in 2D instead of in 3D and interpolated per
    section: at synister's 16x160x160 this is about 5x cheaper than gunpowder's
    `ElasticAugment`. The upstream request grows by the same margin on every side, so
    nodes upstream (`SpecifiedLocation`) see the same centre as downstream."""

    def __init__(
        self, key: gp.ArrayKey, control_point_spacing: int = 40, jitter_sigma: float = 2.0,
        max_rotation: float = math.pi / 2, prob_slip: float = 0.05, prob_shift: float = 0.05,
        max_misalign: int = 10,
    ) -> None:  # fmt: skip
        self.key = key
        self.spacing = control_point_spacing
        self.jitter_sigma = jitter_sigma
        self.max_rotation = max_rotation
        self.prob_slip = prob_slip
        self.prob_shift = prob_shift
        self.max_misalign = max_misalign
        self.coordinates: np.ndarray | None = None

    def setup(self) -> None:
        self.updates(self.key, self.spec[self.key])

    def _coordinates(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Source (y, x) per section and target pixel, relative to the target: (2, z, y, x)."""
        sections, height, width = shape
        centre = np.array([(height - 1) / 2, (width - 1) / 2])
        yy, xx = np.meshgrid(
            np.arange(height) - centre[0], np.arange(width) - centre[1], indexing="ij"
        )
        angle = np.random.uniform(0, self.max_rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        grid = (math.ceil(height / self.spacing) + 1, math.ceil(width / self.spacing) + 1)
        jitter = np.random.normal(0, self.jitter_sigma, (2, *grid))
        factors = (height / grid[0], width / grid[1])
        flow = [ndimage.zoom(j, factors, order=1, grid_mode=True, mode="nearest") for j in jitter]
        source_y = cos * yy - sin * xx + flow[0][:height, :width] + centre[0]
        source_x = sin * yy + cos * xx + flow[1][:height, :width] + centre[1]
        offsets = np.zeros((sections, 2))
        shift = np.zeros(2)
        for z in range(sections):
            if np.random.random() < self.prob_shift:
                shift = shift + np.random.uniform(-self.max_misalign, self.max_misalign, 2)
            offsets[z] = shift
            if np.random.random() < self.prob_slip:
                offsets[z] += np.random.uniform(-self.max_misalign, self.max_misalign, 2)
        return np.stack([
            source_y[None] + offsets[:, 0, None, None], source_x[None] + offsets[:, 1, None, None]
        ])  # fmt: skip

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        roi = request[self.key].roi
        voxel_size = self.spec[self.key].voxel_size
        shape = tuple(roi.shape / voxel_size)
        coordinates = self._coordinates(shape)  # type: ignore[arg-type]
        margins = []
        for axis, size in ((0, shape[1]), (1, shape[2])):
            beyond = max(-coordinates[axis].min(), coordinates[axis].max() - (size - 1))
            margins.append(max(0, math.ceil(beyond)) + 1)
        self.coordinates = coordinates + np.array(margins)[:, None, None, None]
        grow = gp.Coordinate((0, *margins)) * voxel_size
        deps = gp.BatchRequest()
        deps[self.key] = request[self.key].copy()
        deps[self.key].roi = roi.grow(grow, grow)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> None:
        source = batch[self.key].data
        coordinates = self.coordinates
        assert coordinates is not None
        out = resample_sections(source, coordinates)
        spec = batch[self.key].spec.copy()
        spec.roi = request[self.key].roi
        batch[self.key] = gp.Array(out, spec)


def resample_sections(source: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Bilinear lookup of `source` (z, y, x) at per-section (y, x) `coordinates`
    (2, z, h, w), edges extended; as `ndimage.map_coordinates(order=1, mode="nearest")` per
    section, but through torch's `grid_sample`, about 5x faster on a CPU core."""
    _, height, width = source.shape
    grid = np.empty((*coordinates.shape[1:], 2), dtype=np.float32)
    grid[..., 0] = coordinates[1] * (2 / max(width - 1, 1)) - 1  # grid_sample wants x, y in [-1, 1]
    grid[..., 1] = coordinates[0] * (2 / max(height - 1, 1)) - 1
    with torch.no_grad():
        sampled = torch.nn.functional.grid_sample(
            torch.from_numpy(source.astype(np.float32, copy=False))[:, None],
            torch.from_numpy(grid), mode="bilinear", padding_mode="border", align_corners=True,
        )[:, 0].numpy()  # fmt: skip
    if np.issubdtype(source.dtype, np.integer):
        limits = np.iinfo(source.dtype)
        sampled = np.clip(np.rint(sampled), limits.min, limits.max)
    return sampled.astype(source.dtype, copy=False)


def augmentations() -> gp.BatchFilter:
    """synister's augmentations, anisotropy-aware: elastic deformation and rotation in
    y-x only, section slips and shifts; mirror and transpose in y-x; intensity per
    section. (`DeformAugment` returns crops off the requested location for 40x4x4 nm
    voxels in gunpowder 1.4.4, and `ElasticAugment` computes a 3D field that is the
    same in every section: `SectionElasticAugment` does that part.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # z_section_wise
        intensity = gp.IntensityAugment(RAW, 0.9, 1.1, -0.1, 0.1, z_section_wise=True)
    return (
        SectionElasticAugment(RAW)
        + gp.SimpleAugment(mirror_only=[1, 2], transpose_only=[1, 2])
        + intensity
    )


def source_branches(
    raw: Array, locations: Mapping[str, Sequence[Sequence[float]]], classes: Sequence[str],
    augment: bool,
) -> tuple[gp.BatchProvider, ...]:  # fmt: skip
    """One branch per class: raw around a random synapse of that class, augmented, plus
    its label (added last: gunpowder's augmentations handle spatial arrays only)."""
    branches = []
    for index, name in enumerate(classes):
        branch = (
            gp.ArraySource(RAW, raw, interpolatable=True)
            + gp.Normalize(RAW, factor=raw_scale(raw.dtype))
            + gp.Pad(RAW, None)  # synapses near the border: zeros outside, as read_crop
            + gp.SpecifiedLocation(
                [tuple(p) for p in locations[name]], choose_randomly=True, attempt_factor=10
            )
        )
        if augment:
            branch += augmentations()
        branches.append(branch + AddClassLabel(LABEL, index))
    return tuple(branches)


def data_pipeline(
    raw: Array, locations: Mapping[str, Sequence[Sequence[float]]], classes: Sequence[str],
    batch_size: int, augment: bool = True, cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    """Batches of (RAW (b, z, y, x) float32 in [-1, 1], LABEL (b,) int64); with
    `cache_workers` > 0 they are produced by that many worker processes."""
    branches = source_branches(raw, locations, classes, augment)
    pipeline = branches + gp.RandomProvider()
    pipeline += gp.IntensityScaleShift(RAW, RAW_SCALE, RAW_SHIFT)
    pipeline += gp.Stack(batch_size)
    if cache_workers > 0:
        pipeline += gp.PreCache(
            cache_size=CACHE_SIZE_PER_WORKER * cache_workers, num_workers=cache_workers
        )
    return pipeline


def batch_request(input_shape: Sequence[int], voxel_size: Sequence[int]) -> gp.BatchRequest:
    request = gp.BatchRequest()
    request[RAW] = gp.ArraySpec(
        roi=gp.Roi((0, 0, 0), gp.Coordinate(input_shape) * gp.Coordinate(voxel_size))
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


def synapse_task(config: SynapseTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs for synapse classification; every check
    that can fail runs here, before any training."""
    raw = open_raw(config.raw_container, config.raw_dataset)
    check_voxel_size(raw, config, source)
    locations = train_locations(config)
    check_locations(locations, config, source)
    model = build_vgg3d(config)
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
