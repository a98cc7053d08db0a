"""A PNG of a few sections of a segmentation over its raw data: how a user judges at a
glance whether segments follow the cells (one segment per section, dust, or neurites)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from funlib.geometry import Coordinate, Roi

from connecto import ConnectoError
from connecto.tasks.segmentation.steps import open_volume

ALPHA = 0.45  # colour over the raw: membranes stay visible


def segment_colours(ids: np.ndarray) -> np.ndarray:
    """An RGB colour in [0, 1] per id, the same for an id in every picture (hashed)."""
    hashed = (ids.astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFF)
    channels = [(hashed >> np.uint64(shift)) & np.uint64(0xFF) for shift in (0, 8, 16)]
    return 0.25 + 0.75 * np.stack(channels, axis=-1).astype(np.float32) / 255


def overlay_section(raw: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    """RGB uint8: the raw in grey, each segment tinted by its colour, boundaries dark,
    background (0) untinted."""
    grey = raw.astype(np.float32)
    low, high = np.percentile(grey, (1, 99))
    grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)[..., None].repeat(3, axis=-1)
    tinted = (1 - ALPHA) * grey + ALPHA * segment_colours(segmentation)
    image = np.where((segmentation > 0)[..., None], tinted, grey)
    edge = np.zeros(segmentation.shape, dtype=bool)
    edge[1:] |= segmentation[1:] != segmentation[:-1]
    edge[:, 1:] |= segmentation[:, 1:] != segmentation[:, :-1]
    image[edge] *= 0.3
    return (image * 255).round().astype(np.uint8)


def write_overlay(
    raw: tuple[str | Path, str],
    segmentation: tuple[str | Path, str],
    out: Path,
    sections: int = 3,
    roi: Roi | None = None,
) -> Path:
    """`sections` evenly spaced z sections of `roi` (default: where raw and segmentation
    overlap), side by side, written to `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw_array = open_volume(*raw)
    seg_array = open_volume(*segmentation)
    if raw_array.voxel_size != seg_array.voxel_size:
        raise ConnectoError(
            f"{segmentation[0]}/{segmentation[1]}: voxel size {tuple(seg_array.voxel_size)} "
            f"differs from the raw's {tuple(raw_array.voxel_size)}"
        )
    region = raw_array.roi.intersect(seg_array.roi)
    region = region.intersect(roi) if roi is not None else region
    if region.empty:
        raise ConnectoError(f"{segmentation[0]}/{segmentation[1]}: no overlap with the raw")
    voxel = Coordinate(seg_array.voxel_size)
    depth = region.shape[0] // voxel[0]
    picked = np.unique(np.linspace(0, depth - 1, min(sections, depth)).round().astype(int))
    panels = []
    for index in picked:
        z = region.begin[0] + int(index) * voxel[0]
        section = Roi((z, *region.begin[1:]), (voxel[0], *region.shape[1:]))
        panels.append(overlay_section(raw_array.to_ndarray(section)[0],
                                      seg_array.to_ndarray(section)[0]))  # fmt: skip
    gap = np.full((panels[0].shape[0], 8, 3), 255, dtype=np.uint8)
    strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(out, strip)
    return out
