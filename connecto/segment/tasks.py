"""volara's blockwise fragment and edge tasks writing to the MongoDB segment graph.

volara types its `db` field as SQLite | PostgreSQL; these subclasses take a connecto
`MongoDB` instead and keep block progress in the graph's `blocks` collection (instead of
a zarr beside the logs), so a rerun skips every block a previous run finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import daisy
import networkx as nx
import numpy as np
from volara.blockwise import AffAgglom, ExtractFrags, Relabel

from connecto import ConnectoError
from connecto.db.columns import packed_pairs
from connecto.db.graph import MongoDB, MongoDBGraphDataBase
from connecto.db.tracking import now

MEAN_AFFINITY = "mean_affinity"
MERGE_SCORE = "merge_score"


class MongoBlockBookkeeping:
    """Block done/check functions backed by the graph's `blocks` collection."""

    db: MongoDB
    task_name: str

    def _graph(self) -> MongoDBGraphDataBase:
        return self.db.open("r+")

    def init_block_array(self) -> None:
        """Nothing to prepare: the `blocks` collection exists with the graph."""

    def check_block_func(self) -> Callable[[daisy.Block], bool]:
        graph = self._graph()

        def check_block(block: daisy.Block) -> bool:
            return graph.block_done(self.task_name, block.block_id[1])

        return check_block

    def mark_block_done_func(self) -> Callable[[daisy.Block], None]:
        graph = self._graph()

        def mark_block_done(block: daisy.Block) -> None:
            if block.status != daisy.BlockStatus.FAILED:
                roi = [list(block.write_roi.offset), list(block.write_roi.shape)]
                graph.mark_block_done(self.task_name, block.block_id[1], roi=roi, finished=now())
                block.status = daisy.BlockStatus.SUCCESS

        return mark_block_done


class GraphExtractFrags(MongoBlockBookkeeping, ExtractFrags):
    """Fragments by mutex watershed per block; one node per fragment (position, size)."""

    db: MongoDB  # type: ignore[assignment]


class GraphAffAgglom(MongoBlockBookkeeping, AffAgglom):
    """Edges between touching fragments with their mean affinity and merge score
    (1 - mean affinity: low scores merge first)."""

    db: MongoDB  # type: ignore[assignment]

    def agglomerate(self, affs: np.ndarray, frags: np.ndarray, rag: nx.Graph) -> None:
        """volara's edges and scores, computed on the boundary voxels only."""
        offsets = [tuple(o) for o in self.affs_data.neighborhood or []]
        for name, neighborhood in self.scores.items():
            channels = [offsets.index(tuple(o)) for o in neighborhood]
            u, v, mean = boundary_mean_affinities(
                affs[channels], frags, [offsets[c] for c in channels]
            )
            for a, b, score in zip(u.tolist(), v.tolist(), mean.tolist(), strict=True):
                rag.add_edge(a, b, **{name: score})
        for _, _, data in rag.edges(data=True):
            if MEAN_AFFINITY in data:
                data[MERGE_SCORE] = 1.0 - float(data[MEAN_AFFINITY])


def boundary_mean_affinities(
    affs: np.ndarray, frags: np.ndarray, offsets: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pair of different fragments (u < v, both non-zero) that a voxel and its
    neighbour at one of `offsets` join, the mean of those voxels' affinities (channel i
    of `affs` holds the affinity of each voxel to its neighbour at `offsets[i]`).

    The same numbers as volara's `AffAgglom.agglomerate`, which labels every voxel of
    the block and sorts them all; only the voxels on a fragment boundary take part here,
    a few percent of the block."""
    lows, highs, values = [], [], []
    for channel, offset in zip(affs, offsets, strict=True):
        base = tuple(slice(-m if m < 0 else None, -m if m > 0 else None) for m in offset)
        moved = tuple(slice(m if m > 0 else None, m if m < 0 else None) for m in offset)
        here, there = frags[base], frags[moved]
        boundary = (here != there) & (here > 0) & (there > 0)
        here, there = here[boundary], there[boundary]
        lows.append(np.minimum(here, there))
        highs.append(np.maximum(here, there))
        values.append(channel[base][boundary].astype(np.float64))
    low, high = np.concatenate(lows).astype(np.uint64), np.concatenate(highs).astype(np.uint64)
    if high.size and int(high.max()) < 2**32:
        packed, inverse = np.unique(packed_pairs(low, high), return_inverse=True)
        unique_low, unique_high = packed >> np.uint64(32), packed & np.uint64(2**32 - 1)
    else:
        pairs, inverse = np.unique(np.stack([low, high], axis=1), axis=0, return_inverse=True)
        unique_low, unique_high = pairs[:, 0], pairs[:, 1]
    inverse = inverse.reshape(-1)
    sums = np.bincount(inverse, weights=np.concatenate(values), minlength=unique_low.size)
    counts = np.bincount(inverse, minlength=unique_low.size)
    return unique_low, unique_high, sums / np.maximum(counts, 1)


class SegmentRelabel(Relabel):
    """volara's Relabel, named by its output so thresholds do not share progress."""

    task_type: Literal["relabel"] = "relabel"

    @property
    def task_name(self) -> str:
        return f"{self.seg_data.store.parent.name}-{self.seg_data.name}-relabel"

    def map_block(self, block: daisy.Block, frags: Any, segs: Any, mapping: np.ndarray) -> None:
        segs[block.write_roi] = apply_lut(frags.to_ndarray(block.write_roi), mapping)


def apply_lut(data: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Replace each value found in `lut[0]` by `lut[1]`; others stay (vectorised: volara's
    numba loop costs a compilation in every worker)."""
    order = np.argsort(lut[0])
    keys, values = lut[0][order], lut[1][order]
    if keys.size == 0:
        return data.copy()
    index = np.clip(np.searchsorted(keys, data), 0, keys.size - 1)
    return np.where(keys[index] == data, values[index], data).astype(data.dtype)


def run_task(task: Any, what: str) -> None:
    """Run a volara task blockwise; a block that failed after daisy's retries is an
    error, never a quiet success."""
    parallel = task.num_workers > 1
    # volara's serial path uses a daisy 1.x monitor that daisy 2 lacks: run it here
    with task.task(multiprocessing=parallel) as daisy_task:
        succeeded = daisy.run_blockwise([daisy_task], multiprocessing=parallel)
    if not succeeded:
        raise ConnectoError(
            f"{what}: some blocks failed (see the worker logs under the logs directory); "
            "rerun to retry them, finished blocks are skipped"
        )
