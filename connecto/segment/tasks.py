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
        super().agglomerate(affs, frags, rag)
        for _, _, data in rag.edges(data=True):
            if MEAN_AFFINITY in data:
                data[MERGE_SCORE] = 1.0 - float(data[MEAN_AFFINITY])


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
