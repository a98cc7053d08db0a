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


def elastic_subsample(input_shape: Sequence[int]) -> int:
    """synister's 8, less where a crop is thin: the deformation is computed on a grid
    subsampled this much, and a grid of a single section shifts the whole crop."""
    subsample = 8
    while subsample > 1 and min(input_shape) // subsample < 2:
        subsample //= 2
    return subsample


def augmentations(input_shape: Sequence[int]) -> gp.BatchFilter:
    """synister's augmentations, anisotropy-aware: elastic deformation with control
    points and jitter in voxels, none across sections, rotation in y-x only, occasional
    section slips and shifts; mirror and transpose in y-x; intensity per section.

    `ElasticAugment` rather than `DeformAugment`: in gunpowder 1.4.4 the latter returns
    crops that are off the requested location for anisotropic voxels (40x4x4 nm)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        elastic = gp.ElasticAugment(
            control_point_spacing=(4, 40, 40),
            jitter_sigma=(0, 2, 2),
            rotation_interval=(0, math.pi / 2),
            prob_slip=0.05,
            prob_shift=0.05,
            max_misalign=10,
            subsample=elastic_subsample(input_shape),
        )
        intensity = gp.IntensityAugment(RAW, 0.9, 1.1, -0.1, 0.1, z_section_wise=True)
    return elastic + gp.SimpleAugment(mirror_only=[1, 2], transpose_only=[1, 2]) + intensity


def source_branches(
    raw: Array, locations: Mapping[str, Sequence[Sequence[float]]], classes: Sequence[str],
    input_shape: Sequence[int], augment: bool,
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
            branch += augmentations(input_shape)
        branches.append(branch + AddClassLabel(LABEL, index))
    return tuple(branches)


def data_pipeline(
    raw: Array, locations: Mapping[str, Sequence[Sequence[float]]], classes: Sequence[str],
    input_shape: Sequence[int], batch_size: int, augment: bool = True, cache_workers: int = 0,
) -> gp.Pipeline:  # fmt: skip
    """Batches of (RAW (b, z, y, x) float32 in [-1, 1], LABEL (b,) int64); with
    `cache_workers` > 0 they are produced by that many worker processes."""
    branches = source_branches(raw, locations, classes, input_shape, augment)
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
        raw, locations, config.synapse_types, config.input_shape, config.batch_size,
        config.augment, worker.num_cache_workers,
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
