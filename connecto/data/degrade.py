"""Affinities degraded the way a network's predictions are, from perfect ones.

Post-processing must be judged on imperfect affinities: ground-truth affinities are
binary, one voxel thin and never leak, and any pipeline segments them. This generator
adds, in order and from one seed, what trained networks get wrong:

It starts from the affinities a network is trained to predict: boundaries grown by
`grow_boundary` voxels on each side (as the segmentation template trains, with
gunpowder's GrowBoundary), so membranes are a few voxels thick, not one.

- blur: boundaries become soft ramps (Gaussian, `blur_sigma` voxels, per channel);
- leaks: small balls where the membrane is missed (affinity set high in every channel),
  `leaks_per_megavoxel` of them centred on boundary voxels, radius `leak_radius` voxels;
- missing sections: whole z sections where the network saw nothing and answers about
  0.5 in every channel (`missing_sections` of them);
- noise: Gaussian per voxel and channel (`noise` standard deviation), clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Degradation:
    blur_sigma: float = 0.0
    noise: float = 0.0
    leaks_per_megavoxel: float = 0.0
    leak_radius: int = 2
    missing_sections: int = 0


# the strengths the post-processing benchmark and tests use
DEGRADATIONS: dict[str, Degradation] = {
    "clean": Degradation(),
    "mild": Degradation(blur_sigma=1.0, noise=0.1, leaks_per_megavoxel=8.0, leak_radius=2),
    "strong": Degradation(
        blur_sigma=1.5, noise=0.2, leaks_per_megavoxel=24.0, leak_radius=3, missing_sections=2
    ),
}


def target_affinities(
    labels: np.ndarray, neighborhood: list[tuple[int, int, int]], grow_boundary: int = 1
) -> np.ndarray:
    """The training target: affinities (float32) of `labels` after setting every voxel
    within `grow_boundary` voxels of another label to 0 (unlabelled: affinity 0)."""
    from gunpowder.nodes.add_affinities import seg_to_affgraph

    grown = labels.copy()
    for _ in range(grow_boundary):
        edge = np.zeros(labels.shape, dtype=bool)
        for axis in range(labels.ndim):
            before = [slice(None)] * labels.ndim
            after = [slice(None)] * labels.ndim
            before[axis], after[axis] = slice(None, -1), slice(1, None)
            differs = grown[tuple(before)] != grown[tuple(after)]
            edge[tuple(before)] |= differs
            edge[tuple(after)] |= differs
        grown[edge] = 0
    return seg_to_affgraph(grown, np.array(neighborhood)).astype(np.float32)


def degrade_affinities(affs: np.ndarray, degradation: Degradation, seed: int = 0) -> np.ndarray:
    """A degraded copy of `affs` (channels, z, y, x; floats in [0, 1] or uint8), as
    float32 in [0, 1]; the same seed gives the same result."""
    rng = np.random.default_rng(seed)
    scale = 255.0 if affs.dtype == np.uint8 else 1.0
    out = affs.astype(np.float32) / np.float32(scale)
    spatial = out.shape[1:]
    boundary = out.min(axis=0) < 0.5  # before the blur: where the membranes are
    if degradation.blur_sigma > 0:
        for channel in out:
            ndimage.gaussian_filter(channel, degradation.blur_sigma, output=channel)
    n_leaks = int(round(degradation.leaks_per_megavoxel * np.prod(spatial) / 1e6))
    candidates = np.flatnonzero(boundary)
    if n_leaks > 0 and candidates.size:
        centres = np.zeros(spatial, dtype=bool)
        centres.flat[rng.choice(candidates, size=min(n_leaks, candidates.size), replace=False)] = 1
        radius = degradation.leak_radius
        grid = np.indices((2 * radius + 1,) * 3) - radius
        ball = (grid**2).sum(axis=0) <= radius**2
        holes = ndimage.binary_dilation(centres, structure=ball)
        out[:, holes] = np.maximum(out[:, holes], 0.9)
    n_missing = min(degradation.missing_sections, spatial[0])
    for z in rng.choice(spatial[0], size=n_missing, replace=False):
        out[:, z] = 0.5
    if degradation.noise > 0:
        out += rng.normal(0.0, degradation.noise, size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)
