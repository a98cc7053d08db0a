"""The two views of a crop: they differ, the synapse stays at the crop centre, the
geometry without random draws is the plain crop, and the batch source's layout."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import zarr
from funlib.persistence import Array
from scipy import ndimage

from connecto.data.ingest import create_volume
from connecto.data.volumes import open_raw
from connecto.tasks.synapse_contrastive.augment import ViewAugmentation, centre_crop
from connecto.tasks.synapse_contrastive.config import ContrastiveAugmentConfig
from connecto.tasks.synapse_contrastive.pipeline import (
    SYNAPSE_IDS,
    VIEWS,
    ContrastiveBatchSource,
    batch_request,
)

SHAPE = (8, 32, 32)
VOXEL_SIZE = (40, 4, 4)
# every augmentation, defects often, so that a few draws exercise all of them
STRONG = ContrastiveAugmentConfig(prob_blur=0.5, prob_cutout=0.3, prob_misalign=0.3)


def _blob(shape: tuple[int, ...], centre: tuple[int, ...], background: float = 0.0) -> np.ndarray:
    """A bright Gaussian blob (sigma 2 voxels in y-x, 5 sections deep) at `centre`, on
    a textured background of mean `background`."""
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    blob = np.exp(-((yy - centre[1]) ** 2 + (xx - centre[2]) ** 2) / (2 * 2.0**2))
    blob = blob * (np.abs(zz - centre[0]) <= 2)
    texture = np.random.default_rng(0).random(shape) * 0.1
    return np.clip(blob + background + texture * (background > 0), 0, 1).astype(np.float32)


def _peak(section: np.ndarray) -> np.ndarray:
    """The (y, x) of the brightest spot, smoothed first (noise moves a single pixel's
    maximum)."""
    smooth = ndimage.gaussian_filter(section, 1.5)
    return np.array(np.unravel_index(np.argmax(smooth), section.shape))


def test_views_differ_and_keep_the_synapse_at_the_centre() -> None:
    augmentation = ViewAugmentation(SHAPE, STRONG)
    context_shape = augmentation.context_shape
    context = _blob(context_shape, tuple(s // 2 for s in context_shape), background=0.3)
    centre = np.array(SHAPE) // 2
    np.random.seed(3)
    views = [augmentation(context) for _ in range(24)]
    for view in views:
        assert view.shape == SHAPE and view.dtype == np.float32
        assert 0 <= view.min() and view.max() <= 1
        # the synapse's section is never blanked nor moved: its peak is at the centre
        assert np.abs(_peak(view[centre[0]]) - centre[1:]).max() <= 1
    pairs = list(zip(views[::2], views[1::2], strict=True))
    assert all(np.abs(a - b).mean() > 0.01 for a, b in pairs)
    # the defects happen: some section blanked or moved, in some view
    blank = [z for view in views for z in range(SHAPE[0]) if view[z].max() == 0]
    assert blank and all(z != centre[0] for z in blank)


def test_geometry_without_draws_is_the_centred_crop() -> None:
    """No rotation, zoom, mirror, defects or intensity change: the view is exactly the
    crop of the context around its centre voxel (the sampling grid is aligned)."""
    plain = ContrastiveAugmentConfig(
        rotate=False, mirror_transpose=False, scale=(1, 1), intensity_scale=(1, 1),
        intensity_shift=(0, 0), gamma=(1, 1), noise_sigma=0, prob_blur=0, prob_cutout=0,
        prob_misalign=0,
    )  # fmt: skip
    augmentation = ViewAugmentation(SHAPE, plain)
    context = np.random.default_rng(1).random(augmentation.context_shape).astype(np.float32)
    view = augmentation(context)
    np.testing.assert_allclose(view, centre_crop(context, SHAPE), atol=1e-5)
    # a 90-degree turn (zoom 1) of a blob off the centre moves it to the turned place
    turned = ViewAugmentation(SHAPE, plain.model_copy(update={"rotate": True}))
    c = np.array(turned.context_shape) // 2
    context = _blob(turned.context_shape, (c[0], c[1] + 6, c[2]))
    np.random.seed(0)
    peaks = {tuple(_peak(turned(context)[SHAPE[0] // 2]) - np.array(SHAPE[1:]) // 2)}
    for _ in range(15):
        peaks.add(tuple(_peak(turned(context)[SHAPE[0] // 2]) - np.array(SHAPE[1:]) // 2))
    # the blob stays 6 voxels from the centre at every angle
    assert all(5 <= np.hypot(*p) <= 7 for p in peaks) and len(peaks) > 4


def test_context_covers_every_view() -> None:
    """The context is large enough that the sampling never reaches its border: a view
    of a context whose border ring is 1 and inside 0 (all draws at their extremes
    possible) has no 1s."""
    plain = ContrastiveAugmentConfig(
        intensity_scale=(1, 1), intensity_shift=(0, 0), gamma=(1, 1), noise_sigma=0,
        prob_blur=0, prob_misalign=1.0, scale=(0.8, 0.8),
    )  # fmt: skip
    augmentation = ViewAugmentation(SHAPE, plain)
    context = np.ones(augmentation.context_shape, np.float32)
    context[:, 1:-1, 1:-1] = 0
    np.random.seed(0)
    assert max(float(augmentation(context).max()) for _ in range(20)) == 0


def _volume(tmp_path: Path, centres: list[tuple[int, int, int]]) -> Array:
    shape = (24, 160, 160)
    data = np.zeros(shape, np.float32)
    for centre in centres:
        data = np.maximum(data, _blob(shape, centre))
    root = zarr.open_group(str(tmp_path / "blobs.zarr"), mode="w")
    create_volume(root, "raw", shape, np.uint8, VOXEL_SIZE, (0, 0, 0), chunks=(8, 64, 64))
    root["raw"][:] = (data * 255).astype(np.uint8)
    return open_raw(tmp_path / "blobs.zarr", "raw")


@pytest.mark.parametrize("augment", [True, False])
def test_batch_source_stacks_first_then_second_views(tmp_path: Path, augment: bool) -> None:
    centres = [(12, 40, 40), (12, 110, 90), (3, 80, 150)]  # the last near the border
    raw = _volume(tmp_path, centres)
    positions = np.array(centres, dtype=float) * VOXEL_SIZE
    ids = np.array([7, 8, 9])
    augmentation = ViewAugmentation(SHAPE, ContrastiveAugmentConfig()) if augment else None
    source = ContrastiveBatchSource(VIEWS, SYNAPSE_IDS, raw, ids, positions, 3, augmentation)
    with gp.build(gp.Pipeline(source)) as pipeline:
        batch = pipeline.request_batch(batch_request(SHAPE, VOXEL_SIZE))
    views = batch[VIEWS].data
    assert views.shape == (6, *SHAPE) and views.dtype == np.float32
    assert -1 <= views.min() and views.max() <= 1
    assert sorted(batch[SYNAPSE_IDS].data.tolist()) == [7, 8, 9]  # distinct synapses
    centre = np.array(SHAPE) // 2
    for view in views:  # both views of every synapse: the blob at the centre
        assert np.abs(_peak(view[centre[0]]) - centre[1:]).max() <= 1
        # brighter than most of the view, whatever gain and offset the view was given
        assert view[centre[0], centre[1], centre[2]] > np.median(view)
    first, second = views[:3], views[3:]
    if augment:
        assert all(np.abs(a - b).mean() > 0.01 for a, b in zip(first, second, strict=True))
    else:
        np.testing.assert_array_equal(first, second)
