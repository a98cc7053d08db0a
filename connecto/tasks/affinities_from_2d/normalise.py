"""Each section's channels stretched to [0, 1] between two of their percentiles.

2D models differ in calibration: a briefly trained one draws membranes at 0.6 in its
nearest affinities where the simulated predictions the 2D->3D network learns from reach 0.
Stretching every section and channel between its own low and high percentile, in training
and in prediction alike, gives the 3D network the same contrast whatever made the stack.
"""

from __future__ import annotations

import numpy as np

# at most this many pixels of a section enter its percentiles (a strided subsample)
SAMPLE_PIXELS = 1 << 20
MIN_SPAN = 0.05  # a channel without contrast in a section is not blown up into noise


def section_levels(stack: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """(2, C, z) low and high percentile of every channel in every section of `stack`
    (C, z, y, x), in `stack`'s units."""
    n_channels, depth, height, width = stack.shape
    stride = max(1, int(np.ceil(np.sqrt(height * width / SAMPLE_PIXELS))))
    sample = stack[:, :, ::stride, ::stride].reshape(n_channels, depth, -1)
    return np.percentile(sample, percentiles, axis=2).astype(np.float32)


def stretch(stack: np.ndarray, levels: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """`stack` (C, z, y, x) as float32 in [0, 1], each channel of each section mapped from
    [low, high] of `levels` (2, C, z) to [0, 1]; `scale` divides both (255 for uint8)."""
    low = levels[0][:, :, None, None] / scale
    span = np.maximum(levels[1][:, :, None, None] / scale - low, MIN_SPAN)
    out = (stack.astype(np.float32) / scale - low) / span
    return np.clip(out, 0.0, 1.0, out=out)
