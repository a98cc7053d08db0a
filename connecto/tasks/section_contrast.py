"""Each section's channels stretched to [0, 1] between two of their percentiles, in
training and in prediction alike.

- 2D->3D: 2D models differ in calibration: a briefly trained one draws membranes at 0.6
  in its nearest affinities where the simulated predictions the 2D->3D network learns
  from reach 0. Stretched, the 3D network gets the same contrast whatever made the stack.
- 2D models: EM sections differ in contrast (CREMI C: intensity sd 20 in some sections, 30
  in others); a model trained on one painted section then draws faint membranes on the
  flat ones. Stretched raw sections look alike to it.
Levels come from whole sections (per-crop levels would differ between training crops and
prediction tiles, and show the tiles' seams).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from funlib.persistence import Array

from connecto.data.volumes import raw_scale

# at most this many pixels of a section enter its percentiles (a strided subsample)
SAMPLE_PIXELS = 1 << 20
MIN_SPAN = 0.05  # a channel without contrast in a section is not blown up into noise


def check_percentiles(percentiles: Sequence[float] | None) -> None:
    """A config's `section_percentiles`: none, or [low, high] within 0-100."""
    if percentiles is not None:
        low, high = percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(
                f"section_percentiles [{low}, {high}]: expected 0 <= low < high <= 100"
            )


def _stride(height: int, width: int) -> int:
    """Every how many pixels (in y and x) a section is sampled: SAMPLE_PIXELS at most."""
    return max(1, int(np.ceil(np.sqrt(height * width / SAMPLE_PIXELS))))


def section_levels(stack: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """(2, C, z) low and high percentile of every channel in every section of `stack`
    (C, z, y, x), in `stack`'s units."""
    n_channels, depth, height, width = stack.shape
    stride = _stride(height, width)
    sample = stack[:, :, ::stride, ::stride].reshape(n_channels, depth, -1)
    return np.percentile(sample, percentiles, axis=2).astype(np.float32)


def stored_section_levels(data: Any, sections: range, percentiles: Sequence[float]) -> (
    np.ndarray
):  # fmt: skip
    """`section_levels` of the `sections` of a stored (C, z, y, x) or (z, y, x) array
    (zarr, or anything indexed alike; no channel axis: C = 1), read one strided section at
    a time, so a volume never has to fit in memory."""
    channels = data.shape[0] if data.ndim == 4 else 1
    stride = _stride(*data.shape[-2:])
    levels = np.empty((2, channels, len(sections)), dtype=np.float32)
    for i, z in enumerate(sections):
        section = data[:, z, ::stride, ::stride] if data.ndim == 4 else data[z, ::stride, ::stride]
        sample = np.asarray(section, dtype=np.float32).reshape(channels, -1)
        levels[:, :, i] = np.percentile(sample, percentiles, axis=1)
    return levels


def stretch(stack: np.ndarray, levels: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """`stack` (C, z, y, x) as float32 in [0, 1], each channel of each section mapped from
    [low, high] of `levels` (2, C, z) to [0, 1]; `scale` divides both (255 for uint8)."""
    low = levels[0][:, :, None, None] / scale
    span = np.maximum(levels[1][:, :, None, None] / scale - low, MIN_SPAN)
    out = (stack.astype(np.float32) / scale - low) / span
    return np.clip(out, 0.0, 1.0, out=out)


def volume_section_levels(raw: Array, percentiles: Sequence[float]) -> np.ndarray:
    """(2, z) low and high percentile of every section of a single-channel `raw` volume
    (z, y, x), in [0, 1] units (`raw_scale`), each section read strided (a sample)."""
    levels = stored_section_levels(raw.data, range(raw.data.shape[0]), percentiles)[:, 0]
    return levels * np.float32(raw_scale(raw.dtype))


def stretch_sections(sections: np.ndarray, levels: np.ndarray, first: int) -> np.ndarray:
    """`sections` (z, y, x) in [0, 1] (changed in place and returned) whose section 0 is
    section `first` of `levels` (2, z_total); sections outside `levels` (padding) stay."""
    inside = slice(max(0, -first), max(0, min(len(sections), levels.shape[1] - first)))
    if inside.start < inside.stop:
        window = levels[:, None, first + inside.start : first + inside.stop]
        sections[inside] = stretch(sections[None, inside], window)[0]
    return sections
