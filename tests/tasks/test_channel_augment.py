"""The channel augmentation nodes on real gunpowder pipelines: what each keeps, what it
changes, that per-channel targets and masks follow raw, and that a request's seed fixes
the augmentation."""

from __future__ import annotations

import gunpowder as gp
import numpy as np
import pytest
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array

from connecto.config import validate
from connecto.tasks.channel_augment import (
    ChannelAugmentConfig,
    ChannelBlur,
    ChannelDefects,
    ChannelIntensityAugment,
    DuplicateChannels,
    ShuffleChannels,
    ZeroChannels,
    channel_augmentations,
)

RAW = gp.ArrayKey("RAW")
TARGET = gp.ArrayKey("TARGET")
MASK = gp.ArrayKey("MASK")
VOXEL_SIZE = Coordinate((10, 10, 10))
CHANNELS = 6
SHAPE = (8, 16, 16)
INPUT = Roi((0, 0, 0), Coordinate(SHAPE) * VOXEL_SIZE)
OUTPUT = Roi((20, 40, 40), (40, 80, 80))  # the network's smaller output inside the input


def channel_data(kind: str = "identity", seed: int = 0) -> dict[gp.ArrayKey, np.ndarray]:
    """raw in [0, 1] over INPUT; target and mask over the whole volume too (cropped by
    the request). "identity": every channel constant c/10 (raw), c (target), 100+c (mask),
    so a channel's origin shows in every array."""
    rng = np.random.default_rng(seed)
    channels = np.arange(CHANNELS, dtype=np.float32)[:, None, None, None]
    ones = np.ones((CHANNELS, *SHAPE), dtype=np.float32)
    if kind == "identity":
        raw = ones * channels / 10
    elif kind == "ones":
        raw = ones.copy()
    else:
        raw = rng.uniform(0.2, 0.8, size=(CHANNELS, *SHAPE)).astype(np.float32)
    return {RAW: raw, TARGET: ones * channels, MASK: ones * (100 + channels)}


Data = dict[gp.ArrayKey, np.ndarray]


def run(node: gp.BatchFilter, data: Data, seed: int = 1,
        keys: tuple[gp.ArrayKey, ...] = (RAW, TARGET, MASK)) -> Data:  # fmt: skip
    sources = tuple(
        gp.ArraySource(key, Array(data[key], (0, 0, 0), VOXEL_SIZE,
                                  axis_names=["c^", "z", "y", "x"]), interpolatable=key == RAW)
        for key in keys
    )  # fmt: skip
    pipeline = sources + gp.MergeProvider() + node
    request = gp.BatchRequest(random_seed=seed)
    for key in keys:
        request[key] = gp.ArraySpec(roi=INPUT if key == RAW else OUTPUT)
    with gp.build(pipeline):
        batch = pipeline.request_batch(request)
    return {key: batch[key].data for key in keys}


def origin(values: np.ndarray, scale: float, shift: float = 0.0) -> list[int]:
    """The source channel of every output channel of an "identity" array."""
    firsts = values.reshape(values.shape[0], -1)
    assert np.all(firsts == firsts[:, :1]), "a channel mixes sources"
    return [int(round((v - shift) / scale)) for v in firsts[:, 0]]


def test_shuffle_permutes_raw_targets_and_masks_alike_and_follows_the_seed():
    out = run(ShuffleChannels(RAW, [TARGET], [MASK]), channel_data())
    order = origin(out[RAW], 0.1)
    assert sorted(order) == list(range(CHANNELS)) and order != list(range(CHANNELS))
    assert origin(out[TARGET], 1) == order and origin(out[MASK], 1, 100) == order
    again = run(ShuffleChannels(RAW, [TARGET], [MASK]), channel_data())
    assert origin(again[RAW], 0.1) == order  # the same request seed: the same permutation
    orders = {tuple(origin(run(ShuffleChannels(RAW), channel_data(), seed=s)[RAW], 0.1))
              for s in range(2, 8)}  # fmt: skip
    assert len(orders) > 1


def test_duplicate_overwrites_channels_with_copies_or_expands_to_a_count():
    out = run(DuplicateChannels(RAW, [TARGET], [MASK], max_channels=2), channel_data())
    order = origin(out[RAW], 0.1)
    assert len(order) == CHANNELS and 1 <= CHANNELS - len(set(order)) <= 2
    replaced = [c for c, source in enumerate(order) if source != c]
    assert replaced and all(order[order[c]] == order[c] for c in replaced)  # copies of kept ones
    assert origin(out[TARGET], 1) == order and origin(out[MASK], 1, 100) == order

    grown = run(DuplicateChannels(RAW, [TARGET], [MASK], num_channels=9), channel_data())
    order = origin(grown[RAW], 0.1)
    assert len(order) == 9 and order[:CHANNELS] == list(range(CHANNELS))
    assert origin(grown[TARGET], 1) == order and origin(grown[MASK], 1, 100) == order


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_zeroed_raw_is_masked_in_the_same_voxels_and_nothing_else_changes(seed: int):
    node = ZeroChannels(RAW, masks=[MASK], max_channels=3, shape_probability=0.5)
    out = run(node, channel_data("ones"), seed=seed)
    zeroed = out[RAW] == 0
    assert zeroed.any() and np.all(out[RAW][~zeroed] == 1)
    assert 1 <= int(zeroed.any(axis=(1, 2, 3)).sum()) <= 3
    inner = (slice(None), *((OUTPUT - INPUT.offset) / VOXEL_SIZE).to_slices())
    mask = out[MASK]
    assert np.array_equal(mask == 0, zeroed[inner])  # masked exactly where raw lost signal
    assert np.array_equal(mask[mask != 0], (100 + np.nonzero(mask)[0]).astype(np.float32))
    assert np.array_equal(out[TARGET], channel_data()[TARGET][inner])  # targets untouched


def test_zeroed_shapes_are_regions_not_whole_channels():
    sizes = set()
    for seed in range(1, 12):
        out = run(ZeroChannels(RAW, masks=[MASK], shape_probability=1.0), channel_data("ones"),
                  seed=seed)  # fmt: skip
        channel = (out[RAW] == 0).reshape(CHANNELS, -1).sum(axis=1).max()
        sizes.add(int(channel))
    assert max(sizes) < int(np.prod(SHAPE)) and min(sizes) > 0


def test_intensity_is_one_affine_map_per_channel_and_leaves_targets_alone():
    data = channel_data("random")
    out = run(ChannelIntensityAugment(RAW, (0.5, 1.5), (-0.2, 0.2), clip=False), data)
    slopes = []
    for before, after in zip(data[RAW], out[RAW], strict=True):
        slope, intercept = np.polyfit(before.ravel(), after.ravel(), 1)
        assert np.allclose(after, slope * before + intercept, atol=1e-5)
        slopes.append(slope)
    assert len(set(np.round(slopes, 4))) == CHANNELS  # drawn per channel
    clipped = run(ChannelIntensityAugment(RAW, (2.0, 3.0), (0.3, 0.5)), data)[RAW]
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert np.array_equal(out[TARGET], run(ShuffleChannels(RAW, p=0.0), data)[TARGET])


def test_targets_in_raw_units_take_raw_s_intensity_map():
    data = channel_data("random")
    out = run(ChannelIntensityAugment(RAW, (0.5, 1.5), (-0.2, 0.2), clip=False,
                                      follow=[TARGET]), data)  # fmt: skip
    inside = tuple(slice(o // v, (o + s) // v) for o, s, v in
                   zip(OUTPUT.offset, OUTPUT.shape, VOXEL_SIZE, strict=True))  # fmt: skip
    for c in range(CHANNELS):
        before, after = data[RAW][c], out[RAW][c]
        slope, intercept = np.polyfit(before.ravel(), after.ravel(), 1)
        target = data[TARGET][(c, *inside)]
        np.testing.assert_allclose(out[TARGET][c], slope * target + intercept, atol=1e-4)


def test_blur_keeps_constant_channels_and_smooths_noise():
    data = channel_data("random")
    data[RAW][0] = 0.5
    out = run(ChannelBlur(RAW, (1.0, 2.0)), data)[RAW]
    assert np.allclose(out[0], 0.5, atol=1e-6)
    assert np.all(out[1:].std(axis=(1, 2, 3)) < 0.7 * data[RAW][1:].std(axis=(1, 2, 3)))
    assert np.allclose(out.mean(axis=(1, 2, 3)), data[RAW].mean(axis=(1, 2, 3)), atol=0.02)


def test_defects_drop_sections_or_lower_their_contrast_in_every_channel():
    data = channel_data("random")
    missing = run(ChannelDefects(RAW, prob_missing=1.0, prob_low_contrast=0.0), data)[RAW]
    assert np.all(missing == 0)
    low = run(ChannelDefects(RAW, 0.0, 1.0, contrast_scale=0.25), data)[RAW]
    for z in range(SHAPE[0]):
        before, after = data[RAW][:, z], low[:, z]
        assert np.isclose(after.mean(), before.mean(), atol=1e-5)
        assert np.isclose(after.std(), 0.25 * before.std(), rtol=1e-4)


def test_the_config_builds_the_nodes_in_order_and_refuses_bad_ranges():
    config = ChannelAugmentConfig(zero_probability=0.5, duplicate_probability=0.5)
    kinds = [type(n) for n in channel_augmentations(config, RAW, [TARGET], [MASK])]
    assert kinds == [ShuffleChannels, DuplicateChannels, ChannelIntensityAugment, ChannelBlur,
                     ChannelDefects, ZeroChannels]  # fmt: skip
    off = ChannelAugmentConfig(shuffle=False, zero_probability=0, duplicate_probability=0,
                               intensity_probability=0, blur_probability=0,
                               defect_probability=0)  # fmt: skip
    assert channel_augmentations(off, RAW) == []
    with pytest.raises(Exception, match="blur_sigma"):
        validate(ChannelAugmentConfig, {"blur_sigma": [2.0, 1.0]}, "train_config.toml")
