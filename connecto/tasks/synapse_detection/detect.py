"""Synapses as points: ground truth from a data database, detections from a predicted
synapse probability, their assignment to neurons, and detections in MongoDB.

Detections are the connected components (26-connected, cc3d) of the mask probability
above a threshold: centre (probability-weighted, nm), size (voxels), score (the component's
max or mean probability). They are written one document per detection in the synapse
schema (validator and indexes of `synapses`) into their own collection, named after the
prediction run, of the detections database (`<synapses_db>_predictions` by default), so
ground truth and detections never mix; each document records its source run.

Assignment to neurons (`assign_neurons`): within `assign_radius_nm` of the detection's
centre, the two segments under the most marker signal are the pair, and the one under more
presynaptic than postsynaptic marker is the presynaptic neuron (the label under each
marker side); without marker signal, the two most frequent segments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
from funlib.geometry import Coordinate, Roi
from funlib.persistence import Array
from pymongo.database import Database
from scipy import ndimage

from connecto import ConnectoError
from connecto.data.volumes import voxel_origin
from connecto.db.schema import SYNAPSES, index_models, validator

DETECTION_PREFIX = "detections_"


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth synapses: centres (n, 3) z, y, x nm; pre/post neuron ids (0 unknown)."""

    centres: np.ndarray
    pre: np.ndarray
    post: np.ndarray

    def inside(self, roi: Roi) -> GroundTruth:
        """The synapses whose centre lies in `roi`."""
        begin, end = np.asarray(roi.begin, float), np.asarray(roi.end, float)
        keep = np.all((self.centres >= begin) & (self.centres < end), axis=1)
        return GroundTruth(self.centres[keep], self.pre[keep], self.post[keep])


def read_ground_truth(
    db: Database, volume: str | None, source: str = "ground truth"
) -> GroundTruth:
    """The synapses of `db` (of `volume` when given, the generator's `volume` field): one
    per `synapse_site` at the midpoint of its pre and post side; documents without a site
    are one synapse each (their skeleton as pre, partner_skeleton_id as post)."""
    query = {} if volume is None else {"volume": volume}
    projection = {"_id": 0, "x": 1, "y": 1, "z": 1, "skeleton_id": 1, "prepost": 1,
                  "partner_skeleton_id": 1, "synapse_site": 1}  # fmt: skip
    sites: dict[Any, list[dict]] = {}
    for index, doc in enumerate(db[SYNAPSES].find(query, projection)):
        key = doc.get("synapse_site", ("alone", index))
        sites.setdefault(key, []).append(doc)
    if not sites:
        where = f" of volume {volume!r}" if volume is not None else ""
        raise ConnectoError(
            f"{source}: database {db.name!r} has no synapses{where} (write them with "
            "`connecto data synthesize-barcodes --synapses N --db NAME`)"
        )
    centres, pre, post = [], [], []
    for key in sorted(sites, key=str):
        docs = sites[key]
        centres.append(np.mean([[d["z"], d["y"], d["x"]] for d in docs], axis=0))
        pre_doc = next((d for d in docs if d.get("prepost") != "post"), docs[0])
        post_doc = next((d for d in docs if d.get("prepost") == "post"), None)
        pre.append(int(pre_doc["skeleton_id"]))
        partner = pre_doc.get("partner_skeleton_id")
        post.append(int(post_doc["skeleton_id"]) if post_doc else int(partner or 0))
    return GroundTruth(np.asarray(centres, float), np.asarray(pre, np.int64),
                       np.asarray(post, np.int64))  # fmt: skip


@dataclass
class Detections:
    """Detected synapses: centres (n, 3) z, y, x nm, sizes (voxels), scores, and the
    assigned pre/post neuron ids (0 where not assigned)."""

    centres: np.ndarray
    sizes: np.ndarray
    scores: np.ndarray
    pre: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    post: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        n = len(self.centres)
        self.centres = np.asarray(self.centres, float).reshape(n, 3)
        if len(self.pre) != n:
            self.pre = np.zeros(n, np.int64)
        if len(self.post) != n:
            self.post = np.zeros(n, np.int64)

    def __len__(self) -> int:
        return len(self.centres)

    def above(self, score: float) -> Detections:
        keep = self.scores >= score
        return Detections(self.centres[keep], self.sizes[keep], self.scores[keep],
                          self.pre[keep], self.post[keep])  # fmt: skip


def probabilities(prediction: Array, roi: Roi) -> np.ndarray:
    """(2, z, y, x) float32 in [0, 1]: mask and contour of a `synapse_probability`
    prediction (uint8 as value * 255, or float) over `roi`."""
    values = prediction.to_ndarray(roi, fill_value=0).astype(np.float32)
    if np.issubdtype(prediction.dtype, np.integer):
        values /= 255.0
    return values


def split_by_contour(
    mask: np.ndarray, probability: np.ndarray, contour: np.ndarray, contour_threshold: float
) -> np.ndarray:  # fmt: skip
    """Labels of the voxels of `mask`: the cores (mask voxels the `contour` probability does
    not claim, 6-connected components) are seeds, and every mask voxel joins the core it
    reaches first through the mask (watershed on the mask probability); a component
    without a core stays whole. Two touching synapses' masks join, their outlines between
    them do not."""
    from skimage.segmentation import watershed

    cores = cc3d.connected_components(mask & (contour < contour_threshold), connectivity=6)
    labels = watershed(-probability, markers=cores, mask=mask).astype(np.int64)
    coreless = cc3d.connected_components(mask & (labels == 0), connectivity=26)
    return np.where(coreless > 0, coreless.astype(np.int64) + labels.max(), labels)


def find_detections(
    probability: np.ndarray, voxel_size: Sequence[int], offset: Sequence[int], threshold: float,
    min_voxels: int = 1, score: str = "max", contour: np.ndarray | None = None,
    contour_threshold: float = 0.5,
) -> Detections:  # fmt: skip
    """Connected components of `probability` (z, y, x, values in [0, 1]) above
    `threshold`, with at least `min_voxels` voxels; centres in nm (voxel centres, weighted
    by probability). With `contour` (the contour channel, same shape), components are
    split along it (`split_by_contour`)."""
    probability = np.asarray(probability, dtype=np.float32)
    mask = probability > threshold
    if contour is None:
        components = cc3d.connected_components(mask, connectivity=26)
    else:
        components = split_by_contour(mask, probability, np.asarray(contour), contour_threshold)
    count = int(components.max())
    if count == 0:
        return Detections(np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0))
    index = np.arange(1, count + 1)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    centres_vox = np.asarray(ndimage.center_of_mass(probability, components, index)).reshape(-1, 3)
    if score == "max":
        scores = np.asarray(ndimage.maximum(probability, components, index), float)
    else:
        scores = np.asarray(ndimage.mean(probability, components, index), float)
    keep = sizes >= min_voxels
    size = np.asarray(voxel_size, float)
    centres = np.asarray(offset, float) + (centres_vox[keep] + 0.5) * size
    return Detections(centres, sizes[keep].astype(np.int64), scores[keep])


def assign_neurons(
    detections: Detections, segmentation: Array, markers: Array | None, radius_nm: float
) -> Detections:  # fmt: skip
    """`detections` with `pre`/`post` set from the segments within `radius_nm` of each
    centre (0 = background left out): the pair is the two segments under the most marker
    signal (both channels, above the neighbourhood's median); of the two, the one with
    more pre than post signal is presynaptic. Without markers, or with signal on fewer
    than two segments, the two most frequent segments (the more frequent one as pre)."""
    voxel_size = Coordinate(segmentation.voxel_size)
    reach = Coordinate(int(np.ceil(radius_nm / v)) * v for v in voxel_size)
    pre = np.zeros(len(detections), np.int64)
    post = np.zeros(len(detections), np.int64)
    for i, centre in enumerate(detections.centres):
        roi = Roi(voxel_origin(voxel_size, centre), voxel_size).grow(reach, reach)
        labels = segmentation.to_ndarray(roi, fill_value=0)
        axes = [(np.arange(s) + 0.5) * v + b - c for s, v, b, c
                in zip(labels.shape, voxel_size, roi.begin, centre, strict=True)]  # fmt: skip
        dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
        near = (dz**2 + dy**2 + dx**2 <= radius_nm**2) & (labels > 0)
        ids, inverse, counts = np.unique(labels[near], return_inverse=True, return_counts=True)
        if len(ids) == 0:
            continue
        by_count = [int(ids[j]) for j in np.argsort(-counts, kind="stable")[:2]]
        pair = by_count + [0] * (2 - len(by_count))
        if markers is not None and len(ids) > 1:
            signal = markers.to_ndarray(roi, fill_value=0).astype(np.float64)[:, near]
            excess = np.clip(signal - np.median(signal, axis=1, keepdims=True), 0, None)
            sums = [np.bincount(inverse, weights=excess[c], minlength=len(ids)) for c in (0, 1)]
            total = sums[0] + sums[1]
            if np.count_nonzero(total) >= 2:
                # the two segments under the most marker signal; the one with more pre
                # than post signal (relative to the other) is presynaptic
                top = np.argsort(-total, kind="stable")[:2]
                bias = sums[0][top] - sums[1][top]
                first, second = top if bias[0] >= bias[1] else top[::-1]
                pair = [int(ids[first]), int(ids[second])]
        pre[i], post[i] = pair
    return Detections(detections.centres, detections.sizes, detections.scores, pre, post)


def detection_id(collection: str, index: int) -> int:
    """A stable 63-bit id per collection and detection."""
    digest = hashlib.blake2b(f"{collection}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def write_detections(
    db: Database, collection: str, detections: Detections, source: dict[str, Any]
) -> int:  # fmt: skip
    """Replace `db[collection]` by one synapse-schema document per detection (`skeleton_id`
    the presynaptic neuron, `partner_skeleton_id` the postsynaptic one, 0 unassigned;
    `confidence` the score), each with `source` (the run that made it). Returns the count."""
    if not collection.startswith(DETECTION_PREFIX):
        collection = DETECTION_PREFIX + collection
    db.drop_collection(collection)
    db.create_collection(collection, validator=validator(SYNAPSES), validationLevel="strict",
                         validationAction="error")  # fmt: skip
    db[collection].create_indexes(index_models(SYNAPSES))
    docs = []
    for index in range(len(detections)):
        z, y, x = (float(v) for v in detections.centres[index])
        docs.append({
            "synapse_id": detection_id(collection, index), "x": x, "y": y, "z": z,
            "skeleton_id": int(detections.pre[index]),
            "partner_skeleton_id": int(detections.post[index]),
            "confidence": float(detections.scores[index]), "score": float(detections.scores[index]),
            "size_voxels": int(detections.sizes[index]), "source": source,
        })  # fmt: skip
    if docs:
        db[collection].insert_many(docs)
    return len(docs)


def read_detections(
    db: Database, collection: str, min_score: float | None = None
) -> tuple[Detections, dict[str, Any]]:  # fmt: skip
    """The detections of `db[collection]` (score >= `min_score` when given), sorted by
    synapse id, and the `source` they record."""
    if collection not in db.list_collection_names():
        available = [c for c in db.list_collection_names() if c.startswith(DETECTION_PREFIX)]
        raise ConnectoError(
            f"database {db.name!r} has no detections {collection!r} (available: "
            f"{', '.join(sorted(available)) or 'none'}; `connecto predict` writes them)"
        )
    query = {} if min_score is None else {"score": {"$gte": float(min_score)}}
    docs = list(db[collection].find(query, {"_id": 0}).sort("synapse_id", 1))
    source = docs[0].get("source", {}) if docs else {}
    if not docs:
        first = db[collection].find_one({}, {"source": 1})
        source = (first or {}).get("source", {})
    detections = Detections(
        np.asarray([[d["z"], d["y"], d["x"]] for d in docs], float).reshape(-1, 3),
        np.asarray([d.get("size_voxels", 0) for d in docs], np.int64),
        np.asarray([d.get("score", d.get("confidence") or 0.0) for d in docs], float),
        np.asarray([d["skeleton_id"] for d in docs], np.int64),
        np.asarray([d.get("partner_skeleton_id", 0) for d in docs], np.int64),
    )
    return detections, source
