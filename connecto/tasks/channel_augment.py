"""Channel augmentations for multi-channel (barcoded) light microscopy, as gunpowder nodes.

PRISM's channel-agnostic networks see every channel of a barcoded volume alone; these
nodes make them robust to what differs between channels and volumes: channel order
(`ShuffleChannels`), missing or damaged channels (`ZeroChannels`, whole channels or random
shapes), the same signal in two channels (`DuplicateChannels`), per-channel gain and offset
(`ChannelIntensityAugment`), per-channel focus (`ChannelBlur`) and section defects
(`ChannelDefects`). `channel_augmentations` chains them from a `ChannelAugmentConfig`.

Arrays are unstacked, (C, z, y, x), channel axis first (before `gp.Stack`). Every node
draws its random choices from a generator seeded, in `prepare`, from numpy's global state,
which gunpowder reseeds from the request's `random_seed` before each node's turn: a request
with a seed gives the same augmentation every time.

Per-channel targets (`targets`: average barcode, expression) and per-channel loss weights
(`masks`) follow raw wherever the channel identity changes: shuffled and duplicated the
same way. Where raw loses its signal (`ZeroChannels`), the channel's weights are set to 0
there: a channel-agnostic network sees each channel alone and cannot know what a zeroed
region held, so asking for the true barcode there would teach it to invent signal, and
asking for zero would teach it to erase dim neurons. The truth there is unknown to the
network, which is what PRISM's `unlabelled` mask already means (no loss). Intensity, blur
and defects change raw only: the targets stay the truth the network must recover.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Annotated

import gunpowder as gp
import numpy as np
from pydantic import Field, model_validator
from scipy.ndimage import gaussian_filter

from connecto.config import ConfigModel

Probability = Annotated[float, Field(ge=0, le=1)]
SHAPES = ("ellipsoid", "box", "points")


class _ChannelNode(gp.BatchFilter):
    """A node changing `raw` (and, by channel, `targets` and `masks`) with probability
    `p`; subclasses implement `augment(rng, batch)`."""

    def __init__(
        self, raw: gp.ArrayKey, targets: Sequence[gp.ArrayKey] = (),
        masks: Sequence[gp.ArrayKey] = (), p: float = 1.0,
    ) -> None:  # fmt: skip
        self.raw, self.targets, self.masks, self.p = raw, tuple(targets), tuple(masks), p
        self._seed = 0

    def setup(self) -> None:
        for key in (self.raw, *self.targets, *self.masks):
            if key in self.spec:
                self.updates(key, self.spec[key].copy())

    def skip_node(self, request: gp.BatchRequest) -> bool:
        return random.random() > self.p  # `random` is seeded by gunpowder, as numpy is

    def prepare(self, request: gp.BatchRequest) -> None:
        # drawn here: gunpowder seeded numpy for this node and request just before
        self._seed = int(np.random.randint(0, 2**32 - 1, dtype=np.int64))

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> None:
        self.augment(np.random.default_rng(self._seed), batch)

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        raise NotImplementedError

    def _channel_arrays(self, batch: gp.Batch) -> list[gp.Array]:
        return [batch[k] for k in (self.raw, *self.targets, *self.masks) if k in batch]


class ShuffleChannels(_ChannelNode):
    """One random permutation of the channels of raw, targets and masks alike."""

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        order = rng.permutation(batch[self.raw].data.shape[0])
        for array in self._channel_arrays(batch):
            array.data = array.data[order]


class DuplicateChannels(_ChannelNode):
    """Copies of channels: with `num_channels`, raw (and targets, masks) grow to that many
    channels by appending random existing ones (PRISM's channel expansion, which also lets
    volumes with fewer channels share a batch); otherwise 1..`max_channels` random channels
    are overwritten by copies of other random channels (the count stays)."""

    def __init__(
        self, raw: gp.ArrayKey, targets: Sequence[gp.ArrayKey] = (),
        masks: Sequence[gp.ArrayKey] = (), p: float = 1.0, max_channels: int = 1,
        num_channels: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(raw, targets, masks, p)
        self.max_channels, self.num_channels = max_channels, num_channels

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        channels = batch[self.raw].data.shape[0]
        if self.num_channels is not None:
            if self.num_channels < channels:
                raise ValueError(
                    f"DuplicateChannels: num_channels {self.num_channels} is less than the "
                    f"{channels} channels of the data"
                )
            source = np.concatenate(
                [np.arange(channels), rng.choice(channels, self.num_channels - channels)]
            )
        else:
            if channels < 2:
                return
            count = int(rng.integers(1, min(self.max_channels, channels - 1) + 1))
            source = np.arange(channels)
            replaced = rng.choice(channels, count, replace=False)
            keep = np.setdiff1d(np.arange(channels), replaced)
            source[replaced] = rng.choice(keep, count)
        for array in self._channel_arrays(batch):
            array.data = array.data[source]


class ChannelIntensityAugment(_ChannelNode):
    """Per channel: `mean + (value - mean) * scale + shift`, scale and shift drawn per
    channel (gunpowder's IntensityAugment, one draw per channel); raw in [0, 1], clipped
    back into it with `clip`. Arrays in `follow` (per-channel targets in raw's units, such
    as an object's average of raw) take the same map: a network that sees one channel
    cannot tell an augmented gain from a real one, so the target must carry it too."""

    def __init__(
        self, raw: gp.ArrayKey, scale: tuple[float, float] = (0.8, 1.2),
        shift: tuple[float, float] = (-0.1, 0.1), clip: bool = True, p: float = 1.0,
        follow: Sequence[gp.ArrayKey] = (),
    ) -> None:  # fmt: skip
        super().__init__(raw, p=p)
        self.scale, self.shift, self.clip = scale, shift, clip
        self.follow = tuple(follow)

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        keys = (self.raw, *(key for key in self.follow if key in batch))
        arrays = [batch[key].data.astype(np.float32, copy=True) for key in keys]
        for c in range(arrays[0].shape[0]):
            mean = arrays[0][c].mean()
            scale, shift = rng.uniform(*self.scale), rng.uniform(*self.shift)
            for data in arrays:
                data[c] = mean + (data[c] - mean) * scale + shift
        for key, data in zip(keys, arrays, strict=True):
            batch[key].data = np.clip(data, 0, 1) if self.clip else data


class ChannelBlur(_ChannelNode):
    """An in-plane gaussian blur per channel, sigma (voxels) drawn per channel from
    `sigma`: channels of one volume are imaged with different focus."""

    def __init__(
        self, raw: gp.ArrayKey, sigma: tuple[float, float] = (0.5, 1.5), p: float = 1.0
    ) -> None:  # fmt: skip
        super().__init__(raw, p=p)
        self.sigma = sigma

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        data = batch[self.raw].data.astype(np.float32, copy=True)
        for c in range(data.shape[0]):
            s = rng.uniform(*self.sigma)
            data[c] = gaussian_filter(data[c], sigma=(0, s, s), mode="nearest")
        batch[self.raw].data = data


class ChannelDefects(_ChannelNode):
    """Section defects of raw, in all channels at once as in a real acquisition: each
    z-section is missing (zero) with `prob_missing` or low in contrast (values pulled to
    the section mean by `contrast_scale`) with `prob_low_contrast`."""

    def __init__(
        self, raw: gp.ArrayKey, prob_missing: float = 0.05, prob_low_contrast: float = 0.05,
        contrast_scale: float = 0.1, p: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__(raw, p=p)
        self.prob_missing, self.prob_low = prob_missing, prob_low_contrast
        self.contrast_scale = contrast_scale

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        data = batch[self.raw].data.astype(np.float32, copy=True)
        draws = rng.random(data.shape[1])
        for z, draw in enumerate(draws):
            if draw < self.prob_missing:
                data[:, z] = 0
            elif draw < self.prob_missing + self.prob_low:
                section = data[:, z]
                mean = section.mean()
                data[:, z] = mean + (section - mean) * self.contrast_scale
        batch[self.raw].data = data


def random_shape(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """A random region (bool, `shape`): a box, an ellipsoid or a cloud of small balls."""
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    if kind == "box":
        region = np.zeros(shape, dtype=bool)
        bounds = [(int(rng.integers(0, max(s // 3, 1))), int(rng.integers(2 * s // 3, s + 1)))
                  for s in shape]  # fmt: skip
        region[tuple(slice(b, e) for b, e in bounds)] = True
        return region
    if kind == "ellipsoid":
        centre = [rng.uniform(s / 4, 3 * s / 4) for s in shape]
        radii = [rng.uniform(max(s / 6, 1), max(s / 3, 1.5)) for s in shape]
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1
    region = np.zeros(shape, dtype=bool)
    for _ in range(int(rng.integers(5, 30))):
        centre = [rng.uniform(0, s) for s in shape]
        radius = rng.uniform(1, max(min(shape) / 6, 1.5))
        region |= sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2
    return region


class ZeroChannels(_ChannelNode):
    """1..`max_channels` random channels of raw lose their signal (set to `value`): whole
    channels, or with `shape_probability` a random shape (box, ellipsoid, balls). The same
    voxels of those channels get 0 in `masks` (no loss where the signal is gone, see the
    module docstring), and 0 in `targets` for a task that wants "no signal" learnt there.
    Masks and targets may cover a smaller ROI than raw (the network's output) on the same
    voxel grid."""

    def __init__(
        self, raw: gp.ArrayKey, targets: Sequence[gp.ArrayKey] = (),
        masks: Sequence[gp.ArrayKey] = (), p: float = 1.0, max_channels: int = 1,
        shape_probability: float = 0.5, value: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__(raw, targets, masks, p)
        self.max_channels, self.shape_probability, self.value = (
            max_channels, shape_probability, value,
        )  # fmt: skip

    def augment(self, rng: np.random.Generator, batch: gp.Batch) -> None:
        raw = batch[self.raw]
        channels, *spatial = raw.data.shape
        count = int(rng.integers(1, min(self.max_channels, channels) + 1))
        chosen = rng.choice(channels, count, replace=False)
        if rng.random() < self.shape_probability:
            region = random_shape(rng, spatial)
        else:
            region = np.ones(spatial, dtype=bool)
        data = raw.data.copy()
        for c in chosen:
            data[c][region] = self.value
        raw.data = data
        voxel_size = raw.spec.voxel_size
        for key in (*self.targets, *self.masks):
            if key not in batch:
                continue
            array = batch[key]
            inside = (array.spec.roi - raw.spec.roi.offset) / voxel_size
            part = region[inside.to_slices()]
            values = array.data.copy()
            for c in chosen:
                values[c][part] = 0
            array.data = values


class ChannelAugmentConfig(ConfigModel):
    """Which channel augmentations a task's pipeline runs, and how strongly (the
    `[channel_augment]` table of a train config); probabilities are per batch."""

    shuffle: bool = True
    zero_probability: Probability = 0.3
    zero_max_channels: Annotated[int, Field(ge=1)] = 3
    zero_shape_probability: Probability = 0.5
    duplicate_probability: Probability = 0.1
    duplicate_max_channels: Annotated[int, Field(ge=1)] = 2
    intensity_probability: Probability = 0.5
    intensity_scale: tuple[float, float] = (0.8, 1.2)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    blur_probability: Probability = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    defect_probability: Probability = 0.2
    defect_prob_missing: Probability = 0.05
    defect_prob_low_contrast: Probability = 0.05
    defect_contrast_scale: Annotated[float, Field(ge=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _ranges(self) -> ChannelAugmentConfig:
        for key in ("intensity_scale", "intensity_shift", "blur_sigma"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key} = [{low}, {high}]: expected [low, high]")
        if self.blur_sigma[0] < 0 or self.intensity_scale[0] < 0:
            raise ValueError("blur_sigma and intensity_scale must not be negative")
        return self


def channel_augmentations(
    config: ChannelAugmentConfig, raw: gp.ArrayKey, targets: Sequence[gp.ArrayKey] = (),
    masks: Sequence[gp.ArrayKey] = (), intensity_targets: Sequence[gp.ArrayKey] = (),
) -> list[gp.BatchFilter]:  # fmt: skip
    """The nodes `config` asks for, in the order they make sense: channel identity first
    (shuffle, duplicate), then raw's appearance (intensity, blur, defects), and signal loss
    last so that nothing after it puts signal back into a zeroed region. `intensity_targets`
    take raw's channel-wise intensity map (targets in raw's units)."""
    nodes: list[gp.BatchFilter] = []
    if config.shuffle:
        nodes.append(ShuffleChannels(raw, targets, masks))
    if config.duplicate_probability:
        nodes.append(DuplicateChannels(raw, targets, masks, config.duplicate_probability,
                                       max_channels=config.duplicate_max_channels))  # fmt: skip
    if config.intensity_probability:
        nodes.append(ChannelIntensityAugment(raw, config.intensity_scale, config.intensity_shift,
                                             p=config.intensity_probability,
                                             follow=intensity_targets))  # fmt: skip
    if config.blur_probability:
        nodes.append(ChannelBlur(raw, config.blur_sigma, config.blur_probability))
    if config.defect_probability:
        nodes.append(ChannelDefects(
            raw, config.defect_prob_missing, config.defect_prob_low_contrast,
            config.defect_contrast_scale, config.defect_probability,
        ))  # fmt: skip
    if config.zero_probability:
        nodes.append(ZeroChannels(
            raw, masks=masks, p=config.zero_probability, max_channels=config.zero_max_channels,
            shape_probability=config.zero_shape_probability,
        ))  # fmt: skip
    return nodes
