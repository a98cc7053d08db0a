"""The synapse training pipeline's parts: reading crops straight from zarr/N5 (zero
outside the volume, any offset), the batch source's placement of synapses, and the fused
augmentation (geometry, intensity, and the synapse kept at the crop centre)."""

from __future__ import annotations

import math
from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from scipy import ndimage

from connecto.data.ingest import create_volume
from connecto.data.volumes import crop_roi, open_raw, read_roi, scale_raw
from connecto.tasks.synapse_classification.pipeline import (
    LABEL,
    RAW,
    SynapseAugmentation,
    SynapseBatchSource,
    _upsampling,
    batch_request,
    resample_sections,
)

VOXEL_SIZE = (40, 4, 4)
OFFSET = (120, 20, -8)  # not a multiple of the chunks, negative in x
SHAPE = (16, 32, 32)


@pytest.fixture
def volume(tmp_path: Path) -> Array:
    """Random uint8 raw, (20, 50, 60) voxels with an offset, in small chunks."""
    data = np.random.default_rng(0).integers(0, 256, (20, 50, 60), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "raw.zarr"), mode="w")
    create_volume(root, "raw", data.shape, data.dtype, VOXEL_SIZE, OFFSET, chunks=(8, 16, 16))
    root["raw"][:] = data
    return open_raw(tmp_path / "raw.zarr", "raw")


def _rois(array: Array) -> list[Roi]:
    """Inside, across each face and corner, and entirely outside the volume."""
    roi, shape = array.roi, Coordinate(6, 10, 12) * array.voxel_size
    nm = Coordinate  # offsets in nm, on the voxel grid
    begins = [
        roi.begin + nm(40, 8, 8),  # inside
        roi.begin - nm(80, 0, 0), roi.begin - nm(0, 8, 0), roi.begin - nm(0, 0, 12),
        roi.end - shape + nm(80, 0, 0), roi.end - shape + nm(0, 8, 4),
        roi.begin - nm(40, 20, 16),  # a corner
        roi.end + nm(40, 0, 0),  # outside
    ]  # fmt: skip
    return [Roi(begin, shape) for begin in begins]


def test_read_roi_is_to_ndarray_with_zero_fill(volume: Array, tmp_path: Path) -> None:
    for roi in _rois(volume):
        np.testing.assert_array_equal(read_roi(volume, roi), volume.to_ndarray(roi, fill_value=0))
    with pytest.raises(ValueError, match="not on the voxel grid"):
        read_roi(volume, Roi(volume.roi.begin + Coordinate(0, 2, 0), (40, 4, 4)))
    # N5, with gunpowder's x-y-z resolution and offset
    container = tmp_path / "raw.n5"
    root = zarr.open_group(zarr.N5FSStore(str(container)), mode="w")
    n5 = root.create_dataset("s0", data=volume.to_ndarray(volume.roi), chunks=(4, 16, 16))
    n5.attrs.update(resolution=VOXEL_SIZE[::-1], offset=OFFSET[::-1])
    raw = open_raw(container, "s0")
    assert raw.roi == volume.roi
    for roi in _rois(raw):
        np.testing.assert_array_equal(read_roi(raw, roi), raw.to_ndarray(roi, fill_value=0))


def _batches(
    source: SynapseBatchSource, count: int, shape: tuple[int, ...] = SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """`count` batches requested with fixed seeds: RAW and LABEL concatenated."""
    raws, labels = [], []
    specs = batch_request(shape, VOXEL_SIZE)
    with gp.build(gp.Pipeline(source)) as pipeline:
        for seed in range(count):
            request = gp.BatchRequest(random_seed=seed)  # gunpowder seeds numpy from it
            request[RAW], request[LABEL] = specs[RAW], specs[LABEL]
            batch = pipeline.request_batch(request)
            raws.append(batch[RAW].data)
            labels.append(batch[LABEL].data)
    return np.concatenate(raws), np.concatenate(labels)


def test_source_crops_around_synapses_like_crop_roi(volume: Array) -> None:
    """Without augmentation, each sample is `crop_roi`'s crop of its synapse (zero
    outside the volume), scaled to [0, 1], labelled with its class."""
    begin, end = volume.roi.begin, volume.roi.end
    locations = [
        [(begin[0] + 10 * 40 + 13, begin[1] + 25 * 4 + 1, begin[2] + 30 * 4)],  # inside
        [(begin[0] + 40, end[1] - 3, begin[2] + 2)],  # across three faces
    ]
    source = SynapseBatchSource(RAW, LABEL, volume, locations, 4, value_range=(0.0, 1.0))
    data, labels = _batches(source, 4)
    assert data.shape == (16, *SHAPE) and data.dtype == np.float32
    assert set(labels) == {0, 1}
    for sample, label in zip(data, labels, strict=True):
        roi = crop_roi(volume, locations[label][0], SHAPE)
        np.testing.assert_array_equal(sample, scale_raw(volume.to_ndarray(roi, fill_value=0)))
    outside = data[labels == 1][0]  # zero before z and x begin, beyond y end
    assert not outside[:7].any() and not outside[:, 17:].any() and not outside[..., :16].any()
    assert outside[7:, :17, 16:].mean() > 0.4  # and raw inside


def test_upsampling_and_resampling_match_scipy() -> None:
    rng = np.random.default_rng(0)
    for size, points in ((160, 5), (32, 2), (33, 3)):
        jitter = rng.normal(0, 2, (points, points))
        zoomed = ndimage.zoom(jitter, size / points, order=1, grid_mode=True, mode="nearest")
        up = _upsampling(size, points)
        np.testing.assert_allclose(up @ jitter @ up.T, zoomed, atol=1e-12)
    source = rng.random((3, 20, 30), dtype=np.float32)
    y, x = rng.uniform(-2, 21, (10, 12)), rng.uniform(-2, 31, (10, 12))
    grid = np.stack([x * 2 / 29 - 1, y * 2 / 19 - 1], axis=-1).astype(np.float32)
    expected = [ndimage.map_coordinates(s, [y, x], order=1, mode="nearest") for s in source]
    np.testing.assert_allclose(resample_sections(source, grid), expected, atol=1e-5)


def _d4(crop: np.ndarray) -> list[np.ndarray]:
    """The 8 mirrors/transposes of a (z, y, x) crop in y-x."""
    turns = [crop, crop.transpose(0, 2, 1)]
    return [t[:, ::fy, ::fx] for t in turns for fy in (1, -1) for fx in (1, -1)]


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and largest error of `y` against `x`, where `y` is not clipped."""
    keep = (y > 0) & (y < 1)
    slope, intercept = np.polyfit(x[keep], y[keep], 1)
    return slope, intercept, float(np.abs(slope * x[keep] + intercept - y[keep]).max())


def test_augmentation_without_deformation_mirrors_transposes_and_scales_sections(
    volume: Array,
) -> None:
    """No rotation, jitter or misalignment: each sample is one of the 8 y-x mirrors and
    transposes of the plain crop (several occur), with intensities per section changed
    as `IntensityAugment(z_section_wise=True)`: `mean + (x - mean) * scale + shift`,
    clipped to [0, 1]."""
    voxel = (10, 25, 30)  # the crop lies inside the volume
    location = [tuple(o + c * v for o, c, v in zip(OFFSET, voxel, VOXEL_SIZE, strict=True))]
    plain, _ = _batches(SynapseBatchSource(RAW, LABEL, volume, [location], 1, None, (0, 1)), 1)
    candidates = _d4(plain[0])
    unchanged = SynapseAugmentation(
        jitter_sigma=0, max_rotation=0, prob_slip=0, prob_shift=0, scale=(1, 1), shift=(0, 0)
    )
    source = SynapseBatchSource(RAW, LABEL, volume, [location], 8, unchanged, (0, 1))
    used = set()
    for sample in _batches(source, 2)[0]:
        matches = [i for i, c in enumerate(candidates) if np.allclose(sample, c, atol=1e-5)]
        assert len(matches) == 1
        used.add(matches[0])
    assert len(used) >= 4

    still = SynapseAugmentation(jitter_sigma=0, max_rotation=0, prob_slip=0, prob_shift=0)
    source = SynapseBatchSource(RAW, LABEL, volume, [location], 8, still, (0, 1))
    scales, shifts = [], []
    for sample in _batches(source, 2)[0]:
        # the transform whose sections the sample's sections are linear in
        fits = [[_linear_fit(c[z], sample[z]) for z in range(SHAPE[0])] for c in candidates]
        best = int(np.argmin([max(f[2] for f in fit) for fit in fits]))
        assert max(f[2] for f in fits[best]) < 1e-4
        for z, (slope, intercept, _) in enumerate(fits[best]):
            scales.append(slope)
            shifts.append(intercept - candidates[best][z].mean() * (1 - slope))
    scales_, shifts_ = np.array(scales), np.array(shifts)
    assert np.all(np.abs(scales_ - 1) <= 0.1 + 1e-4) and scales_.std() > 0.03  # per section
    assert np.all(np.abs(shifts_) <= 0.1 + 1e-4) and shifts_.std() > 0.03


def _disc_volume(tmp_path: Path, centre: tuple[int, int, int]) -> Array:
    """Zero raw with a bright disc of radius 5 voxels around `centre` in every section."""
    shape = (30, 120, 120)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    disc = (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= 25
    data = np.broadcast_to(np.where(disc, 255, 0).astype(np.uint8), shape)
    root = zarr.open_group(str(tmp_path / "disc.zarr"), mode="w")
    create_volume(root, "raw", shape, np.uint8, VOXEL_SIZE, OFFSET, chunks=(8, 32, 32))
    root["raw"][:] = data
    return open_raw(tmp_path / "disc.zarr", "raw")


def test_augmented_synapse_stays_at_the_crop_centre(tmp_path: Path) -> None:
    """A disc around the synapse, deformed, rotated, mirrored, transposed and scaled:
    its centre stays at the crop's centre voxel (up to the jitter's displacement there)
    in every section that no slip or shift moved, and the sections that moved are the
    fraction misalignment moves (sections later in the stack more often)."""
    centre = (15, 60, 61)
    raw = _disc_volume(tmp_path, centre)
    location = [tuple(o + c * v for o, c, v in zip(OFFSET, centre, VOXEL_SIZE, strict=True))]
    target = np.array(SHAPE[1:]) // 2
    distances = {}
    for name, augmentation in {
        "aligned": SynapseAugmentation(prob_slip=0, prob_shift=0),
        "default": SynapseAugmentation(),
    }.items():
        source = SynapseBatchSource(RAW, LABEL, raw, [location], 8, augmentation, (0, 1))
        data, _ = _batches(source, 8)
        assert 0 <= data.min() and data.max() <= 1
        bright = data > 0.5
        area = bright.sum(axis=(2, 3))
        yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
        with np.errstate(invalid="ignore"):  # a section moved the disc out: nan, moved
            centroids = np.stack([
                (bright * yy).sum(axis=(2, 3)), (bright * xx).sum(axis=(2, 3))
            ], axis=-1) / area[..., None]  # fmt: skip
        distances[name] = np.nan_to_num(np.linalg.norm(centroids - target, axis=-1), nan=99)
        if name == "aligned":  # the disc, deformed, in every section
            assert area.min() >= 0.4 * math.pi * 25 and area.max() <= 2 * math.pi * 25
    # the jitter's displacement at the centre has about 1 voxel sd per axis here
    assert distances["aligned"].max() < 5 and np.median(distances["aligned"]) < 2
    moved = distances["default"] > 5
    assert np.median(distances["default"][~moved]) < 2 and 0.05 < moved.mean() < 0.6
    assert moved[:, 8:].mean() > moved[:, :8].mean()  # shifts carry on to later sections
