"""The synapse detection training pipeline in gunpowder.

The two marker channels (pre, post) of raw are read around a random output window inside
train_roi (zero beyond the volume, as in prediction) and scaled to [0, 1]. The targets are
rendered from the ground-truth synapse centres (MongoDB) by a source node, so gunpowder's
random location and augmentations move them with raw: channel 0 a ball of
`synapse_radius_nm` per synapse, channel 1 its outline. The weight mask balances the
classes per channel (each class half of the loss, as gunpowder's BalanceLabels), and
batches with too little synapse are redrawn (Reject: `min_synapse_fraction`, with
`reject_probability`, so some empty batches still teach the background).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gunpowder as gp
import numpy as np
import torch
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from scipy import ndimage

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.volumes import open_configured, raw_scale
from connecto.db.client import get_database
from connecto.tasks.parts import TaskParts, stacked
from connecto.tasks.segmentation.pipeline import SegmentationSnapshot, checked_roi
from connecto.tasks.synapse_detection.config import SynapseDetectionTrainConfig
from connecto.tasks.synapse_detection.detect import GroundTruth, read_ground_truth
from connecto.tasks.synapse_detection.model import WeightedBceLoss, build_model

RAW = gp.ArrayKey("RAW")
TARGET = gp.ArrayKey("TARGET")  # (2, z, y, x) float32: mask, contour
WEIGHTS = gp.ArrayKey("WEIGHTS")  # (2, z, y, x) float32
SYNAPSE_MASK = gp.ArrayKey("SYNAPSE_MASK")  # (z, y, x) uint8, what Reject measures
PREDICTION = gp.ArrayKey("PREDICTION")
BALANCE_CLIP = (0.05, 0.95)  # class fractions are clipped: a rare class gets at most 10x


# ---------------------------------------------------------------- input and targets


def marker_channels(container: str | Path, configured: Sequence[int] | None,
                    channels: int, source: str) -> tuple[int, int]:  # fmt: skip
    """(pre, post) channel indices: configured, else the container's `marker_channels`."""
    if configured is None:
        try:
            attrs = zarr.open_group(str(container), mode="r").attrs.get("marker_channels")
        except Exception:  # zarr raises several kinds for a foreign store
            attrs = None
        if not isinstance(attrs, dict) or "pre" not in attrs or "post" not in attrs:
            raise ConnectoError(
                f"{source}: key 'marker_channels' is unset and {container} has no "
                "`marker_channels` attribute (synthesize-barcodes --synapses N writes it); "
                "set marker_channels = [pre, post]"
            )
        configured = (int(attrs["pre"]), int(attrs["post"]))
    pre, post = (int(c) for c in configured)
    if max(pre, post) >= channels:
        raise ConnectoError(
            f"{source}: key 'marker_channels' = {[pre, post]}: raw has {channels} channels"
        )
    return pre, post


def marker_array(raw: Array, channels: tuple[int, int]) -> Array:
    """The (2, z, y, x) pre/post marker channels of raw (C, z, y, x)."""
    return Array(raw.data[list(channels)], offset=raw.offset, voxel_size=raw.voxel_size,
                 axis_names=raw.axis_names, units=raw.units)  # fmt: skip


def open_markers(config: SynapseDetectionTrainConfig, source: str) -> Array:
    """The configured marker channels of the container's raw, checked."""
    raw = open_configured(config.container, config.raw_dataset, ("container", "raw_dataset"),
                          source)  # fmt: skip
    if len(raw.shape) != 4:
        raise ConnectoError(
            f"{source}: key 'raw_dataset': shape {tuple(raw.shape)}, expected (C, z, y, x)"
        )
    if config.voxel_size is not None and Coordinate(config.voxel_size) != raw.voxel_size:
        raise ConnectoError(
            f"{source}: key 'voxel_size' = {list(config.voxel_size)} does not match the raw "
            f"voxel size {list(raw.voxel_size)}"
        )
    channels = marker_channels(config.container, config.marker_channels, raw.shape[0], source)
    return marker_array(raw, channels)


def render_targets(
    roi: Roi, voxel_size: Coordinate, centres: np.ndarray, radius_nm: float, contour_width: int
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(mask, contour) uint8 over `roi`: balls of `radius_nm` around `centres` ((n, 3) nm,
    z, y, x) and their outline, `contour_width` voxels thick inside each ball; where two
    balls overlap each voxel belongs to the nearer centre, so touching synapses are
    outlined where they meet, and the contour output can split them. A ball cut by the
    ROI has no outline along the cut (rendered on a grown ROI, then cropped)."""
    grow = Coordinate((contour_width,) * 3) * voxel_size
    grown = roi.grow(grow, grow)
    shape = grown.shape / voxel_size
    ball_of = np.zeros(shape, dtype=np.int32)  # 0: no ball; else 1 + the nearest centre
    nearest = np.full(shape, np.inf)
    size = np.asarray(voxel_size, dtype=np.float64)
    begin = np.asarray(grown.begin, dtype=np.float64)
    reach = np.ceil(radius_nm / size).astype(int) + 1
    for number, centre in enumerate(np.asarray(centres, dtype=np.float64).reshape(-1, 3), 1):
        # voxel centres are at begin + (i + 0.5) * size
        middle = np.floor((centre - begin) / size).astype(int)
        low = np.maximum(middle - reach, 0)
        high = np.minimum(middle + reach + 1, shape)
        if np.any(low >= high):
            continue
        axes = [(np.arange(lo, hi) + 0.5) * s + b - c for lo, hi, s, b, c
                in zip(low, high, size, begin, centre, strict=True)]  # fmt: skip
        dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
        distance = dz**2 + dy**2 + dx**2
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        closer = (distance <= radius_nm**2) & (distance < nearest[box])
        ball_of[box][closer] = number
        nearest[box][closer] = distance[closer]
    mask = ball_of > 0
    # inside: every voxel within contour_width steps (6-connected) is of the same ball;
    # beyond the array the edge repeats, so a cut has no outline
    steps = ndimage.iterate_structure(ndimage.generate_binary_structure(3, 1), contour_width)
    inner = (ndimage.maximum_filter(ball_of, footprint=steps, mode="nearest") == ball_of) & (
        ndimage.minimum_filter(ball_of, footprint=steps, mode="nearest") == ball_of
    )
    contour = mask & ~inner
    crop = tuple(slice(contour_width, s - contour_width) for s in shape)
    return mask[crop].astype(np.uint8), contour[crop].astype(np.uint8)


def balance_weights(target: np.ndarray) -> np.ndarray:
    """Per channel: positives and negatives each carry half of the weight (class fractions
    clipped to BALANCE_CLIP); mean weight 1."""
    weights = np.empty(target.shape, dtype=np.float32)
    for channel, values in enumerate(target):
        positive = values > 0.5
        fraction = float(np.clip(positive.mean(), *BALANCE_CLIP))
        weights[channel] = np.where(positive, 0.5 / fraction, 0.5 / (1 - fraction))
    return weights


class SynapseTargetSource(gp.BatchProvider):
    """Provides TARGET, WEIGHTS and SYNAPSE_MASK over `region`, rendered from `centres`."""

    def __init__(self, centres: np.ndarray, voxel_size: Coordinate, region: Roi,
                 radius_nm: float, contour_width: int) -> None:  # fmt: skip
        self.centres = np.asarray(centres, dtype=np.float64).reshape(-1, 3)
        self.voxel_size, self.region = Coordinate(voxel_size), region
        self.radius_nm, self.contour_width = radius_nm, contour_width

    def setup(self) -> None:
        for key, dtype in ((TARGET, np.float32), (WEIGHTS, np.float32), (SYNAPSE_MASK, np.uint8)):
            self.provides(key, gp.ArraySpec(roi=self.region, voxel_size=self.voxel_size,
                                            interpolatable=False, dtype=dtype))  # fmt: skip

    def provide(self, request: gp.BatchRequest) -> gp.Batch:
        batch = gp.Batch()
        for key, spec in request.array_specs.items():
            mask, contour = render_targets(spec.roi, self.voxel_size, self.centres,
                                           self.radius_nm, self.contour_width)  # fmt: skip
            target = np.stack([mask, contour]).astype(np.float32)
            data = {
                TARGET: target, WEIGHTS: balance_weights(target), SYNAPSE_MASK: mask,
            }[key]  # fmt: skip
            out_spec = self.spec[key].copy()
            out_spec.roi = spec.roi
            batch[key] = gp.Array(data, out_spec)
        return batch


# ---------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class DetectionData:
    markers: Array  # (2, z, y, x)
    truth: GroundTruth
    region: Roi
    voxel_size: Coordinate


def open_detection_data(config: SynapseDetectionTrainConfig, source: str) -> DetectionData:
    """Markers, ground truth and the training region of `config`, checked."""
    markers = open_markers(config, source)
    voxel_size = Coordinate(markers.voxel_size)
    spatial = Array(markers.data[0], offset=markers.offset, voxel_size=voxel_size)
    for key in ("validation_roi", "test_roi"):
        checked_roi(getattr(config, key), key, {"raw": spatial}, source)
    region = checked_roi(config.train_roi, "train_roi", {"raw": spatial}, source) or spatial.roi
    output = Coordinate(config.network_output_shape) * voxel_size
    if any(r < o for r, o in zip(region.shape, output, strict=True)):
        raise ConnectoError(
            f"{source}: key 'train_roi': the training region {list(region.shape)} nm is "
            f"smaller than the network's output {list(output)} nm (input_shape "
            f"{list(config.input_shape)}); enlarge it or lower input_shape"
        )
    volume = config.synapses_volume or str(Path(config.container).resolve())
    truth = read_ground_truth(get_database(config.synapses_db), volume, source=source)
    return DetectionData(markers, truth, region, voxel_size)


def data_pipeline(config: SynapseDetectionTrainConfig, data: DetectionData,
                  cache_workers: int = 0) -> gp.Pipeline:  # fmt: skip
    """Batches of RAW (b, 2, z, y, x) in [0, 1], TARGET and WEIGHTS (b, 2, z', y', x') and
    SYNAPSE_MASK (b, z', y', x')."""
    raw_source = (
        gp.ArraySource(RAW, data.markers, interpolatable=True)
        + gp.Normalize(RAW, factor=raw_scale(data.markers.dtype))
        + gp.Pad(RAW, None)
    )
    targets = SynapseTargetSource(data.truth.centres, data.voxel_size, data.region,
                                  config.synapse_radius_nm, config.contour_width)  # fmt: skip
    pipeline = (raw_source, targets) + gp.MergeProvider() + gp.RandomLocation()
    if config.min_synapse_fraction > 0:
        pipeline += gp.Reject(mask=SYNAPSE_MASK, min_masked=config.min_synapse_fraction,
                              reject_probability=config.reject_probability)  # fmt: skip
    if config.augment:
        plane = [1, 2]  # z may be anisotropic
        pipeline += gp.SimpleAugment(mirror_only=plane, transpose_only=plane)
        pipeline += gp.IntensityAugment(RAW, 0.8, 1.2, -0.1, 0.1)
    return stacked(pipeline, config.batch_size, cache_workers)


def batch_request(config: SynapseDetectionTrainConfig, voxel_size: Coordinate,
                  predictions: bool = True) -> gp.BatchRequest:  # fmt: skip
    """RAW around TARGET, WEIGHTS, SYNAPSE_MASK (and PREDICTION), centred on each other."""
    request = gp.BatchRequest()
    request.add(RAW, Coordinate(config.input_shape) * voxel_size)
    output = Coordinate(config.network_output_shape) * voxel_size
    for key in [TARGET, WEIGHTS, SYNAPSE_MASK] + ([PREDICTION] if predictions else []):
        request.add(key, output)
    return request


def synapse_fraction(batch: gp.Batch) -> dict[str, float]:
    """The share of synapse voxels in the output (tensorboard shows what Reject lets by)."""
    return {"synapse_fraction": float(np.mean(batch[SYNAPSE_MASK].data))}


def task_parts(config: SynapseDetectionTrainConfig, worker: WorkerConfig, source: str) -> TaskParts:
    """Everything the training driver needs; every check runs here first."""
    data = open_detection_data(config, source)
    model = build_model(config)
    snapshot_keys = (("raw", RAW), ("target", TARGET), ("weights", WEIGHTS),
                     ("logits", PREDICTION))  # fmt: skip
    return TaskParts(
        model=model,
        loss=WeightedBceLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=config.learning_rate),
        pipeline=data_pipeline(config, data, worker.num_cache_workers),
        request=batch_request(config, data.voxel_size),
        inputs={"raw": RAW},
        outputs={0: PREDICTION},
        loss_inputs={"logits": PREDICTION, "target": TARGET, "weights": WEIGHTS},
        array_specs={PREDICTION: gp.ArraySpec(voxel_size=data.voxel_size)},
        snapshot=SegmentationSnapshot(tuple(data.voxel_size), snapshot_keys),
        metrics=synapse_fraction,
    )
