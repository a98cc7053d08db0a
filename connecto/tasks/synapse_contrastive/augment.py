"""Two augmented views of a synapse crop (SimCLR's positive pair), aware of anisotropy.

Each view is drawn independently from one raw context read around the synapse:

- geometry, in y-x only (sections are thicker than pixels are wide): rotation by any
  angle, zoom (in-plane scaling), mirror and transpose, and a mirror of the section
  order; one bilinear resampling (torch `grid_sample`) about the synapse's voxel, so the
  synapse stays at the crop centre;
- section defects: misalignment (a section slips by whole pixels in y-x) and cutout (a
  section is blanked to zero, as gunpowder's `DefectAugment` makes missing sections);
  the synapse's own section is never moved or blanked;
- intensity on [0, 1] raw: contrast and brightness about the mean (as gunpowder's
  `IntensityAugment`), gamma, in-plane Gaussian blur, Gaussian noise (as `NoiseAugment`).

Why not gunpowder's nodes: the two views must come from one read of the same location,
and a per-sample gunpowder chain deep-copies the request at every node (see the synapse
classifier's pipeline); these are the same operations on numpy arrays. Draws come from
numpy's global generator, which gunpowder seeds per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from connecto.tasks.synapse_contrastive.config import ContrastiveAugmentConfig

Z_MARGIN = 1  # sections of context on each side: room to mirror the section order


def context_shape(shape: Sequence[int], config: ContrastiveAugmentConfig) -> tuple[int, int, int]:
    """The raw (z, y, x) voxels to read around a synapse (at `context // 2`) so that every
    view of a `shape` crop samples inside it: the crop's corners rotated and zoomed out,
    plus the misalignment."""
    z, height, width = shape
    reach_y = max(height // 2, height - 1 - height // 2)
    reach_x = max(width // 2, width - 1 - width // 2)
    # a transpose swaps the axes, so the context is square either way
    reach = math.hypot(reach_y, reach_x) if config.rotate else max(reach_y, reach_x)
    radius = math.ceil(reach / config.scale[0]) + config.max_misalign + 1
    return (z + 2 * Z_MARGIN, 2 * radius + 1, 2 * radius + 1)


def _in_plane_matrix(config: ContrastiveAugmentConfig) -> np.ndarray:
    """2x2 map from target (y, x) offsets to source offsets: mirror/transpose, zoom,
    rotation."""
    matrix = np.eye(2)
    if config.mirror_transpose:
        matrix = np.diag(np.where(np.random.random(2) < 0.5, -1.0, 1.0))
        if np.random.random() < 0.5:
            matrix = matrix[::-1]
    zoom = np.random.uniform(*config.scale)  # > 1 magnifies: source offsets shrink
    matrix = matrix / zoom
    if config.rotate:
        angle = np.random.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        matrix = np.array([[cos, -sin], [sin, cos]]) @ matrix
    return matrix


class ViewAugmentation:
    """Draws views of `shape` (z, y, x) from a context of `context_shape(shape, config)`
    raw scaled to [0, 1] with the synapse at `context // 2`."""

    def __init__(self, shape: Sequence[int], config: ContrastiveAugmentConfig) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.config = config
        self.context_shape = context_shape(self.shape, config)

    def sections(self) -> np.ndarray:
        """The context section of each view section: straight or mirrored, about the
        synapse's section."""
        z = self.shape[0]
        offsets = np.arange(z) - z // 2
        if self.config.mirror_transpose and np.random.random() < 0.5:
            offsets = -offsets
        return self.context_shape[0] // 2 + offsets

    def geometry(self, context: np.ndarray) -> np.ndarray:
        """Resample the context into a view (z, y, x) float32."""
        z, height, width = self.shape
        matrix = _in_plane_matrix(self.config)
        ty, tx = np.meshgrid(
            np.arange(height) - height // 2, np.arange(width) - width // 2, indexing="ij"
        )
        offsets = np.stack([ty, tx]).reshape(2, -1).astype(np.float64)
        source = (matrix @ offsets).reshape(2, height, width)
        _, context_y, context_x = context.shape
        shifts = self.misalignment()  # (z, 2)
        grid = np.empty((z, height, width, 2), dtype=np.float32)  # grid_sample's x, y
        grid[..., 0] = (source[1] + context_x // 2)[None] + shifts[:, 1, None, None]
        grid[..., 1] = (source[0] + context_y // 2)[None] + shifts[:, 0, None, None]
        grid[..., 0] = grid[..., 0] * (2 / (context_x - 1)) - 1
        grid[..., 1] = grid[..., 1] * (2 / (context_y - 1)) - 1
        chosen = np.ascontiguousarray(context[self.sections()], dtype=np.float32)[:, None]
        sampled = torch.nn.functional.grid_sample(
            torch.from_numpy(chosen), torch.from_numpy(grid),
            mode="bilinear", padding_mode="border", align_corners=True,
        )  # fmt: skip
        return sampled[:, 0].numpy()

    def misalignment(self) -> np.ndarray:
        """(z, 2) whole-pixel (y, x) slips of the sections; the synapse's stays."""
        z = self.shape[0]
        m = self.config.max_misalign
        moved = np.random.random(z) < self.config.prob_misalign
        moved[z // 2] = False
        return np.random.randint(-m, m + 1, (z, 2)) * moved[:, None]

    def intensity(self, view: np.ndarray) -> np.ndarray:
        """Contrast, brightness, gamma, blur, noise and cutout of a [0, 1] view, in place
        where possible; stays in [0, 1]."""
        c = self.config
        mean = float(view.mean())
        scale = np.random.uniform(*c.intensity_scale)
        shift = np.random.uniform(*c.intensity_shift)
        view = np.clip((view - mean) * scale + mean + shift, 0, 1, out=view)
        view **= np.float32(np.random.uniform(*c.gamma))
        if np.random.random() < c.prob_blur:
            sigma = np.random.uniform(*c.blur_sigma)
            view = ndimage.gaussian_filter(view, (0, sigma, sigma), mode="nearest")
        if c.noise_sigma > 0:
            sigma = np.random.uniform(0, c.noise_sigma)
            view += np.random.normal(0, sigma, view.shape).astype(np.float32)
        np.clip(view, 0, 1, out=view)
        blank = np.random.random(view.shape[0]) < c.prob_cutout
        blank[view.shape[0] // 2] = False
        view[blank] = 0
        return view

    def __call__(self, context: np.ndarray) -> np.ndarray:
        """One view (z, y, x) float32 in [0, 1] of a [0, 1] context."""
        if tuple(context.shape) != self.context_shape:
            raise ValueError(f"context {context.shape} is not {self.context_shape}")
        return self.intensity(self.geometry(context))


def centre_crop(context: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The `shape` crop of `context` with the same centre voxel (`// 2` of each)."""
    begin = [c // 2 - s // 2 for c, s in zip(context.shape, shape, strict=True)]
    return context[tuple(slice(b, b + s) for b, s in zip(begin, shape, strict=True))]
