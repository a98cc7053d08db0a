"""Synthetic PRISM-like barcoded light microscopy made from real neuron morphology.

PRISM (E11 Bio) images expanded tissue in which every neuron carries a combinatorial
protein barcode: each of C channels is either expressed by a neuron or not. No such data
can be downloaded here, so this module renders it from real dense neuron labels (by
default the NeuroProof FIB-SEM ground truth): every neuron gets a random barcode (k of C
channels on), a per-channel expression level (some neurons express weakly, some share a
barcode with another), and each channel is drawn as the neurons that express it,
multiplied by a smooth random field (patchy expression), blurred by an anisotropic
point-spread function, with background, channel-wise gain and Poisson shot noise.

It writes the arrays PRISM's training uses (see `write_container` for the layout): raw,
labels, average_barcode, expression, unlabelled, border_mask; the true barcodes go to the
container's attributes and to MongoDB (collection `neurons`, one document per neuron).
Optionally (`synapses > 0`) two punctate synapse marker channels are appended after the
barcode channels, and each synapse's pre- and postsynaptic side is stored in the
`synapses` collection in connecto's synapse schema (`connecto.db.synapse_import`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc
from pydantic import Field, model_validator
from pymongo import ASCENDING, IndexModel, ReplaceOne
from pymongo.database import Database
from scipy import ndimage
from tqdm import tqdm

from connecto import ConnectoError
from connecto.config import ConfigModel
from connecto.data.ingest import write_volume_attrs
from connecto.resources import project_root

__all__ = [
    "BarcodeParameters",
    "BarcodeReport",
    "BarcodeTable",
    "NEURONS",
    "average_barcode",
    "object_means",
    "border_mask",
    "default_labels_path",
    "draw_barcodes",
    "expression_targets",
    "load_labels",
    "parse_crop",
    "place_synapses",
    "render_channels",
    "render_markers",
    "resample_labels",
    "synthesize_barcodes",
    "synthesize_barcodes_from_file",
    "synapse_documents",
    "SyntheticSynapseSite",
]

NEURONS = "neurons"
DEFAULT_LABELS_DATASET = "volumes/labels/neuron_ids"
NEUROPROOF = Path("shared") / "data" / "neuroproof_medulla_ts2" / "neuroproof_ts2_raw_gt.h5"
MARKER_NAMES = ("synapsin", "psd95")  # presynaptic, postsynaptic marker channel names
CHANNEL_CHUNK = (32, 64, 64)
ARRAYS = ("raw", "labels", "average_barcode", "expression", "unlabelled", "border_mask")


class BarcodeParameters(ConfigModel):
    """How barcodes are drawn and rendered. Intensities are fractions of the uint8 full
    scale (1.0 = 255) before gain; lengths are in nm (world units), so a parameter set
    means the same at every voxel size."""

    seed: int = Field(0, description="random seed: same labels + parameters = same output")
    channels: int = Field(18, ge=1, le=255, description="barcode channels C")
    min_channels_on: int = Field(3, ge=1, description="fewest channels a neuron expresses (k)")
    max_channels_on: int = Field(6, ge=1, description="most channels a neuron expresses (k)")
    shared_fraction: float = Field(
        0.05, ge=0, le=1,
        description="fraction of neurons that copy another neuron's barcode; all others "
        "get distinct barcodes",
    )  # fmt: skip
    weak_fraction: float = Field(
        0.1, ge=0, le=1, description="fraction of neurons expressing weakly (x weak_scale)"
    )
    weak_scale: float = Field(0.3, gt=0, le=1, description="expression factor of weak neurons")
    expression_range: tuple[float, float] = Field(
        (0.5, 1.0),
        description="per-neuron per-channel expression level of an 'on' channel, uniform in "
        "[low, high] (0 for 'off' channels)",
    )
    brightness: float = Field(
        0.7, gt=0, description="intensity of expression level 1 (fraction of full scale)"
    )
    patchiness: float = Field(
        0.4, ge=0,
        description="standard deviation of the log of a smooth random field multiplied "
        "into each channel (0 = uniform expression inside a neuron)",
    )  # fmt: skip
    patch_size_nm: float = Field(400.0, gt=0, description="correlation length of the field")
    psf_sigma_nm: tuple[float, float, float] = Field(
        (40.0, 20.0, 20.0),
        description="gaussian point-spread sigma per axis (z, y, x); 0 = no blur on that axis",
    )
    background: float = Field(0.05, ge=0, description="mean background level per channel")
    background_spread: float = Field(
        0.02, ge=0, description="channel-to-channel spread of the background (uniform +-)"
    )
    gain_range: tuple[float, float] = Field(
        (0.7, 1.3), description="channel-wise gain, uniform in [low, high] (1, 1 = off)"
    )
    photons: float = Field(
        100.0, ge=0,
        description="photons at intensity 1 (shot noise: Poisson; fewer = noisier; 0 = no "
        "noise)",
    )  # fmt: skip
    border_width: int = Field(
        1, ge=0, description="voxels on each side of an object border left out of border_mask"
    )
    synapses: int = Field(
        0, ge=0,
        description="synapses to place at contacts between touching neurons; > 0 appends a "
        "presynaptic (synapsin-like) and a postsynaptic (PSD-95-like) marker channel",
    )  # fmt: skip
    synapse_min_distance_nm: float = Field(
        150.0, ge=0, description="least distance between two synapses' contact points"
    )
    marker_offset_nm: float = Field(
        30.0, ge=0, description="how far each punctum sits from the contact into its neuron"
    )
    marker_sigma_nm: tuple[float, float, float] = Field(
        (40.0, 25.0, 25.0), description="gaussian size of a marker punctum per axis (z, y, x)"
    )
    marker_brightness: float = Field(0.8, gt=0, description="peak intensity of a punctum")

    @model_validator(mode="after")
    def _consistent(self) -> BarcodeParameters:
        if self.min_channels_on > self.max_channels_on:
            raise ValueError(
                f"min_channels_on = {self.min_channels_on} is above max_channels_on = "
                f"{self.max_channels_on}"
            )
        if self.max_channels_on > self.channels:
            raise ValueError(
                f"max_channels_on = {self.max_channels_on} is above channels = {self.channels}"
            )
        for name in ("expression_range", "gain_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} = {[low, high]}: expected 0 <= low <= high")
        if any(s < 0 for s in (*self.psf_sigma_nm, *self.marker_sigma_nm)):
            raise ValueError("psf_sigma_nm and marker_sigma_nm must not be negative")
        return self


@dataclass(frozen=True)
class BarcodeTable:
    """The truth per neuron, rows in `neuron_ids` order."""

    neuron_ids: np.ndarray  # (N,) uint64
    barcodes: np.ndarray  # (N, C) uint8 0/1
    expression_levels: np.ndarray  # (N, C) float32, 0 where the barcode is off
    shares_with: np.ndarray  # (N,) int64: the neuron whose barcode was copied, or -1
    weak: np.ndarray  # (N,) bool


@dataclass(frozen=True)
class BarcodeReport:
    container: Path
    shape: tuple[int, int, int]
    voxel_size: tuple[int, int, int]
    channels: int
    neurons: int
    shared: int
    weak: int
    synapses: int
    database: str | None
    arrays: tuple[str, ...] = field(default=ARRAYS)


# ---------------------------------------------------------------- inputs


def default_labels_path() -> Path:
    """The NeuroProof truth in the shared data folder next to the project checkout (else
    relative to the working directory)."""
    root = project_root()
    for base in ([root.parent] if root else []) + [Path.cwd().parent, Path.cwd()]:
        if (base / NEUROPROOF).is_file():
            return base / NEUROPROOF
    return (root.parent if root else Path.cwd().parent) / NEUROPROOF


def parse_crop(text: str) -> tuple[slice, slice, slice]:
    """`z0:z1,y0:y1,x0:x1` (voxels of the source labels; an empty bound = the edge) as
    slices; a ConnectoError naming the option otherwise."""
    parts = text.split(",")
    pattern = re.compile(r"\s*(\d*)\s*:\s*(\d*)\s*")
    matches = [pattern.fullmatch(p) for p in parts]
    if len(parts) != 3 or not all(matches):
        raise ConnectoError(
            f"--crop {text!r}: expected three ranges z0:z1,y0:y1,x0:x1 in voxels, "
            "e.g. 0:64,0:128,0:128"
        )
    slices = []
    for m in matches:
        start = int(m.group(1)) if m.group(1) else None  # type: ignore[union-attr]
        stop = int(m.group(2)) if m.group(2) else None  # type: ignore[union-attr]
        if start is not None and stop is not None and stop <= start:
            raise ConnectoError(f"--crop {text!r}: range {m.group(0).strip()} is empty")  # type: ignore[union-attr]
        slices.append(slice(start, stop))
    return tuple(slices)  # type: ignore[return-value]


def load_labels(
    path: Path, dataset: str = DEFAULT_LABELS_DATASET, crop: Sequence[slice] | None = None
) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:
    """Labels (uint64), voxel size and offset (nm) of `dataset` in an HDF5 file or a
    zarr/N5 container, cropped to `crop` (voxel slices)."""
    path = Path(path)
    if not path.exists():
        raise ConnectoError(
            f"--labels {path}: no such file (the default is the NeuroProof truth in "
            "../shared/data; give PATH[:DATASET])"
        )
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        import h5py

        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise ConnectoError(f"--labels {path}: no dataset {dataset!r}")
            data = f[dataset]
            attrs = dict(data.attrs)
            voxel_size = attrs.get("resolution", attrs.get("voxel_size", (1, 1, 1)))
            offset = attrs.get("offset", (0, 0, 0))
            crop = _checked_crop(crop, data.shape, path)
            labels = data[crop]
    else:
        try:
            data = zarr.open(str(path), mode="r")[dataset]
        except KeyError:
            raise ConnectoError(f"--labels {path}: no dataset {dataset!r}") from None
        attrs = dict(data.attrs)
        voxel_size = attrs.get("voxel_size", attrs.get("resolution", (1, 1, 1)))
        offset = attrs.get("offset", (0, 0, 0))
        crop = _checked_crop(crop, data.shape, path)
        labels = data[crop]
    voxel = tuple(int(round(v)) for v in voxel_size)
    start = tuple(s.start or 0 for s in crop)
    origin = tuple(int(round(o)) + b * v for o, b, v in zip(offset, start, voxel, strict=True))
    return labels.astype(np.uint64), voxel, origin  # type: ignore[return-value]


def _checked_crop(
    crop: Sequence[slice] | None, shape: Sequence[int], path: Path
) -> tuple[slice, ...]:
    if len(shape) != 3:
        raise ConnectoError(f"--labels {path}: expected 3D labels, got shape {list(shape)}")
    if crop is None:
        return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    out = []
    for axis, (s, size) in enumerate(zip(crop, shape, strict=True)):
        start, stop = s.start or 0, size if s.stop is None else s.stop
        if stop > size or start >= size:
            raise ConnectoError(
                f"--crop: axis {'zyx'[axis]} range {start}:{stop} leaves the labels "
                f"(shape {list(shape)})"
            )
        out.append(slice(start, stop))
    return tuple(out)


def resample_labels(
    labels: np.ndarray, voxel_size: Sequence[int], offset: Sequence[int],
    factors: Sequence[int],
) -> tuple[np.ndarray, tuple[int, int, int], tuple[int, int, int]]:  # fmt: skip
    """Labels on a grid `factors` (z, y, x) times coarser: each coarse voxel takes the label
    at its centre (nearest neighbour; averaging labels means nothing). (4, 1, 1) turns
    10 nm isotropic into 40 x 10 x 10 nm, as anisotropic light microscopy."""
    factors = tuple(int(f) for f in factors)
    if len(factors) != 3 or any(f < 1 for f in factors):
        raise ConnectoError(f"--downsample {list(factors)}: expected three whole factors >= 1")
    if any(s < f for s, f in zip(labels.shape, factors, strict=True)):
        raise ConnectoError(
            f"--downsample {list(factors)}: larger than the labels (shape {list(labels.shape)})"
        )
    picked = labels[tuple(slice(f // 2, None, f) for f in factors)]
    shape = tuple(s // f for s, f in zip(labels.shape, factors, strict=True))
    picked = np.ascontiguousarray(picked[tuple(slice(0, s) for s in shape)])
    size = tuple(int(v) * f for v, f in zip(voxel_size, factors, strict=True))
    # the coarse grid starts where the crop starts: snap the offset onto it
    origin = tuple(int(o) // s * s for o, s in zip(offset, size, strict=True))
    return picked, size, origin  # type: ignore[return-value]


# ---------------------------------------------------------------- barcodes


def draw_barcodes(neuron_ids: np.ndarray, params: BarcodeParameters) -> BarcodeTable:
    """A barcode, expression levels, sharing and weakness for each neuron (seeded).
    Neurons that do not share get pairwise distinct barcodes where the C-choose-k
    combinations allow it."""
    rng = np.random.default_rng([params.seed, 1])
    n, c = len(neuron_ids), params.channels
    n_shared = min(int(round(params.shared_fraction * n)), n - 1) if n > 1 else 0
    copies = np.sort(rng.choice(n, size=n_shared, replace=False))
    originals = np.setdiff1d(np.arange(n), copies)
    barcodes = np.zeros((n, c), dtype=np.uint8)
    seen: set[bytes] = set()
    for i in originals:
        for _ in range(100):  # distinct unless the combinations run out
            k = int(rng.integers(params.min_channels_on, params.max_channels_on + 1))
            row = np.zeros(c, dtype=np.uint8)
            row[rng.choice(c, size=k, replace=False)] = 1
            if row.tobytes() not in seen:
                break
        seen.add(row.tobytes())
        barcodes[i] = row
    shares_with = np.full(n, -1, dtype=np.int64)
    for i in copies:
        j = int(rng.choice(originals))
        barcodes[i] = barcodes[j]
        shares_with[i] = int(neuron_ids[j])
    low, high = params.expression_range
    levels = rng.uniform(low, high, size=(n, c)).astype(np.float32) * barcodes
    weak = np.zeros(n, dtype=bool)
    weak[rng.choice(n, size=int(round(params.weak_fraction * n)), replace=False)] = True
    levels[weak] *= params.weak_scale
    return BarcodeTable(
        np.asarray(neuron_ids, dtype=np.uint64), barcodes, levels.astype(np.float32),
        shares_with, weak,
    )  # fmt: skip


# ---------------------------------------------------------------- rendering


def _smooth_field(
    shape: Sequence[int], voxel_size: Sequence[int], length_nm: float, rng: np.random.Generator
) -> np.ndarray:
    """A smooth gaussian random field with zero mean and unit variance, correlated over
    about `length_nm`: white noise on a coarse grid, linearly interpolated one axis at a
    time (cheap at any size)."""
    step = [max(length_nm / v, 1.0) for v in voxel_size]
    coarse_shape = [int(np.ceil(s / st)) + 2 for s, st in zip(shape, step, strict=True)]
    field_ = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    for axis, (size, st) in enumerate(zip(shape, step, strict=True)):
        position = np.arange(size) / st + rng.uniform(0, 1)  # random phase of the grid
        below = np.floor(position).astype(np.int64)
        weight = (position - below).reshape([-1 if a == axis else 1 for a in range(3)])
        field_ = (
            np.take(field_, below, axis=axis) * (1 - weight)
            + np.take(field_, below + 1, axis=axis) * weight
        )
    return ((field_ - field_.mean()) / (field_.std() or 1.0)).astype(np.float32)


def _sigma_voxels(sigma_nm: Sequence[float], voxel_size: Sequence[int]) -> tuple[float, ...]:
    return tuple(s / v for s, v in zip(sigma_nm, voxel_size, strict=True))


def _image(
    signal: np.ndarray, background: float, gain: float, params: BarcodeParameters,
    voxel_size: Sequence[int], rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """One channel from its expression signal: blur, background, gain, shot noise, uint8."""
    sigma = _sigma_voxels(params.psf_sigma_nm, voxel_size)
    if any(s > 0 for s in sigma):
        signal = ndimage.gaussian_filter(signal, sigma, mode="nearest", truncate=3.0)
    value = gain * (signal + background)
    if params.photons > 0:
        value = rng.poisson(np.maximum(value, 0) * params.photons) / params.photons
    return np.clip(np.round(value * params.brightness * 255), 0, 255).astype(np.uint8)


def render_channels(
    label_index: np.ndarray, table: BarcodeTable, voxel_size: Sequence[int],
    params: BarcodeParameters, progress: bool = False,
) -> tuple[np.ndarray, dict[str, list[float]]]:  # fmt: skip
    """The C barcode channels (uint8, (C, z, y, x)) of a volume whose voxels hold row
    indices into `table` plus one (0 = background); also the drawn per-channel gains and
    backgrounds."""
    rng = np.random.default_rng([params.seed, 2])
    c = params.channels
    gains = rng.uniform(*params.gain_range, size=c)
    backgrounds = np.maximum(
        params.background + rng.uniform(-1, 1, size=c) * params.background_spread, 0
    )
    raw = np.empty((c, *label_index.shape), dtype=np.uint8)
    with tqdm(total=c, desc="render channels", unit="channel", disable=not progress) as bar:
        for channel in range(c):
            level = np.concatenate([[0.0], table.expression_levels[:, channel]]).astype(np.float32)
            signal = level[label_index]
            if params.patchiness > 0:
                field_ = _smooth_field(label_index.shape, voxel_size, params.patch_size_nm, rng)
                signal *= np.exp(params.patchiness * field_ - params.patchiness**2 / 2)
            raw[channel] = _image(
                signal, backgrounds[channel], gains[channel], params, voxel_size, rng
            )
            bar.update()
    drawn = {"gain": [float(g) for g in gains], "background": [float(b) for b in backgrounds]}
    return raw, drawn


def object_means(raw: np.ndarray, label_index: np.ndarray, objects: int) -> np.ndarray:
    """(C, objects + 1): the mean of raw/255 per channel over the voxels of each object
    (`label_index` holds object row + 1, 0 = background, whose mean is set to 0)."""
    index = label_index.ravel()
    counts = np.maximum(np.bincount(index, minlength=objects + 1), 1).astype(np.float64)
    means = np.zeros((raw.shape[0], objects + 1), dtype=np.float32)
    for channel in range(raw.shape[0]):
        sums = np.bincount(index, weights=raw[channel].ravel(), minlength=objects + 1)
        means[channel] = sums / counts / 255.0
    means[:, 0] = 0.0
    return means


def average_barcode(raw: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per object, the mean of raw/255 over its voxels per channel (float32, (C, z, y, x));
    0 in background: PRISM's enhancement target."""
    ids, index = np.unique(labels, return_inverse=True)
    index = index.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
    means = object_means(raw, index, int(index.max()))
    return means[:, index]


def expression_targets(label_index: np.ndarray, barcodes: np.ndarray) -> np.ndarray:
    """1 where a voxel's neuron (row index + 1 into `barcodes`; 0 background) has channel c
    on (uint8, (C, z, y, x))."""
    padded = np.concatenate([np.zeros((1, barcodes.shape[1]), np.uint8), barcodes])
    return np.ascontiguousarray(padded.T[:, label_index])


def border_mask(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """1 inside objects and background, 0 within `width` voxels of a label change (both
    sides, along every axis): where the expression loss counts."""
    boundary = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        before = [slice(None)] * labels.ndim
        after = [slice(None)] * labels.ndim
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        change = labels[tuple(before)] != labels[tuple(after)]
        boundary[tuple(before)] |= change
        boundary[tuple(after)] |= change
    if width > 1:
        boundary = ndimage.binary_dilation(boundary, iterations=width - 1)
    if width == 0:
        boundary[:] = False
    return (~boundary).astype(np.uint8)


# ---------------------------------------------------------------- synapse markers


@dataclass(frozen=True)
class SyntheticSynapseSite:
    """One synapse: the two contact voxels and the punctum voxels of each side."""

    pre_neuron: int
    post_neuron: int
    pre_voxel: tuple[int, int, int]
    post_voxel: tuple[int, int, int]


def _contacts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face contacts between two different neurons: (first voxel, second voxel, axis)."""
    firsts, seconds, axes = [], [], []
    for axis in range(3):
        before = [slice(None)] * 3
        after = [slice(None)] * 3
        before[axis], after[axis] = slice(None, -1), slice(1, None)
        a, b = labels[tuple(before)], labels[tuple(after)]
        where = np.argwhere((a != b) & (a > 0) & (b > 0))
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        firsts.append(where)
        seconds.append(where + step)
        axes.append(np.full(len(where), axis))
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(axes)


def place_synapses(
    labels: np.ndarray, voxel_size: Sequence[int], params: BarcodeParameters
) -> list[SyntheticSynapseSite]:
    """Up to `params.synapses` synapses at random contacts between touching neurons, at
    least `synapse_min_distance_nm` apart; a random side is presynaptic. Each punctum sits
    `marker_offset_nm` into its neuron (less where the neuron is thinner)."""
    if params.synapses == 0:
        return []
    rng = np.random.default_rng([params.seed, 3])
    firsts, seconds, axes = _contacts(labels)
    if len(firsts) == 0:
        return []
    size = np.asarray(voxel_size, dtype=np.float64)
    # a bounded number of tries: a volume with too few contacts yields fewer synapses
    order = rng.permutation(len(firsts))[: 200 * params.synapses]
    chosen: list[int] = []
    centres = np.empty((0, 3))
    for i in order:
        centre = (firsts[i] + seconds[i]) / 2 * size
        if len(centres) and np.min(np.linalg.norm(centres - centre, axis=1)) < (
            params.synapse_min_distance_nm
        ):
            continue
        chosen.append(int(i))
        centres = np.vstack([centres, centre])
        if len(chosen) == params.synapses:
            break
    sites = []
    for i in chosen:
        axis = int(axes[i])
        steps = max(int(round(params.marker_offset_nm / size[axis])), 0)
        sides = [(firsts[i], -1), (seconds[i], 1)]
        if rng.random() < 0.5:
            sides.reverse()
        (pre_voxel, pre_dir), (post_voxel, post_dir) = sides
        pre = _walk_into(labels, pre_voxel, axis, pre_dir, steps)
        post = _walk_into(labels, post_voxel, axis, post_dir, steps)
        sites.append(
            SyntheticSynapseSite(
                int(labels[tuple(pre_voxel)]), int(labels[tuple(post_voxel)]), pre, post
            )
        )
    return sites


def _walk_into(
    labels: np.ndarray, start: np.ndarray, axis: int, direction: int, steps: int
) -> tuple[int, int, int]:
    """From a contact voxel, up to `steps` voxels away from the contact while staying in
    the same neuron."""
    label = labels[tuple(start)]
    voxel = start.copy()
    for _ in range(steps):
        nxt = voxel.copy()
        nxt[axis] += direction
        if not 0 <= nxt[axis] < labels.shape[axis] or labels[tuple(nxt)] != label:
            break
        voxel = nxt
    return tuple(int(v) for v in voxel)  # type: ignore[return-value]


def render_markers(
    shape: Sequence[int], sites: Sequence[SyntheticSynapseSite], voxel_size: Sequence[int],
    params: BarcodeParameters,
) -> np.ndarray:  # fmt: skip
    """The presynaptic and postsynaptic marker channels (uint8, (2, z, y, x)): a gaussian
    punctum per synapse side, then the same imaging as the barcode channels."""
    rng = np.random.default_rng([params.seed, 4])
    sigma = _sigma_voxels(params.marker_sigma_nm, voxel_size)
    peak = 1.0
    if any(s > 0 for s in sigma):  # the height of a blurred unit impulse, to scale to 1
        probe = np.zeros([2 * int(np.ceil(3 * s)) + 1 for s in sigma], np.float32)
        probe[tuple(p // 2 for p in probe.shape)] = 1
        peak = float(ndimage.gaussian_filter(probe, sigma, truncate=3.0).max())
    out = np.empty((2, *shape), dtype=np.uint8)
    gains = rng.uniform(*params.gain_range, size=2)
    for channel, attribute in enumerate(("pre_voxel", "post_voxel")):
        impulses = np.zeros(shape, dtype=np.float32)
        for site in sites:
            impulses[getattr(site, attribute)] += params.marker_brightness / peak
        if any(s > 0 for s in sigma):
            impulses = ndimage.gaussian_filter(impulses, sigma, mode="constant", truncate=3.0)
        out[channel] = _image(impulses, params.background, gains[channel], params, voxel_size, rng)
    return out


def _synapse_id(volume: str, index: int, side: str) -> int:
    """A stable 63-bit id per volume, synapse and side: reruns write the same ids and two
    volumes in one database do not collide."""
    digest = hashlib.blake2b(f"{volume}:{index}:{side}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def synapse_documents(
    sites: Sequence[SyntheticSynapseSite], voxel_size: Sequence[int], offset: Sequence[int],
    volume: str,
) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """Synapse documents (one per side: `prepost` pre on the presynaptic neuron at its
    punctum, post on the postsynaptic one; `partner_skeleton_id` names the other side,
    `synapse_site` pairs them) and skeleton documents for every neuron involved."""
    docs = []
    for index, site in enumerate(sites):
        for side, neuron, partner, voxel in (
            ("pre", site.pre_neuron, site.post_neuron, site.pre_voxel),
            ("post", site.post_neuron, site.pre_neuron, site.post_voxel),
        ):
            z, y, x = (float(o + v * s) for o, v, s in zip(offset, voxel, voxel_size, strict=True))
            docs.append({
                "synapse_id": _synapse_id(volume, index, side), "x": x, "y": y, "z": z,
                "skeleton_id": neuron, "prepost": side, "confidence": 1.0,
                "partner_skeleton_id": partner, "synapse_site": index, "volume": volume,
            })  # fmt: skip
    neurons = sorted({n for s in sites for n in (s.pre_neuron, s.post_neuron)})
    skeletons = [{"skeleton_id": n, "nt_known": None, "hemi_lineage_id": None} for n in neurons]
    return docs, skeletons


# ---------------------------------------------------------------- writing


def _write_array(
    root: zarr.hierarchy.Group, name: str, data: np.ndarray, voxel_size: Sequence[int],
    offset: Sequence[int],
) -> zarr.Array:  # fmt: skip
    return _write_per_object(root, name, data, None, voxel_size, offset)


def _write_per_object(
    root: zarr.hierarchy.Group, name: str, table: np.ndarray, label_index: np.ndarray | None,
    voxel_size: Sequence[int], offset: Sequence[int],
) -> zarr.Array:  # fmt: skip
    """`table` itself, or with `label_index` the channel array `table[:, label_index]`,
    written one chunk-row of sections at a time (a full-size float32 target would be
    gigabytes)."""
    if label_index is None:
        shape = table.shape
    else:
        shape = (table.shape[0], *label_index.shape)
    spatial = CHANNEL_CHUNK if len(shape) == 3 else (shape[0], *CHANNEL_CHUNK)
    chunks = tuple(min(c, s) for c, s in zip(spatial, shape, strict=True))
    array = root.create_dataset(
        name, shape=shape, chunks=chunks, dtype=table.dtype, overwrite=True,
        compressor=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
    )  # fmt: skip
    if label_index is None:
        array[...] = table
    else:
        for z in range(0, shape[1], CHANNEL_CHUNK[0]):
            array[:, z : z + CHANNEL_CHUNK[0]] = table[:, label_index[z : z + CHANNEL_CHUNK[0]]]
    write_volume_attrs(array, voxel_size, offset)
    if len(shape) == 4:  # a leading channel axis, as funlib.persistence names it
        array.attrs["axis_names"] = ["c^", "z", "y", "x"]
    return array


def _neuron_documents(table: BarcodeTable, sizes: np.ndarray, volume: str) -> list[dict]:
    return [
        {
            "neuron_id": int(table.neuron_ids[i]),
            "barcode": [int(b) for b in table.barcodes[i]],
            "expression_level": [round(float(v), 6) for v in table.expression_levels[i]],
            "size_voxels": int(sizes[i]),
            "volume": volume,
            "shares_barcode_with": None if table.shares_with[i] < 0 else int(table.shares_with[i]),
            "weak": bool(table.weak[i]),
        }
        for i in range(len(table.neuron_ids))
    ]


def _write_database(
    db: Database, neuron_docs: list[dict], synapse_docs: list[dict], skeleton_docs: list[dict],
    volume: str,
) -> None:  # fmt: skip
    """Neurons by (volume, neuron_id), replacing this volume's earlier ones; synapses through
    connecto's validated synapse writer, after removing this volume's earlier ones."""
    collection = db[NEURONS]
    collection.create_indexes(
        [IndexModel([("volume", ASCENDING), ("neuron_id", ASCENDING)], unique=True,
                    name="volume_neuron_id")]
    )  # fmt: skip
    collection.delete_many({"volume": volume})
    if neuron_docs:
        collection.bulk_write(
            [ReplaceOne({"volume": volume, "neuron_id": d["neuron_id"]}, d, upsert=True)
             for d in neuron_docs]
        )  # fmt: skip
    from connecto.db.schema import SYNAPSES
    from connecto.db.synapse_import import write_synapse_data

    if SYNAPSES in db.list_collection_names():
        db[SYNAPSES].delete_many({"volume": volume})
    if synapse_docs:
        write_synapse_data(db, synapse_docs, skeleton_docs, [], progress=False)


def _refuse_existing(out: Path, db: Database | None, volume: str) -> None:
    present = []
    if out.exists():
        try:
            root = zarr.open_group(str(out), mode="r")
            present = [name for name in ARRAYS if name in root]
        except Exception:  # not a zarr group: zarr will say so when writing
            present = []
    if present:
        raise ConnectoError(
            f"{out}: already holds {', '.join(present)}; use --overwrite to replace them"
        )
    if db is not None and db[NEURONS].find_one({"volume": volume}, {"_id": 1}) is not None:
        raise ConnectoError(
            f"database {db.name!r} already holds neurons of {volume}; use --overwrite to "
            "replace them"
        )


def synthesize_barcodes(
    labels: np.ndarray,
    voxel_size: Sequence[int],
    params: BarcodeParameters | None,
    out_path: Path,
    offset: Sequence[int] = (0, 0, 0),
    db: Database | None = None,
    overwrite: bool = False,
    progress: bool = False,
    source: dict[str, Any] | None = None,
) -> BarcodeReport:
    """Render barcoded channels for the dense `labels` (z, y, x; 0 = background) at
    `voxel_size`/`offset` (nm) and write the container `out_path` (raw, labels,
    average_barcode, expression, unlabelled, border_mask; attributes `barcode_parameters`,
    `barcodes`, and with synapses `marker_channels`); with `db`, one `neurons` document per
    neuron (and the synapses). An existing container or volume is refused unless
    `overwrite`, which replaces the arrays and this volume's documents. `source` describes
    where the labels came from (stored in the attributes)."""
    params = params or BarcodeParameters()
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ConnectoError(f"labels: expected a 3D (z, y, x) array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConnectoError(f"labels: expected integer ids, got {labels.dtype}")
    voxel_size = tuple(int(v) for v in voxel_size)
    offset = tuple(int(o) for o in offset)
    out = Path(out_path)
    volume = str(out.resolve())
    if not overwrite:
        _refuse_existing(out, db, volume)
    labels = labels.astype(np.uint64, copy=False)
    ids, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(labels.shape)
    has_background = len(ids) > 0 and ids[0] == 0
    neuron_ids = ids[1:] if has_background else ids
    neuron_sizes = sizes[1:] if has_background else sizes
    # row index into the table + 1, 0 for background
    label_index = inverse.astype(np.int64) + (0 if has_background else 1)
    if len(neuron_ids) == 0:
        raise ConnectoError("labels: no neurons (every voxel is 0)")

    table = draw_barcodes(neuron_ids, params)
    raw, drawn = render_channels(label_index, table, voxel_size, params, progress)
    sites = place_synapses(labels, voxel_size, params)
    channel_names = [f"barcode_{c}" for c in range(params.channels)]
    attrs: dict[str, Any] = {
        "barcode_parameters": params.model_dump(mode="json"),
        "barcodes": {str(int(n)): [int(b) for b in row] for n, row in
                     zip(table.neuron_ids, table.barcodes, strict=True)},
        "drawn_imaging": drawn,
        "source": source or {"labels": "in-memory array"},
        "barcode_channels": params.channels,
    }  # fmt: skip
    if params.synapses > 0:
        markers = render_markers(labels.shape, sites, voxel_size, params)
        attrs["marker_channels"] = {
            "pre": params.channels, "post": params.channels + 1,
            "names": list(MARKER_NAMES),
        }  # fmt: skip
        channel_names += list(MARKER_NAMES)
        attrs["synapses"] = len(sites)
        full_raw = np.concatenate([raw, markers])
    else:
        full_raw = raw
    attrs["channel_names"] = channel_names

    steps = ("labels", "raw", "average_barcode", "expression", "masks", "database")
    with tqdm(total=len(steps), desc="write", unit="step", disable=not progress) as bar:
        root = zarr.open_group(str(out), mode="a")
        _write_array(root, "labels", labels, voxel_size, offset)
        bar.update()
        _write_array(root, "raw", full_raw, voxel_size, offset)
        root["raw"].attrs["channel_names"] = channel_names
        bar.update()
        means = object_means(raw, label_index, len(neuron_ids))
        _write_per_object(root, "average_barcode", means, label_index, voxel_size, offset)
        bar.update()
        padded = np.concatenate([np.zeros((1, params.channels), np.uint8), table.barcodes])
        _write_per_object(root, "expression", padded.T.copy(), label_index, voxel_size, offset)
        bar.update()
        _write_array(root, "unlabelled", (labels > 0).astype(np.uint8), voxel_size, offset)
        _write_array(root, "border_mask", border_mask(labels, params.border_width),
                     voxel_size, offset)  # fmt: skip
        root.attrs.update(attrs)
        bar.update()
        if db is not None:
            synapse_docs, skeleton_docs = synapse_documents(sites, voxel_size, offset, volume)
            _write_database(
                db, _neuron_documents(table, neuron_sizes, volume), synapse_docs,
                skeleton_docs, volume,
            )  # fmt: skip
        bar.update()
    return BarcodeReport(
        out, tuple(labels.shape), voxel_size, params.channels,  # type: ignore[arg-type]
        len(neuron_ids), int((table.shares_with >= 0).sum()), int(table.weak.sum()),
        len(sites), db.name if db is not None else None,
    )  # fmt: skip


def synthesize_barcodes_from_file(
    out: Path,
    db: Database | None,
    params: BarcodeParameters | None = None,
    labels_path: Path | None = None,
    dataset: str = DEFAULT_LABELS_DATASET,
    crop: Sequence[slice] | None = None,
    downsample: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BarcodeReport:
    """`connecto data synthesize-barcodes`: labels from a file (default the NeuroProof
    truth), cropped (source voxels) and resampled by `downsample` (z, y, x factors), then
    `synthesize_barcodes`."""
    path = Path(labels_path) if labels_path is not None else default_labels_path()
    labels, voxel_size, offset = load_labels(path, dataset, crop)
    if downsample is not None and tuple(downsample) != (1, 1, 1):
        labels, voxel_size, offset = resample_labels(labels, voxel_size, offset, downsample)
    source = {
        "labels": str(path), "dataset": dataset,
        "crop": None if crop is None else [[s.start, s.stop] for s in crop],
        "downsample": list(downsample) if downsample is not None else [1, 1, 1],
    }  # fmt: skip
    return synthesize_barcodes(
        labels, voxel_size, params, out, offset, db, overwrite, progress, source
    )
