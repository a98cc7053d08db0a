"""Training on sparse labels (0 = unlabelled, `sparse_labels = true`): batches through the
real MTLSD pipeline carry no weight, and the loss no gradient, wherever a voxel (or
either voxel of an affinity pair) is unlabelled; `min_labelled_fraction` rejects batches
whose output region is less labelled than that."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from pydantic import ValidationError
from scipy import ndimage

from connecto.config import WorkerConfig
from connecto.data.ingest import create_volume, ingest
from connecto.data.volumes import open_raw
from connecto.tasks.segmentation.config import SegmentationTrainConfig
from connecto.tasks.segmentation.model import MtlsdLoss
from connecto.tasks.segmentation.pipeline import (
    AFFS_WEIGHTS,
    GT_AFFS,
    GT_LSDS,
    LABELS,
    LSDS_WEIGHTS,
    PRED_AFFS,
    PRED_LSDS,
    UNLABELLED,
    batch_request,
    data_pipeline,
    task_parts,
)
from tests.conftest import SHARED_DATA, require_shared_data

SHAPE = (40, 40, 40)
LABELS_DATASET = "volumes/labels/neuron_ids"
# a long-range offset too: both ends of every pair must be labelled
NEIGHBORHOOD = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 3)]
REACH = 3  # the largest offset
SMALL = {
    "input_shape": (24, 24, 24), "downsample_factors": [(2, 2, 2)], "augment": False,
    "lsd_sigma": 20.0, "neighborhood": NEIGHBORHOOD,
}  # fmt: skip
OUTPUT = (8, 8, 8)  # of input_shape 24^3


def _cells(rng: np.random.Generator) -> np.ndarray:
    """Dense neuron-like labels: a Voronoi tessellation of 60 random seeds (ids 1-60)."""
    seeds = np.zeros(SHAPE, dtype=np.uint64)
    points = rng.integers(0, SHAPE[0], (60, 3))
    seeds[tuple(points.T)] = np.arange(1, 61)
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[tuple(nearest)]


def _volume(path: Path, labelled: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    raw = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    labels = np.where(labelled, _cells(rng), 0).astype(np.uint64)
    for name, data in (("volumes/raw", raw), (LABELS_DATASET, labels)):
        create_volume(root, name, SHAPE, data.dtype, (10, 10, 10), (0, 0, 0))[:] = data
    return path


@pytest.fixture(scope="module")
def stripes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half the volume unlabelled (0), in stripes 5 voxels wide along x: every crop holds
    labelled and unlabelled voxels and their borders."""
    x = np.arange(SHAPE[2])
    return _volume(tmp_path_factory.mktemp("sparse") / "stripes.zarr",
                   np.broadcast_to((x // 5) % 2 == 0, SHAPE))  # fmt: skip


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled only where x < 20: crops range from fully labelled to empty."""
    x = np.arange(SHAPE[2])
    return _volume(tmp_path_factory.mktemp("sparse") / "half.zarr",
                   np.broadcast_to(x < 20, SHAPE))  # fmt: skip


def _batches(
    config: SegmentationTrainConfig, seeds: list[int | None], grow: int = 0
) -> list[gp.Batch]:
    """Batches of the training pipeline; UNLABELLED requested `grow` voxels beyond the
    output on the positive side (where the affinity pairs of the last voxels end)."""
    volume = config.raw_container
    raw = open_raw(volume, config.raw_dataset)
    labels = open_raw(volume, config.labels_dataset)
    pipeline = data_pipeline(config, raw, labels, None, labels.roi, cache_workers=0)
    request = batch_request(config, with_unlabelled=False)
    for key in (PRED_AFFS, PRED_LSDS):  # the network's outputs come from the Train node
        if key in request:
            del request[key]
    if UNLABELLED in request:
        roi = request[UNLABELLED].roi
        request[UNLABELLED].roi = roi.grow((0, 0, 0), gp.Coordinate((grow,) * 3) * 10)
    batches = []
    with gp.build(pipeline):
        for seed in seeds:
            request._random_seed = seed  # reproducible locations (None: by the clock)
            batches.append(pipeline.request_batch(request))
    return batches


def _unlabelled_pairs(labelled: np.ndarray) -> np.ndarray:
    """(offsets, *OUTPUT): True where the voxel or its neighbour at the offset is
    unlabelled; `labelled` covers the output and REACH voxels beyond it."""
    pairs = np.zeros((len(NEIGHBORHOOD), *OUTPUT), dtype=bool)
    for channel, offset in enumerate(NEIGHBORHOOD):
        neighbour = tuple(slice(o, o + s) for o, s in zip(offset, OUTPUT, strict=True))
        here = tuple(slice(0, s) for s in OUTPUT)
        pairs[channel] = ~(labelled[here] & labelled[neighbour])
    return pairs


def _check_weights(batch: gp.Batch, grow_boundary: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights only on pairs with both ends labelled and LSDs only at labelled voxels;
    returns the unlabelled pairs and the labelled voxels of the output."""
    labelled = batch[UNLABELLED].data[0] == 1  # 1: labelled (gunpowder's convention)
    inside = labelled[: OUTPUT[0], : OUTPUT[1], : OUTPUT[2]]
    labels = batch[LABELS].data[0]
    assert not labels[~inside].any()  # the mask never marks a labelled voxel unlabelled
    if grow_boundary == 0:  # else GrowBoundary turns labelled voxels into boundary
        np.testing.assert_array_equal(inside, labels > 0)
    pairs = _unlabelled_pairs(labelled)
    # exactly the pairs with both ends labelled carry weight (a pair leaving the labels
    # is unknown: the object may go on)
    np.testing.assert_array_equal(batch[AFFS_WEIGHTS].data[0] > 0, ~pairs)
    lsds_weights = batch[LSDS_WEIGHTS].data[0]
    assert not lsds_weights[:, ~inside].any()
    assert lsds_weights[:, inside].any() == inside.any()
    return pairs, inside


def _check_loss(batch: gp.Batch, pairs: np.ndarray, inside: np.ndarray, seed: int) -> None:
    """Perturbing the predictions outside the labels leaves the loss as it is, its gradient
    there is exactly 0, and inside it is not."""
    targets = {key: torch.from_numpy(batch[key].data) for key in
               (GT_AFFS, AFFS_WEIGHTS, GT_LSDS, LSDS_WEIGHTS)}  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    affs = torch.rand(targets[GT_AFFS].shape, generator=generator, requires_grad=True)
    lsds = torch.rand(targets[GT_LSDS].shape, generator=generator, requires_grad=True)

    def loss(affs: torch.Tensor, lsds: torch.Tensor) -> torch.Tensor:
        t = targets
        return MtlsdLoss()(affs, t[GT_AFFS], t[AFFS_WEIGHTS], lsds, t[GT_LSDS], t[LSDS_WEIGHTS])

    value = loss(affs, lsds)
    value.backward()
    outside_affs = torch.from_numpy(pairs)[None]
    outside_lsds = torch.from_numpy(~inside)[None, None].expand_as(lsds)
    assert torch.all(affs.grad[outside_affs] == 0) and torch.all(affs.grad[~outside_affs] != 0)
    assert torch.all(lsds.grad[outside_lsds] == 0) and lsds.grad.abs().sum() > 0
    with torch.no_grad():
        noise = torch.rand(affs.shape, generator=generator) * 100 - 50
        perturbed_affs = torch.where(outside_affs, noise, affs)
        noise = torch.rand(lsds.shape, generator=generator) * 100 - 50
        perturbed_lsds = torch.where(outside_lsds, noise, lsds)
        assert not torch.equal(perturbed_affs, affs) and not torch.equal(perturbed_lsds, lsds)
        assert torch.equal(loss(perturbed_affs, perturbed_lsds), value)
        assert not torch.equal(loss(torch.where(outside_affs, affs, affs + 0.1), lsds), value)


def test_whole_objects_train_their_rim_as_boundary(stripes: Path) -> None:
    """`unlabelled_edges = "boundary"` (pseudo ground truth of whole segments): a pair from a
    labelled to an unlabelled voxel trains as a boundary; only unlabelled pairs carry no
    weight."""
    config = SegmentationTrainConfig(raw_container=str(stripes), sparse_labels=True,
                                     unlabelled_edges="boundary", **SMALL)  # fmt: skip
    rims = 0
    for batch in _batches(config, seeds=list(range(1, 9)), grow=REACH):
        labelled = batch[UNLABELLED].data[0] == 1
        either = _unlabelled_pairs(~labelled)  # at least one end labelled
        rim = either & _unlabelled_pairs(labelled)  # exactly one end labelled
        np.testing.assert_array_equal(batch[AFFS_WEIGHTS].data[0] > 0, either)
        assert not batch[GT_AFFS].data[0][rim].any()
        rims += int(rim.sum())
    assert rims > 0


@pytest.mark.parametrize("grow_boundary", [0, 1])
def test_no_weight_and_no_gradient_outside_the_labels(stripes: Path, grow_boundary: int) -> None:
    config = SegmentationTrainConfig(raw_container=str(stripes), sparse_labels=True,
                                     grow_boundary=grow_boundary, **SMALL)  # fmt: skip
    straddling = 0
    # outputs may reach into the zero padding beyond the volume (unlabelled): some crops
    # are all unlabelled, the rest straddle the stripes
    for seed, batch in enumerate(_batches(config, seeds=list(range(1, 9)), grow=REACH)):
        pairs, inside = _check_weights(batch, grow_boundary)
        if inside.any() and not inside.all():
            _check_loss(batch, pairs, inside, seed)
            straddling += 1
    assert straddling >= 3


def test_reject_delivers_only_batches_labelled_enough(half: Path) -> None:
    config = SegmentationTrainConfig(raw_container=str(half), sparse_labels=True, **SMALL)

    def fractions(batches: list[gp.Batch]) -> list[float]:
        return [float(b[UNLABELLED].data.mean()) for b in batches]

    # without rejection, many crops are mostly unlabelled (seeded: reproducible)
    unfiltered = fractions(_batches(config, seeds=list(range(1, 21))))
    assert min(unfiltered) < 0.2 and max(unfiltered) == 1.0
    assert sum(f < 0.6 for f in unfiltered) >= 5
    picky = config.model_copy(update={"min_labelled_fraction": 0.6})
    # rejection resamples: the locations must vary, so the requests are not seeded
    kept = fractions(_batches(picky, seeds=[None] * 15))
    assert all(f >= 0.6 for f in kept), kept


def test_task_parts_request_the_mask_and_snapshot_it(stripes: Path) -> None:
    config = SegmentationTrainConfig(raw_container=str(stripes), sparse_labels=True,
                                     min_labelled_fraction=0.3, **SMALL)  # fmt: skip
    parts = task_parts(config, WorkerConfig(num_cache_workers=1), "train_config.toml")
    assert UNLABELLED in parts.request
    assert ("unlabelled", UNLABELLED) in parts.snapshot.keys


def test_config_keys_are_checked() -> None:
    base = {"raw_container": "x", **SMALL}
    assert SegmentationTrainConfig(**base).sparse_labels is False
    assert SegmentationTrainConfig(**base).min_labelled_fraction == 0
    with pytest.raises(ValidationError, match="sparse_labels = true derives the unlabelled mask"):
        SegmentationTrainConfig(**base, sparse_labels=True, unlabelled_dataset="mask")
    with pytest.raises(ValidationError, match="min_labelled_fraction = 0.2 needs a mask"):
        SegmentationTrainConfig(**base, min_labelled_fraction=0.2)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValidationError, match="min_labelled_fraction"):
            SegmentationTrainConfig(**base, sparse_labels=True, min_labelled_fraction=bad)
    # an explicit mask may set the fraction too
    explicit = SegmentationTrainConfig(**base, unlabelled_dataset="m", min_labelled_fraction=0.2)
    assert explicit.min_labelled_fraction == 0.2


def test_dense_labels_still_train_on_background(stripes: Path) -> None:
    """Without sparse_labels, 0 in the labels is background: every pair carries weight."""
    config = SegmentationTrainConfig(raw_container=str(stripes), **SMALL)
    (batch,) = _batches(config, seeds=[3])
    assert UNLABELLED not in batch
    assert (batch[LABELS].data == 0).any() and np.all(batch[AFFS_WEIGHTS].data > 0)


CREMI = SHARED_DATA / "cremi_c_sparse"


def test_a_real_painting_trains_only_on_its_section(tmp_path: Path) -> None:
    """CREMI C with a user's painting of one section (z = 4, 40 x 4 x 4 nm): every batch
    delivered with min_labelled_fraction holds part of that section, and weights only
    there."""
    image = require_shared_data(CREMI / "cremi_image.tif")
    painting = require_shared_data(CREMI / "cremi_labels.tif")
    volume = tmp_path / "cremi.zarr"
    ingest(image, volume, ["volumes/raw"], (40, 4, 4), progress=False)
    ingest(painting, volume, [LABELS_DATASET], (40, 4, 4), progress=False)
    config = SegmentationTrainConfig(
        raw_container=str(volume), voxel_size=(40, 4, 4), input_shape=(16, 44, 44),
        downsample_factors=[(1, 2, 2)], augment=False, sparse_labels=True,
        min_labelled_fraction=0.05,
    )  # fmt: skip
    for batch in _batches(config, seeds=[None] * 2):
        labelled = batch[UNLABELLED].data[0] == 1
        assert labelled.mean() >= 0.05
        assert labelled.any(axis=(1, 2)).sum() == 1  # one section of the output is painted
        weights = batch[AFFS_WEIGHTS].data[0]
        assert not weights[:, ~labelled].any() and weights[:, labelled].any()
        assert not batch[LSDS_WEIGHTS].data[0][:, ~labelled].any()


def test_thin_outputs_never_land_wholly_in_the_padding(stripes: Path) -> None:
    """Anisotropic networks give outputs of a few sections with a deeper context; a
    random location wholly in the labels' padding made gunpowder's Pad fail (about one
    batch in ten here)."""
    config = SegmentationTrainConfig(
        raw_container=str(stripes), raw_dataset="volumes/raw", labels_dataset=LABELS_DATASET,
        voxel_size=(10, 10, 10), input_shape=(16, 24, 24), downsample_factors=[(1, 2, 2)],
        augment=False, lsds=False, sparse_labels=True,
    )  # fmt: skip
    assert config.network_output_shape[0] == 4  # thinner than the 7 sections of padding
    batches = _batches(config, list(range(60)))
    assert len(batches) == 60
