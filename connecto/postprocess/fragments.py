"""Fragments as in the LSD pipeline: a watershed on the distance to the boundaries.

Where the mean nearest-neighbour affinity is above `boundary_threshold`, a voxel is
inside a cell; the distance transform of that mask peaks on the cells' medial axes, its
local maxima (at least `min_seed_distance` apart) are the seeds, and a watershed on the
negated distance grows them until they meet on the boundaries. Seeding from the
distance, rather than from the affinities themselves, is what keeps a leak in a
membrane from merging two cells: a leak is narrow, so the distance there is small and
the two cells' seeds stay apart. Fragments are deliberately too small; the
agglomeration joins them.

Where the seeds' basins meet is set by the height map the watershed floods. The LSD
pipeline floods the negated distance alone, so two basins meet halfway between their
seeds even where a membrane runs elsewhere (a membrane weaker than the threshold is
inside). `boundary_weight` blends in the boundary map, 1 - mean nearest affinity, as
elf's distance-transform watershed does (its alpha): the basins then meet on the
weakest affinities; the distance term orders the flooding inside a cell, where the
affinities are flat.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed


def nearest_neighbour_channels(neighborhood: list[tuple[int, int, int]]) -> list[int]:
    """The channels whose offset is one voxel along one axis."""
    channels = [i for i, o in enumerate(neighborhood) if sum(abs(v) for v in o) == 1]
    if not channels:
        raise ValueError(f"the neighborhood {neighborhood} has no nearest-neighbour offset")
    return channels


def _seeded_watershed(
    boundary: np.ndarray, threshold: float, min_seed_distance: int, boundary_weight: float
) -> np.ndarray:
    """Watershed from the local maxima of the distance to the boundary (`boundary` below
    1 - `threshold` is inside) on a blend of the boundary map and the normalised negated
    distance; every voxel gets a fragment (boundary voxels join the nearest basin)."""
    inside = boundary < 1.0 - threshold
    distance = ndimage.distance_transform_edt(inside)
    maxima = (ndimage.maximum_filter(distance, size=min_seed_distance) == distance) & inside
    seeds, n = ndimage.label(maxima)
    if n == 0:
        return np.zeros(distance.shape, dtype=np.uint64)
    height = (1.0 - boundary_weight) * (1.0 - distance / distance.max())
    height += boundary_weight * boundary
    return watershed(height, seeds).astype(np.uint64)


def watershed_from_affinities(
    affs: np.ndarray,
    neighborhood: list[tuple[int, int, int]],
    min_seed_distance: int = 10,
    boundary_threshold: float = 0.5,
    fragments_in_xy: bool = False,
    boundary_weight: float = 0.0,
) -> np.ndarray:
    """Fragments (uint64, every voxel labelled) of `affs` (channels, z, y, x; floats in
    [0, 1]). `fragments_in_xy`: 2D per section, for anisotropic data whose z affinities
    are unreliable. `boundary_weight` in [0, 1]: the boundary map's share of the height
    map (0: the distance alone, as in the LSD pipeline)."""
    nearest = nearest_neighbour_channels(neighborhood)
    if fragments_in_xy:
        nearest = [c for c in nearest if neighborhood[c][0] == 0] or nearest
    boundary = 1.0 - affs[nearest].mean(axis=0, dtype=np.float32)
    if not fragments_in_xy:
        fragments = _seeded_watershed(
            boundary, boundary_threshold, min_seed_distance, boundary_weight
        )
    else:
        fragments = np.zeros(boundary.shape, dtype=np.uint64)
        next_id = np.uint64(0)
        for z in range(boundary.shape[0]):
            section = _seeded_watershed(
                boundary[z], boundary_threshold, min_seed_distance, boundary_weight
            )
            fragments[z] = np.where(section > 0, section + next_id, 0)
            next_id = max(next_id, fragments[z].max())
    return fragments


def remove_small_fragments(fragments: np.ndarray, min_size: int) -> np.ndarray:
    """Fragments smaller than `min_size` voxels given to their nearest neighbouring
    fragment (not left as holes: a hole would count as one big segment)."""
    if min_size <= 1:
        return fragments
    ids, inverse, counts = np.unique(fragments, return_inverse=True, return_counts=True)
    small = ((counts < min_size) & (ids != 0))[inverse.reshape(fragments.shape)]
    if not small.any() or small.all():
        return fragments
    _, nearest = ndimage.distance_transform_edt(small, return_indices=True)
    filled = fragments[tuple(nearest)]
    return np.where(small, filled, fragments)
