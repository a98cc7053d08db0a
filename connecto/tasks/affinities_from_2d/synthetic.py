"""Synthetic training data for the 2D->3D network (Thiyagarajan et al. 2024): random 3D
neurite label volumes, and from them the stacked per-section 2D predictions a 2D network
would make, so the 3D network learns to connect sections without annotated 3D data.

Labels: random smooth curves (neurite axes) in physical space, each voxel taking the
label of its nearest curve (nm, so anisotropic voxels give the same shapes), then a
smooth random warp so the boundaries are not flat Voronoi faces.

Simulated 2D predictions: every section on its own, a perturbed copy of its labels
(random splits along a line, merges of touching labels, boundaries moved and thickened)
turned into in-plane affinities (gunpowder's convention: channel `i` at voxel p is 1 when
p and p + offset_i have the same nonzero label) and optionally 2D LSDs (lsd's 6
components: mean offset y, x; covariance yy, xx; pearson yx; size), then blur, contrast
and gaussian noise, clipped to [0, 1]. Sections disagree as real 2D predictions do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from connecto.tasks.affinities_from_2d.config import DEFAULT_INPUT_OFFSETS, LSD_2D_CHANNELS


@dataclass(frozen=True)
class NeuriteSettings:
    """How random label volumes look (lengths in nm)."""

    diameter: tuple[float, float] = (150.0, 400.0)  # typical neurite width, drawn per volume
    curvature: float = 1.5  # sd of the direction's change in radians per sqrt(µm)
    warp: float = 40.0  # sd of the smooth boundary displacement
    warp_spacing: float = 300.0  # distance between the warp's control points


@dataclass(frozen=True)
class PredictionSettings:
    """What the simulated 2D predictions hold and how they err (rates per section)."""

    offsets: tuple[tuple[int, int, int], ...] = tuple(DEFAULT_INPUT_OFFSETS)
    lsds: bool = True
    lsd_sigma: float = 80.0  # nm, in-plane
    lsd_downsample: int = 2
    split_rate: float = 0.05  # probability that a label of a section is cut in two
    merge_rate: float = 0.02  # probability that two touching labels of a section are joined
    shift_rate: float = 0.1  # probability that a label grows into its neighbours
    shift_max: int = 2  # pixels it grows at most
    boundary_width: tuple[int, int] = (1, 2)  # pixels zeroed either side of a boundary
    blur_sigma: float = 1.0  # pixels, the most; each section draws from [0, this]
    noise_std: float = 0.1  # the most; each section draws from [0, this]
    # false boundary evidence inside objects (organelles, texture), as a 2D model that
    # is not fully trained shows: smooth blobs lowering all affinities of a section
    blob_strength: float = 1.0  # the most; each section draws from [0, this]
    blob_size: float = 120.0  # nm between the blobs' control points
    contrast: float = 0.2  # channel contrast factor in [1 - this, 1 + this]
    brightness: float = 0.1  # channel shift in [-this, this]
    # a section blank in the raw (lost in cutting or imaging): the 2D model predicts a
    # near-constant field there; the 3D affinities are still the true ones, bridged
    missing_rate: float = 0.05

    def reach(self, voxel_size: Sequence[int]) -> int:
        """Pixels beyond a crop that its channels read: the largest offset, and the LSDs'
        gaussian (3 sigma). Simulating them too makes a crop's border hold what the 2D
        network, which sees whole sections, predicts there."""
        offsets = max((abs(o) for offset in self.offsets for o in offset), default=0)
        lsds = int(np.ceil(3 * self.lsd_sigma / min(voxel_size[1:]))) if self.lsds else 0
        return max(offsets, lsds)


# ---------------------------------------------------------------- 3D labels


def _curve(rng: np.random.Generator, size_nm: np.ndarray, step: float, curvature: float) -> (
    np.ndarray
):  # fmt: skip
    """Points (nm) of a smooth random curve through a random point, long enough to
    cross the volume in both directions."""
    steps = int(np.ceil(np.linalg.norm(size_nm) / step)) + 1
    start = rng.random(3) * size_nm
    theta0 = np.arccos(rng.uniform(-1.0, 1.0))  # uniform on the sphere
    phi0 = rng.uniform(0.0, 2 * np.pi)
    sd = curvature * np.sqrt(step / 1000.0)
    halves = []
    for sign in (1.0, -1.0):
        theta = theta0 + np.cumsum(rng.normal(0.0, sd, steps))
        phi = phi0 + np.cumsum(rng.normal(0.0, sd, steps))
        directions = np.stack(
            [np.cos(theta), np.sin(theta) * np.sin(phi), np.sin(theta) * np.cos(phi)], axis=1
        )
        halves.append(start + sign * step * np.cumsum(directions, axis=0))
    return np.concatenate([halves[1][::-1], start[None], halves[0]])


def _interpolation(size: int, spacing: float) -> np.ndarray:
    """(size, n) weights that linearly interpolate n control points `spacing` apart."""
    n = int(np.ceil(size / max(spacing, 1.0))) + 2
    position = np.arange(size) / max(spacing, 1.0) + 0.5  # control points straddle the axis
    low = np.floor(position).astype(int)
    weights = np.zeros((size, n), dtype=np.float32)
    weights[np.arange(size), low] = 1 - (position - low)
    weights[np.arange(size), low + 1] = position - low
    return weights


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], spacing_voxels: np.ndarray
) -> np.ndarray:  # fmt: skip
    """Noise of about unit sd, smooth over `spacing_voxels`: coarse noise interpolated
    one axis at a time (matrix products, far faster than ndimage.zoom here)."""
    matrices = [_interpolation(s, g) for s, g in zip(shape, spacing_voxels, strict=True)]
    field = rng.normal(0.0, 1.0, tuple(m.shape[1] for m in matrices)).astype(np.float32)
    for axis, matrix in enumerate(matrices):
        field = np.moveaxis(np.tensordot(matrix, field, axes=(1, axis)), 0, axis)
    return field


def neurite_count(size_nm: Sequence[float], diameter: float) -> int:
    """How many axes make neurites about `diameter` wide in a box of `size_nm`: a random
    line's mean chord is 4 V / S (Cauchy), so n lines of it fill V at spacing d when
    n = S / (4 d^2)."""
    z, y, x = size_nm
    surface = 2 * (z * y + z * x + y * x)
    return max(1, round(surface / (4 * diameter**2)))


def random_neurites(
    shape: Sequence[int], voxel_size: Sequence[int], rng: np.random.Generator,
    settings: NeuriteSettings = NeuriteSettings(),
) -> np.ndarray:  # fmt: skip
    """A dense label volume (uint64, labels in 1..n) of `shape` voxels: the regions of
    random neurite axes, in physical units so that anisotropy keeps their shapes."""
    shape = tuple(int(s) for s in shape)
    voxel = np.asarray(voxel_size, dtype=float)
    size_nm = np.asarray(shape) * voxel
    count = neurite_count(size_nm, rng.uniform(*settings.diameter))
    markers = np.zeros(shape, dtype=np.uint64)
    for label in range(1, count + 1):
        points = _curve(rng, size_nm, float(voxel.min()), settings.curvature)
        index = np.floor(points / voxel).astype(np.int64)
        # each curve passes through a point inside: a label keeps voxels unless crossed there
        inside = np.all((index >= 0) & (index < shape), axis=1)
        markers[tuple(index[inside].T)] = label
    # every voxel takes the label of its nearest axis, distances in nm
    _, nearest = ndimage.distance_transform_edt(markers == 0, sampling=voxel, return_indices=True)
    labels = markers[tuple(nearest)]
    if settings.warp <= 0:
        return labels
    spacing = settings.warp_spacing / voxel
    grid = np.indices(shape, dtype=np.float32)
    for axis in range(3):
        grid[axis] += _smooth_field(rng, shape, spacing) * (settings.warp / voxel[axis])
    return ndimage.map_coordinates(labels, grid, order=0, mode="nearest")


# ---------------------------------------------------------------- perturbing a section


def split_labels(section: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each label cut in two along a random line through its centroid with `rate`."""
    section = section.copy()
    next_id = int(section.max()) + 1
    for label, box in enumerate(ndimage.find_objects(section), start=1):
        if box is None or rng.random() >= rate:
            continue
        mask = section[box] == label
        ys, xs = np.nonzero(mask)
        angle = rng.uniform(0.0, np.pi)
        side = (ys - ys.mean()) * np.cos(angle) - (xs - xs.mean()) * np.sin(angle) > 0
        if side.all() or not side.any():
            continue
        part = section[box]
        part[ys[side], xs[side]] = next_id
        next_id += 1
    return section


def touching_pairs(section: np.ndarray) -> np.ndarray:
    """Pairs (a < b) of nonzero labels that are 4-neighbours somewhere in `section`."""
    pairs = []
    for a, b in ((section[:, :-1], section[:, 1:]), (section[:-1], section[1:])):
        differ = (a != b) & (a != 0) & (b != 0)
        a, b = a[differ], b[differ]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def merge_labels(section: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each pair of touching labels joined with `rate` (joins chain: a-b and b-c make one)."""
    pairs = touching_pairs(section)
    chosen = pairs[rng.random(len(pairs)) < rate]
    if not len(chosen):
        return section
    parent = np.arange(int(section.max()) + 1, dtype=section.dtype)

    def root(label: int) -> int:
        while parent[label] != label:
            label = int(parent[label])
        return label

    for a, b in chosen:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([root(i) for i in range(len(parent))], dtype=section.dtype)
    return roots[section]


def shift_boundaries(
    section: np.ndarray, rate: float, most: int, rng: np.random.Generator
) -> np.ndarray:  # fmt: skip
    """Each label, with `rate`, grows 1..`most` pixels into its neighbours (which lose
    as much): boundaries a 2D network draws in slightly the wrong place."""
    if most < 1 or rate <= 0:
        return section
    section = section.copy()
    for label, box in enumerate(ndimage.find_objects(section), start=1):
        if box is None or rng.random() >= rate:
            continue
        grow = int(rng.integers(1, most + 1))
        box = tuple(slice(max(s.start - grow, 0), s.stop + grow) for s in box)
        part = section[box]
        grown = ndimage.binary_dilation(part == label, iterations=grow)
        part[grown & (part != 0)] = label
    return section


def widen_boundaries(section: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of a change of label set to 0 (background)."""
    if width < 1:
        return section
    size = 2 * width + 1
    changes = ndimage.maximum_filter(section, size) != ndimage.minimum_filter(section, size)
    return np.where(changes, 0, section)


def perturb_section(
    section: np.ndarray, settings: PredictionSettings, rng: np.random.Generator
) -> np.ndarray:  # fmt: skip
    """The labels a 2D network would see in `section`: split, merged, shifted, widened."""
    section = split_labels(section, settings.split_rate, rng) if settings.split_rate else section
    section = merge_labels(section, settings.merge_rate, rng) if settings.merge_rate else section
    section = shift_boundaries(section, settings.shift_rate, settings.shift_max, rng)
    low, high = settings.boundary_width
    return widen_boundaries(section, int(rng.integers(low, high + 1)))


# ---------------------------------------------------------------- 2D predictions


def in_plane_affinities(labels: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """(len(offsets), z, y, x) float32 affinities as gunpowder's `AddAffinities`."""
    if any(offset[0] != 0 for offset in offsets):
        raise ValueError(f"offsets {list(offsets)}: 2D predictions have z offset 0 only")
    out = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    for channel, (_, dy, dx) in enumerate(offsets):
        # voxels p whose p + offset lies inside; the others keep affinity 0
        here = (slice(None), slice(max(0, -dy), labels.shape[1] - max(0, dy)),
                slice(max(0, -dx), labels.shape[2] - max(0, dx)))  # fmt: skip
        there = (slice(None), slice(max(0, dy), labels.shape[1] - max(0, -dy)),
                 slice(max(0, dx), labels.shape[2] - max(0, -dx)))  # fmt: skip
        a, b = labels[here], labels[there]
        out[(channel, *here)] = (a == b) & (a != 0) & (b != 0)
    return out


def _label_descriptors(
    mask: np.ndarray, origin: np.ndarray, step: np.ndarray, sigma: float, sigma_voxels: tuple
) -> np.ndarray:  # fmt: skip
    """lsd's 6 2D statistics of one label in one section (`mask`, (y, x)) at every
    pixel: mean offset y, x; variance yy, xx; pearson yx; gaussian-weighted size, each
    normalised as lsd does (clipped later). Coordinates are relative to the crop, which changes no
    statistic but keeps float32 from cancelling in E[y^2] - E[y]^2."""

    def smooth(values: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(values, sigma_voxels, mode="constant", truncate=3.0)

    y = (origin[0] + np.arange(mask.shape[0], dtype=np.float32) * step[0])[:, None]
    x = (origin[1] + np.arange(mask.shape[1], dtype=np.float32) * step[1])[None, :]
    count = smooth(mask)
    count[count == 0] = 1  # as lsd, which also reports this 1 as the size
    mean_y, mean_x = smooth(mask * y) / count, smooth(mask * x) / count
    var_y = np.maximum(smooth(mask * y * y) / count - mean_y**2, 1e-3)
    var_x = np.maximum(smooth(mask * x * x) / count - mean_x**2, 1e-3)
    pearson = (smooth(mask * y * x) / count - mean_y * mean_x) / np.sqrt(var_y * var_x)
    return np.stack([
        (mean_y - y) / sigma * 0.5 + 0.5, (mean_x - x) / sigma * 0.5 + 0.5,
        var_y / sigma**2, var_x / sigma**2, pearson * 0.5 + 0.5, count,
    ])  # fmt: skip


def _window(box: slice, keep: slice, df: int, reach: int, size: int) -> slice | None:
    """The coarse pixels whose statistics a label's pixels in `box` that lie in `keep`
    (full resolution) need: those cells and the gaussian's `reach` around them."""
    start, stop = max(box.start, keep.start), min(box.stop, keep.stop)
    if start >= stop:
        return None
    return slice(max(start // df - reach, 0), min(-(-stop // df) + reach, size))


def section_lsds(
    labels: np.ndarray, voxel_size: Sequence[int], sigma: float, downsample: int,
    margin: int = 0,
) -> np.ndarray:  # fmt: skip
    """(6, z, y, x) 2D LSDs of every section, as `lsd`'s `get_local_shape_descriptors`
    computes them for a 2D label image with `downsample` (statistics on every
    `downsample`-th pixel, repeated, kept where the full-resolution label is), less
    `margin` pixels at each side in y and x: labels there count, but their own LSDs
    are not computed. All sections at once, each label in its bounding box grown by the
    gaussian's reach: lsd filters whole sections once per label, several times slower."""
    df = downsample
    depth, height, width = labels.shape
    # the downsampling needs sections that divide by it: pad by repeating the edge
    padded = np.pad(labels, [(0, 0), (0, -height % df), (0, -width % df)], mode="edge")
    coarse = padded[:, ::df, ::df]
    step = np.asarray(voxel_size[1:], dtype=np.float32) * df
    sigma_voxels = (float(sigma / step[0]), float(sigma / step[1]))
    reach = [int(3.0 * s + 0.5) + 1 for s in sigma_voxels]
    keep = (slice(margin, height - margin), slice(margin, width - margin))
    out = np.zeros((LSD_2D_CHANNELS, *padded.shape), dtype=np.float32)
    # section by section: a neurite's box in one section is far smaller than its 3D box
    for z in range(depth):
        for label, box in enumerate(ndimage.find_objects(padded[z]), start=1):
            if box is None:
                continue
            cy, cx = (_window(box[a], keep[a], df, reach[a], coarse.shape[1 + a]) for a in (0, 1))
            if cy is None or cx is None:  # all in the margin
                continue
            mask = (coarse[z, cy, cx] == label).astype(np.float32)
            origin = np.array([cy.start, cx.start], dtype=np.float32) * step
            stats = _label_descriptors(mask, origin, step, sigma, sigma_voxels)
            full = stats.repeat(df, axis=1).repeat(df, axis=2)
            fy, fx = slice(cy.start * df, cy.stop * df), slice(cx.start * df, cx.stop * df)
            out[:, z, fy, fx] += full * (padded[z, fy, fx] == label)
    return np.clip(out[(slice(None), slice(None), *keep)], 0.0, 1.0)


def degrade(channels: np.ndarray, settings: PredictionSettings, rng: np.random.Generator) -> (
    np.ndarray
):  # fmt: skip
    """Blur, contrast, brightness and noise drawn per section (contrast and brightness
    per channel too), clipped to [0, 1]; `channels` is (C, z, y, x)."""
    out = channels.copy()
    n_channels, depth = out.shape[:2]
    for z in range(depth):
        section = out[:, z]
        if settings.blur_sigma > 0:
            sigma = rng.uniform(0.0, settings.blur_sigma)
            section[:] = ndimage.gaussian_filter(section, (0, sigma, sigma))
        if settings.contrast > 0 or settings.brightness > 0:
            factor = rng.uniform(1 - settings.contrast, 1 + settings.contrast, n_channels)
            shift = rng.uniform(-settings.brightness, settings.brightness, n_channels)
            section[:] = (section - 0.5) * factor[:, None, None] + 0.5 + shift[:, None, None]
        if settings.noise_std > 0:
            std = rng.uniform(0.0, settings.noise_std)
            section += rng.normal(0.0, std, section.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def interior_blobs(
    affinities: np.ndarray, voxel_size: Sequence[int], settings: PredictionSettings,
    rng: np.random.Generator,
) -> np.ndarray:  # fmt: skip
    """`affinities` (C, z, y, x) lowered by smooth random blobs, the same in every channel
    of a section (one organelle lowers all offsets), strength drawn per section."""
    if settings.blob_strength <= 0:
        return affinities
    depth, height, width = affinities.shape[1:]
    spacing = np.full(2, settings.blob_size) / np.asarray(voxel_size[1:], dtype=float)
    out = affinities.copy()
    for z in range(depth):
        field = _smooth_field(rng, (height, width), spacing)
        # half of the section (field > 0) carries a blob
        blobs = np.clip(field, 0.0, None) * rng.uniform(0.0, settings.blob_strength)
        out[:, z] = np.clip(out[:, z] - blobs[None], 0.0, 1.0)
    return out


def missing_sections(channels: np.ndarray, settings: PredictionSettings,
                     rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """`channels` (C, z, y, x) with each section, at `settings.missing_rate`, replaced by a
    near-constant level per channel (faint noise), as a 2D model predicts on a blank one."""
    out = channels
    n_channels, depth = channels.shape[:2]
    for z in np.nonzero(rng.random(depth) < settings.missing_rate)[0]:
        level = rng.uniform(0.3, 0.7, n_channels).astype(np.float32)
        noise = rng.normal(0.0, rng.uniform(0.0, 0.02), out[:, z].shape).astype(np.float32)
        out[:, z] = np.clip(level[:, None, None] + noise, 0.0, 1.0)
    return out


def simulate_2d_predictions(
    labels: np.ndarray, voxel_size: Sequence[int], settings: PredictionSettings,
    rng: np.random.Generator, margin: int = 0,
) -> np.ndarray:  # fmt: skip
    """(C, z, y, x) float32 in [0, 1]: the in-plane affinities of `settings.offsets`,
    then (with `settings.lsds`) the 6 2D LSDs, of each section perturbed on its own;
    `margin` pixels of `labels` at each side in y and x are read, not predicted (see
    `PredictionSettings.reach`)."""
    perturbed = np.stack([perturb_section(section, settings, rng) for section in labels])
    keep = (slice(None), slice(None), slice(margin, labels.shape[1] - margin),
            slice(margin, labels.shape[2] - margin))  # fmt: skip
    affinities = in_plane_affinities(perturbed, settings.offsets)[keep]
    parts = [interior_blobs(affinities, voxel_size, settings, rng)]
    if settings.lsds:
        parts.append(section_lsds(perturbed, voxel_size, settings.lsd_sigma,
                                  settings.lsd_downsample, margin))  # fmt: skip
    return missing_sections(degrade(np.concatenate(parts), settings, rng), settings, rng)
