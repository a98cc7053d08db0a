"""Pseudo ground truth from a segmentation: keep the segments a next round can trust.

A bootstrapping round trains a 3D model on the previous round's segmentation. Merged or
broken segments would teach the errors back, so segments are dropped by size (dust below
`min_size`, giant merges above `max_size`), by a two-sided outlier cut on sizes, by how
many sections they span (fragments in one or two sections are rarely whole neurites) and,
given the painting, by what it shows: a segment covering most of two painted objects of
one section is a merge (`painted_overlap`), whatever its size.
Dropped segments become 0 = unlabelled, so training (`sparse_labels`) ignores them rather
than learning them as background.

The volume is read in slabs of sections, twice (statistics, then the filtered copy), so
it never has to fit in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fastremap
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array, open_ds
from pydantic import BaseModel, Field

from connecto import ConnectoError
from connecto.data.volumes import open_raw, prepare_volume

SLAB_SECTIONS = 8


class SegmentFilter(BaseModel):
    """Which segments become pseudo ground truth (sizes in voxels)."""

    min_size: int = Field(default=0, ge=0, description="smaller segments are dropped (dust)")
    max_size: int | None = Field(default=None, ge=1, description="larger ones are dropped")
    outlier_std: float | None = Field(
        default=3.0, gt=0, description="drop sizes beyond mean +- this many std (of >= min_size)"
    )
    min_sections: int = Field(default=1, ge=1, description="sections a segment must span")
    drop_painted_merges: bool = Field(
        default=True, description="drop segments the painting shows to be merges"
    )
    painted_overlap: float = Field(
        default=0.5, gt=0, le=1,
        description="a segment covering at least this share of each of two painted objects "
        "of one section is a merge",
    )  # fmt: skip


@dataclass
class FilterReport:
    """What was kept: segments and labelled voxels, and why the rest was dropped."""

    segments: int
    kept_segments: int
    voxels: int  # labelled (non-zero) voxels of the input
    kept_voxels: int
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> segments

    @property
    def kept_fraction(self) -> float:
        return self.kept_voxels / self.voxels if self.voxels else 0.0

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items() if n)
        return (
            f"kept {self.kept_segments} of {self.segments} segments, "
            f"{self.kept_fraction:.1%} of the labelled voxels"
            + (f" (dropped: {reasons})" if reasons else "")
        )


def slabs(array: Array, roi: Roi) -> Iterator[Roi]:
    """`roi` in slabs of SLAB_SECTIONS sections."""
    voxel_size = Coordinate(array.voxel_size)
    step = SLAB_SECTIONS * voxel_size[0]
    for z in range(roi.begin[0], roi.end[0], step):
        depth = min(step, roi.end[0] - z)
        yield Roi((z, *roi.begin[1:]), (depth, *roi.shape[1:]))


def write_relabelled(
    source: Array, roi: Roi, output: tuple[str | Path, str],
    relabel: Callable[[np.ndarray], np.ndarray],
) -> Array:  # fmt: skip
    """`relabel` of each slab of `source` over `roi`, written to `output` (container,
    dataset; replaced if there)."""
    voxel_size = Coordinate(source.voxel_size)
    target = prepare_volume(
        Path(output[0]) / output[1], shape=roi.shape / voxel_size, offset=roi.offset,
        voxel_size=voxel_size, axis_names=["z", "y", "x"], units=["nm"] * 3,
        dtype=source.dtype, mode="w",
    )  # fmt: skip
    for slab in slabs(source, roi):
        target[slab] = relabel(source.to_ndarray(slab))
    return target


def segment_statistics(array: Array, roi: Roi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Non-zero ids with their voxel counts and the number of sections each spans."""
    sizes: dict[int, int] = {}
    sections: dict[int, int] = {}
    for slab in slabs(array, roi):
        data = array.to_ndarray(slab)
        ids, counts = fastremap.unique(data, return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
            sizes[i] = sizes.get(i, 0) + c
        for section in data:
            for i in fastremap.unique(section).tolist():
                sections[i] = sections.get(i, 0) + 1
    sizes.pop(0, None)
    ids = np.array(sorted(sizes), dtype=np.uint64)
    return (
        ids,
        np.array([sizes[i] for i in ids.tolist()], dtype=np.int64),
        np.array([sections[i] for i in ids.tolist()], dtype=np.int64),
    )


def painted_overlaps(
    labels: Array, painting: Array, roi: Roi
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where `labels` meets the painting, one row per (section, painted object, label):
    the section's z index, the object, the label and the voxels they share. Read in slabs."""
    if Coordinate(painting.voxel_size) != Coordinate(labels.voxel_size):
        raise ConnectoError(
            f"the painting's voxel size {tuple(painting.voxel_size)} is not the "
            f"segmentation's {tuple(labels.voxel_size)}"
        )
    rows: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    voxel_z = Coordinate(labels.voxel_size)[0]
    for slab in slabs(labels, roi.intersect(painting.roi)):
        painted = painting.to_ndarray(slab)
        if not painted.any():
            continue
        segments = labels.to_ndarray(slab)
        for index, (paint, segment) in enumerate(zip(painted, segments, strict=True)):
            labelled = paint > 0
            if not labelled.any():
                continue
            pairs = np.stack([paint[labelled], segment[labelled]]).astype(np.uint64)
            unique, count = np.unique(pairs, axis=1, return_counts=True)
            z = slab.begin[0] // voxel_z + index
            rows.append(np.vstack([np.full(unique.shape[1], z, np.uint64), unique]))
            counts.append(count)
    if not rows:
        empty = np.zeros(0, np.uint64)
        return empty, empty, empty, np.zeros(0, np.int64)
    sections, objects, ids = np.hstack(rows)
    return sections, objects, ids, np.concatenate(counts)


def merge_claimants(
    sections: np.ndarray, objects: np.ndarray, segments: np.ndarray, voxels: np.ndarray,
    overlap: float,
) -> np.ndarray:  # fmt: skip
    """The segments covering at least `overlap` of each of two or more painted objects of
    one section, from `painted_overlaps` rows (repeated rows are summed; segment 0 is
    background: it counts in an object's area, never as a claimant)."""
    if not len(sections):
        return np.zeros(0, np.uint64)
    rows = np.stack([sections, objects, segments]).astype(np.uint64)
    keys, inverse = np.unique(rows, axis=1, return_inverse=True)
    shared = np.bincount(inverse.ravel(), weights=voxels)
    _, of_object = np.unique(keys[:2], axis=1, return_inverse=True)
    area = np.bincount(of_object.ravel(), weights=shared)
    claims = keys[:, (shared / area[of_object.ravel()] >= overlap) & (keys[2] > 0)]
    pairs, claimed = np.unique(claims[[0, 2]], axis=1, return_counts=True)
    return np.unique(pairs[1][claimed >= 2])


def painted_merges(segmentation: Array, painting: Array, roi: Roi, overlap: float) -> np.ndarray:
    """Ids of the segments that cover at least `overlap` of each of two or more painted
    objects (non-zero ids) of one section: merges the painting shows. Read in slabs."""
    return merge_claimants(*painted_overlaps(segmentation, painting, roi), overlap)


def dropped_segments(
    ids: np.ndarray, sizes: np.ndarray, spans: np.ndarray, rule: SegmentFilter,
    merges: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, int]]:  # fmt: skip
    """The ids to drop and, per reason, how many (a segment counts under its first reason);
    `merges`: ids the painting shows to be merges."""
    reasons = {
        "too small": sizes < rule.min_size,
        "too large": sizes > rule.max_size if rule.max_size else np.zeros(len(ids), bool),
        "too few sections": spans < rule.min_sections,
        "merges painted objects": np.isin(ids, merges if merges is not None else []),
    }
    statistic = sizes[sizes >= rule.min_size]
    outliers = np.zeros(len(ids), bool)
    if rule.outlier_std is not None and len(statistic) > 1:
        mean, std = statistic.mean(), statistic.std()
        outliers = np.abs(sizes - mean) > rule.outlier_std * std
    reasons["size outlier"] = outliers
    dropped = np.zeros(len(ids), bool)
    counts = {}
    for reason, hit in reasons.items():
        counts[reason] = int((hit & ~dropped).sum())
        dropped |= hit
    return ids[dropped], counts


def make_pseudo_labels(
    segmentation: tuple[str | Path, str],
    output: tuple[str | Path, str],
    rule: SegmentFilter,
    roi: Roi | None = None,
    painting: tuple[str | Path, str] | None = None,
) -> FilterReport:
    """Write the kept segments of `segmentation` (container, dataset) to `output`, dropped
    ones as 0; returns what was kept. `painting` (container, dataset): the sparse labels
    the chain started from, to find merges."""
    try:
        source = open_ds(Path(segmentation[0]) / segmentation[1], mode="r")
    except Exception as error:  # funlib raises several kinds for a missing dataset
        raise ConnectoError(f"{segmentation[0]}/{segmentation[1]}: cannot open ({error})") from None
    if not np.issubdtype(source.dtype, np.integer):
        raise ConnectoError(
            f"{segmentation[0]}/{segmentation[1]}: dtype {source.dtype} is not a label type"
        )
    roi = source.roi if roi is None else roi.intersect(source.roi)
    ids, sizes, spans = segment_statistics(source, roi)
    merges = None
    if painting is not None and rule.drop_painted_merges:
        painted = open_raw(painting[0], painting[1], "painting")
        merges = painted_merges(source, painted, roi, rule.painted_overlap)
    drop, reasons = dropped_segments(ids, sizes, spans, rule, merges)
    dropped = drop.astype(source.dtype)

    def keep(data: np.ndarray) -> np.ndarray:
        if len(dropped):
            fastremap.mask(data, dropped, in_place=True)  # dropped ids -> 0
        return data

    target = write_relabelled(source, roi, output, keep)
    dropped_voxels = int(sizes[np.isin(ids, drop)].sum())
    report = FilterReport(
        segments=len(ids),
        kept_segments=len(ids) - len(drop),
        voxels=int(sizes.sum()),
        kept_voxels=int(sizes.sum()) - dropped_voxels,
        dropped=reasons,
    )
    target._source_data.attrs["pseudo_labels"] = {
        "source": f"{segmentation[0]}/{segmentation[1]}",
        "filter": rule.model_dump(),
        "kept_segments": report.kept_segments,
        "kept_fraction": report.kept_fraction,
    }
    return report
