"""The gunpowder nodes of 2D segmentation: the labelled mask and the 2D LSDs of a
section, on gunpowder's 3D arrays one (or a few) sections deep."""

from __future__ import annotations

import math

import gunpowder as gp
import numpy as np
from lsd.train import LsdExtractor

from connecto.tasks.section_contrast import stretch_sections
from connecto.tasks.segmentation_2d.model import LSD_2D_CHANNELS


class StretchSections(gp.BatchFilter):
    """Each section of `key` (z, y, x in [0, 1]) stretched between the percentiles of its
    whole section (`levels` (2, z) of the volume, whose first section is at `origin_z`
    nm), as prediction does. Upstream of Pad: every section is in the volume."""

    def __init__(self, key: gp.ArrayKey, levels: np.ndarray, origin_z: int, section_nm: int):
        self.key, self.levels, self.origin_z, self.section_nm = key, levels, origin_z, section_nm

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> None:
        array = batch[self.key]
        first = (array.spec.roi.begin[0] - self.origin_z) // self.section_nm
        stretch_sections(array.data, self.levels, first)


class LabelledMask(gp.BatchFilter):
    """`mask` = 1 where `labels` are known: inside `region` (the labels before padding),
    and, with sparse labels, where the label is not 0 (0 = unlabelled). Upstream of
    RandomLocation, so `region` is in the volume's own coordinates."""

    def __init__(self, labels: gp.ArrayKey, mask: gp.ArrayKey, region: gp.Roi, sparse: bool):
        self.labels, self.mask, self.region, self.sparse = labels, mask, region, sparse

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.uint8
        spec.interpolatable = False
        self.provides(self.mask, spec)

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        deps = gp.BatchRequest()
        deps[self.labels] = request[self.mask].copy()
        deps[self.labels].dtype = None
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        labels = batch[self.labels]
        roi = request[self.mask].roi
        data = labels.crop(roi).data
        known = (data > 0) if self.sparse else np.ones(data.shape, dtype=bool)
        inside = np.zeros(data.shape, dtype=bool)
        overlap = roi.intersect(self.region)
        if not overlap.empty:
            inside[((overlap - roi.offset) / labels.spec.voxel_size).to_slices()] = True
        spec = self.spec[self.mask].copy()
        spec.roi = roi
        out = gp.Batch()
        out[self.mask] = gp.Array((known & inside).astype(np.uint8), spec)
        return out


def section_lsds(section: np.ndarray, voxel_size: tuple[int, int], sigma: float,
                 downsample: int) -> np.ndarray:  # fmt: skip
    """The 2D LSDs (6, y, x) of one section's labels (lsd's definition, gaussian of
    `sigma` nm). The extractor needs a shape divisible by `downsample`: the section is
    padded with background, which adds nothing to any object's statistics."""
    pad = [(0, -s % downsample) for s in section.shape]
    padded = np.pad(section, pad) if any(p for _, p in pad) else section
    extractor = LsdExtractor((sigma, sigma), "gaussian", downsample)
    lsds = extractor.get_descriptors(padded, voxel_size=voxel_size)
    return lsds[:, : section.shape[0], : section.shape[1]]


class AddSectionLsds(gp.BatchFilter):
    """`descriptor` (6, z, y, x): the 2D LSDs of each section of `labels` on its own (no
    statistics across sections); `weights`: 1 on labelled objects (label not 0, `mask`
    1), else 0. The labels are read 3 sigma beyond the output in y and x, where the
    gaussian reaches (lsd truncates it there)."""

    def __init__(
        self, labels: gp.ArrayKey, mask: gp.ArrayKey, descriptor: gp.ArrayKey,
        weights: gp.ArrayKey, sigma: float, downsample: int,
    ) -> None:  # fmt: skip
        self.labels, self.mask = labels, mask
        self.descriptor, self.weights = descriptor, weights
        self.sigma, self.downsample = sigma, downsample

    def setup(self) -> None:
        spec = self.spec[self.labels].copy()
        spec.dtype = np.float32
        spec.interpolatable = True
        self.provides(self.descriptor, spec)
        self.provides(self.weights, spec.copy())

    def _context(self) -> gp.Coordinate:
        voxel_size = self.spec[self.labels].voxel_size
        reach = [math.ceil(3 * self.sigma / v) * v for v in voxel_size[1:]]
        return gp.Coordinate((0, *reach))

    def prepare(self, request: gp.BatchRequest) -> gp.BatchRequest:
        roi = request[self.descriptor].roi
        deps = gp.BatchRequest()
        deps[self.labels] = gp.ArraySpec(roi=roi.grow(self._context(), self._context()))
        deps[self.mask] = gp.ArraySpec(roi=roi)
        return deps

    def process(self, batch: gp.Batch, request: gp.BatchRequest) -> gp.Batch:
        roi = request[self.descriptor].roi
        labels = batch[self.labels]
        voxel_size = labels.spec.voxel_size
        inner = ((roi - labels.spec.roi.offset) / voxel_size).to_slices()
        lsds = np.stack(
            [
                section_lsds(section, tuple(voxel_size[1:]), self.sigma, self.downsample)
                for section in labels.data
            ],
            axis=1,
        )[(slice(None), *inner)]
        objects = (labels.data[inner] != 0) & (batch[self.mask].crop(roi).data > 0)
        weights = np.broadcast_to(objects, (LSD_2D_CHANNELS, *objects.shape))
        spec = self.spec[self.descriptor].copy()
        spec.roi = roi
        out = gp.Batch()
        out[self.descriptor] = gp.Array(lsds.astype(np.float32), spec)
        out[self.weights] = gp.Array(weights.astype(np.float32), spec.copy())
        return out
