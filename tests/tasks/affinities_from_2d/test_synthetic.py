"""The synthetic 2D->3D data: random neurite label volumes, and the stacked 2D
predictions simulated from them (exact without perturbations, per-section errors with)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
from lsd.train.local_shape_descriptor import LsdExtractor

from connecto.tasks.affinities_from_2d.synthetic import (
    NeuriteSettings,
    PredictionSettings,
    merge_labels,
    neurite_count,
    random_neurites,
    section_lsds,
    simulate_2d_predictions,
    split_labels,
)
from connecto.tasks.section_contrast import (
    section_levels,
    stored_section_levels,
    stretch,
    stretch_sections,
)

VOXEL = (40, 8, 8)
SHAPE = (16, 64, 64)
OFFSETS = ((0, 1, 0), (0, 0, 1), (0, 3, 0), (0, 0, 3), (0, -2, 1))
EXACT = PredictionSettings(
    offsets=OFFSETS, lsds=False, split_rate=0, merge_rate=0, shift_rate=0,
    boundary_width=(0, 0), blur_sigma=0, noise_std=0, contrast=0, brightness=0,
    blob_strength=0, missing_rate=0,
)  # fmt: skip


def labels(seed: int = 0, shape: tuple[int, int, int] = SHAPE, **settings: object) -> np.ndarray:
    return random_neurites(shape, VOXEL, np.random.default_rng(seed), NeuriteSettings(**settings))


def exact_affinities(volume: np.ndarray, offsets: tuple) -> np.ndarray:
    """Affinity of voxel p and p + offset: the same nonzero label, both inside."""
    out = np.zeros((len(offsets), *volume.shape), dtype=np.float32)
    p = np.indices(volume.shape).reshape(3, -1)
    for channel, offset in enumerate(offsets):
        q = p + np.asarray(offset)[:, None]
        inside = np.all((q >= 0) & (q < np.asarray(volume.shape)[:, None]), axis=0)
        a, b = volume[tuple(p[:, inside])], volume[tuple(q[:, inside])]
        out[channel][tuple(p[:, inside])] = (a == b) & (a != 0)
    return out


def predict(volume: np.ndarray, seed: int = 1, margin: int = 0, **changes: object) -> np.ndarray:
    settings = PredictionSettings(**{**EXACT.__dict__, **changes})
    rng = np.random.default_rng(seed)
    return simulate_2d_predictions(volume, VOXEL, settings, rng, margin=margin)


# ---------------------------------------------------------------- labels


def test_labels_are_seeded_dense_and_counted():
    first = labels(3)
    assert first.shape == SHAPE and first.dtype == np.uint64
    assert np.array_equal(first, labels(3))
    assert not np.array_equal(first, labels(4))
    assert first.min() >= 1  # dense, as neurites fill EM
    for diameter in (120.0, 250.0):
        expected = neurite_count(np.multiply(SHAPE, VOXEL), diameter)
        found = [len(np.unique(labels(seed, diameter=(diameter, diameter)))) for seed in range(4)]
        # every axis keeps its voxels; the warp may swallow an occasional thin one
        assert all(0.8 * expected <= n <= expected for n in found), (expected, found)
    thin = len(np.unique(labels(0, diameter=(100.0, 100.0))))
    assert thin > 2 * len(np.unique(labels(0, diameter=(250.0, 250.0))))


def test_labels_continue_across_sections():
    volume = labels(5)
    shared = []
    for z in range(SHAPE[0] - 1):
        here, above = set(np.unique(volume[z])), set(np.unique(volume[z + 1]))
        shared.append(len(here & above) / len(here))
    assert np.mean(shared) > 0.85, shared
    # objects are 3D: most labels span several of the 16 sections
    spans = [len(np.unique(np.nonzero(volume == label)[0])) for label in np.unique(volume)]
    assert np.median(spans) >= 4, spans


def test_labels_are_fast_enough_for_training():
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    volume = random_neurites((64, 64, 64), (8, 8, 8), rng)
    simulate_2d_predictions(volume, (8, 8, 8), PredictionSettings(), rng)
    assert time.perf_counter() - started < 2.0  # ~0.4 s on one core; slack for busy CI


# ---------------------------------------------------------------- 2D predictions


def test_without_perturbations_the_predictions_are_the_exact_in_plane_affinities():
    volume = labels(7)
    stack = predict(volume)
    assert stack.shape == (len(OFFSETS), *SHAPE) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack, exact_affinities(volume, OFFSETS))
    assert 0.5 < stack.mean() < 1  # inside neurites mostly, boundaries too


def test_lsd_channels_are_lsds_2d_descriptors():
    volume = labels(8, shape=(6, 45, 50))  # sections that do not divide by the downsampling
    stack = predict(volume, lsds=True, lsd_sigma=60.0, lsd_downsample=2)
    assert stack.shape == (len(OFFSETS) + 6, 6, 45, 50)
    lsds = stack[len(OFFSETS) :]
    extractor = LsdExtractor((60.0, 60.0), downsample=2)
    for z, section in enumerate(volume):
        padded = np.pad(section, [(0, 1), (0, 0)], mode="edge")
        expected = extractor.get_descriptors(padded, voxel_size=VOXEL[1:])[:, :45, :50]
        for channel in (0, 1, 2, 3, 5):  # mean offsets, variances, size
            np.testing.assert_allclose(lsds[channel, z], expected[channel], atol=1e-4)
        # pearson: lsd's float32 coordinates in nm cancel where a label is one pixel wide
        assert np.mean(np.abs(lsds[4, z] - expected[4]) < 1e-3) > 0.99
    assert 0 <= stack.min() and stack.max() <= 1
    np.testing.assert_array_equal(section_lsds(volume, VOXEL, 60.0, 2), lsds)


def test_a_margin_is_read_not_predicted():
    """With a margin the channels of the inner region are those of the whole volume:
    labels in the margin still count for affinities and LSDs near the border."""
    volume = labels(11, shape=(4, 60, 70))
    inner = (slice(None), slice(None), slice(9, 51), slice(9, 61))
    stack = predict(volume, lsds=True, lsd_sigma=50.0, margin=9)
    assert stack.shape == (len(OFFSETS) + 6, 4, 42, 52)
    np.testing.assert_array_equal(stack, predict(volume, lsds=True, lsd_sigma=50.0)[inner])
    np.testing.assert_array_equal(stack[: len(OFFSETS)], exact_affinities(volume, OFFSETS)[inner])


def _same_sections(seed: int = 2, depth: int = 12) -> np.ndarray:
    """A volume whose sections are all one section: what differs between sections of
    its predictions is the simulated errors alone."""
    return np.repeat(labels(seed, shape=(1, 64, 64), diameter=(60.0, 60.0)), depth, axis=0)


def test_splits_only_cut_and_differ_between_sections():
    volume = _same_sections()
    exact = exact_affinities(volume, OFFSETS)
    stack = predict(volume, split_rate=0.5)
    assert np.all(stack <= exact)  # a split only adds boundaries
    lost = (stack < exact).sum(axis=(0, 2, 3))
    assert np.all(lost > 0) and len(set(lost.tolist())) > len(lost) // 2, lost
    assert not np.array_equal(stack[:, 0], stack[:, 1])
    assert np.array_equal(predict(volume, split_rate=0.5), stack)  # seeded


def test_merges_only_join_and_differ_between_sections():
    volume = _same_sections()
    exact = exact_affinities(volume, OFFSETS)
    stack = predict(volume, merge_rate=0.3)
    assert np.all(stack >= exact)  # a merge only removes boundaries
    gained = (stack > exact).sum(axis=(0, 2, 3))
    assert np.all(gained > 0) and len(set(gained.tolist())) > len(gained) // 2, gained


def test_boundary_changes():
    volume = _same_sections()
    exact = exact_affinities(volume, OFFSETS)
    wide = predict(volume, boundary_width=(2, 2))
    assert np.all(wide <= exact) and wide.mean() < exact.mean() - 0.1
    shifted = predict(volume, shift_rate=0.5, shift_max=2)
    assert not np.array_equal(shifted, exact)
    # moved, not removed: about as many boundary edges as before
    assert abs(shifted.mean() - exact.mean()) < 0.05


@pytest.mark.parametrize("noise", [0.1, 0.3])
def test_noise_level_sets_the_error(noise: float):
    volume = labels(9, shape=(200, 24, 24))  # many sections: each draws its own level
    exact = exact_affinities(volume, OFFSETS)
    stack = predict(volume, noise_std=noise)
    assert 0 <= stack.min() and stack.max() <= 1
    # exact values are 0 or 1, so clipping keeps the half of the noise pointing inward:
    # E|error| = sd E|N(0, 1)| / 2 = sd / sqrt(2 pi), with sd ~ U(0, noise) per section
    per_section = np.abs(stack - exact).mean(axis=(0, 2, 3)) * np.sqrt(2 * np.pi)
    assert per_section.mean() == pytest.approx(noise / 2, rel=0.1)
    assert per_section.max() < 1.1 * noise and per_section.min() < 0.1 * noise
    assert np.quantile(per_section, 0.9) > 0.8 * noise


def test_blur_and_contrast_soften_the_channels():
    volume = labels(10)
    exact = exact_affinities(volume, OFFSETS)
    blurred = predict(volume, blur_sigma=2.0)
    assert np.mean((blurred > 0) & (blurred < 1)) > 0.1  # soft values, as a network's
    assert np.corrcoef(blurred.ravel(), exact.ravel())[0, 1] > 0.8
    contrasted = predict(volume, contrast=0.5)
    inside = contrasted[exact == 1]
    assert inside.min() < 0.8 and inside.max() == 1.0


def test_split_and_merge_helpers():
    section = np.array([[1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 2, 2], [1, 1, 1, 1, 0, 3]], np.uint64)
    split = split_labels(section, 1.0, np.random.default_rng(0))
    assert len(np.unique(split)) > len(np.unique(section))
    for label in np.unique(split):  # each new label lies inside one old label
        assert len(np.unique(section[split == label])) == 1
    merged = merge_labels(section, 1.0, np.random.default_rng(0))
    assert set(np.unique(merged)) == {0, 1}  # 1-2 and 2-3 touch: one label; 0 stays
    assert np.array_equal(merge_labels(section, 0.0, np.random.default_rng(0)), section)


def test_blobs_only_lower_affinities_inside_objects_and_differ_per_section():
    volume = labels(3)
    exact = simulate_2d_predictions(volume, VOXEL, EXACT, np.random.default_rng(0))
    blobbed = simulate_2d_predictions(volume, VOXEL, replace(EXACT, blob_strength=1.0),
                                      np.random.default_rng(0))  # fmt: skip
    assert np.all(blobbed <= exact)
    assert np.all(blobbed[exact == 0] == 0)  # boundaries stay boundaries
    lowered = (exact - blobbed).reshape(len(OFFSETS), SHAPE[0], -1).mean(axis=(0, 2))
    assert lowered.max() > 0.05 and lowered.std() > 0  # drawn per section


def test_stretching_undoes_a_section_s_compressed_contrast():
    exact = simulate_2d_predictions(labels(4), VOXEL, EXACT, np.random.default_rng(0))
    soft = exact.copy()
    soft[:, 3] = 0.6 + 0.3 * soft[:, 3]  # a section whose boundaries reach only 0.6
    restored = stretch(soft, section_levels(soft, (1.0, 99.0)))
    np.testing.assert_allclose(restored, exact, atol=1e-5)
    flat = np.full((1, 2, 8, 8), 0.7, dtype=np.float32)  # no contrast: not blown up
    assert np.all(stretch(flat, section_levels(flat, (1.0, 99.0))) == 0)


def test_stored_levels_read_section_by_section_equal_the_in_memory_ones(tmp_path) -> None:
    """Levels of a stored stack, read one section at a time, and the in-memory stretch
    of single-channel sections agree with the stack functions."""
    import zarr

    stack = np.random.default_rng(0).random((3, 5, 40, 30)).astype(np.float32)
    stored = zarr.open(str(tmp_path / "stack.zarr"), mode="w", shape=stack.shape,
                       chunks=(3, 1, 16, 16), dtype=np.float32)  # fmt: skip
    stored[:] = stack
    expected = section_levels(stack, (1.0, 99.0))
    np.testing.assert_allclose(stored_section_levels(stored, range(5), (1.0, 99.0)), expected)
    np.testing.assert_allclose(stored_section_levels(stored, range(2, 4), (1.0, 99.0)),
                               expected[:, :, 2:4])  # fmt: skip
    single = stored_section_levels(stack[0], range(5), (1.0, 99.0))  # (z, y, x): C = 1
    np.testing.assert_allclose(single, expected[:, :1])
    # sections 1..4 of a 5-section volume, the first of them padding (-1)
    part = np.concatenate([np.full((1, 40, 30), 0.5, np.float32), stack[0, :4]])
    stretched = stretch_sections(part.copy(), single[:, 0], -1)
    assert np.all(stretched[0] == 0.5)  # padding stays as it is
    np.testing.assert_allclose(stretched[1:], stretch(stack[:1, :4], expected[:, :1, :4])[0])


def test_missing_sections_are_near_constant_and_only_at_their_rate():
    volume = labels(5)
    exact = simulate_2d_predictions(volume, VOXEL, EXACT, np.random.default_rng(0))
    blank = simulate_2d_predictions(volume, VOXEL, replace(EXACT, missing_rate=1.0),
                                    np.random.default_rng(0))  # fmt: skip
    spread = blank.reshape(len(OFFSETS), SHAPE[0], -1)
    assert np.all(spread.std(axis=2) < 0.03) and np.all((spread > 0.2) & (spread < 0.8))
    assert exact.reshape(len(OFFSETS), SHAPE[0], -1).std(axis=2).min() > 0.1
    some = simulate_2d_predictions(
        labels(5, (200, 32, 32)), VOXEL, replace(EXACT, missing_rate=0.1), np.random.default_rng(1)
    )
    flat = some.reshape(len(OFFSETS), 200, -1).std(axis=2).max(axis=0) < 0.03
    assert 8 <= flat.sum() <= 35  # about 20 of 200 sections
