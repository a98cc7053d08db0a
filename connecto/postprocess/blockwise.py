"""volara's blockwise fragment and edge tasks writing to the MongoDB segment graph.

volara types its `db` field as SQLite | PostgreSQL; these subclasses take a connecto
`MongoDB` instead and keep block progress in the graph's `blocks` collection (instead of
a zarr beside the logs), so a rerun skips every block a previous run finished.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import daisy
import networkx as nx
import numpy as np
from volara.blockwise import AffAgglom, ExtractFrags, Relabel
from volara.logging import get_log_basedir

from connecto import ConnectoError
from connecto.db.columns import packed_pairs
from connecto.db.graph import MongoDB, MongoDBGraphDataBase
from connecto.db.tracking import now
from connecto.launch.workers import WorkerGroup
from connecto.postprocess.agglomerate import agglomerate_fragments, merge_scores, waterz_affinities
from connecto.postprocess.fragments import (
    nearest_neighbour_channels,
    remove_small_fragments,
    watershed_from_affinities,
)
from connecto.processes import worker_dies_with_parent

MEAN_AFFINITY = "mean_affinity"
AFFINITY_COUNT = "affinity_count"  # voxel pairs on the boundary: mean x count is exact
MERGE_SCORE = "merge_score"
GLOBAL_MEAN = "mean"  # the merge function agglomerated globally from the stored means


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
    """Fragments per block (with context), one node per fragment (position, size):
    the LSD watershed on the boundary distance, or volara's mutex watershed."""

    db: MongoDB  # type: ignore[assignment]
    method: Literal["watershed", "mutex_watershed"] = "watershed"
    seed_distance: int = 4
    boundary_threshold: float = 0.5
    fragments_in_xy: bool = False
    boundary_weight: float = 0.0
    epsilon_agglomerate: float = 0.0
    merge_function: str = "hist_quant_50"
    min_fragment_size: int = 0

    def compute_fragments(self, affs_data: np.ndarray) -> np.ndarray:
        if self.method == "mutex_watershed":
            fragments = super().compute_fragments(affs_data)
        else:
            neighborhood = [tuple(o) for o in self.neighborhood or []]
            fragments = watershed_from_affinities(
                affs_data, neighborhood, self.seed_distance, self.boundary_threshold,
                self.fragments_in_xy, self.boundary_weight,
            )  # fmt: skip
            if self.epsilon_agglomerate > 0:
                fragments = epsilon_agglomerate(
                    affs_data, neighborhood, fragments, self.merge_function,
                    self.epsilon_agglomerate,
                )  # fmt: skip
        return remove_small_fragments(fragments, self.min_fragment_size)


class GraphAffAgglom(MongoBlockBookkeeping, AffAgglom):
    """Edges between touching fragments with their mean affinity, the number of voxel
    pairs it averages, and a merge score (low scores merge first): 1 - mean affinity
    for the global `mean` agglomeration, else (the LSD pipeline) the score at which
    waterz's agglomeration of the block with context joined the two fragments
    (`UNMERGED` if it never did)."""

    db: MongoDB  # type: ignore[assignment]
    merge_function: str = "hist_quant_50"

    def agglomerate(self, affs: np.ndarray, frags: np.ndarray, rag: nx.Graph) -> None:
        """volara's edges and mean affinities, computed on the boundary voxels only,
        plus waterz's merge scores."""
        offsets = [tuple(o) for o in self.affs_data.neighborhood or []]
        pairs = set()
        for name, neighborhood in self.scores.items():
            channels = [offsets.index(tuple(o)) for o in neighborhood]
            u, v, sums, counts = boundary_affinity_sums(
                affs[channels], frags, [offsets[c] for c in channels]
            )
            mean = sums / np.maximum(counts, 1)
            for a, b, score, count in zip(u.tolist(), v.tolist(), mean.tolist(),
                                          counts.tolist(), strict=True):  # fmt: skip
                rag.add_edge(a, b, **{name: score})
                if name == MEAN_AFFINITY:
                    rag.edges[a, b][AFFINITY_COUNT] = count
                    rag.edges[a, b][MERGE_SCORE] = 1.0 - score
                pairs.add((a, b))
        if not pairs or self.merge_function == GLOBAL_MEAN:
            return  # the agglomeration is global, on the stored sums (extract)
        nearest = nearest_neighbour_channels(offsets)
        ids, _, history = agglomerate_fragments(
            waterz_affinities(affs[nearest], [offsets[c] for c in nearest]), frags,
            self.merge_function,
        )  # fmt: skip
        edges = np.array(sorted(pairs), dtype=np.uint64)
        local = np.searchsorted(ids, edges) + 1  # the labels waterz's history uses
        scores = merge_scores(ids.size, history, local[:, 0], local[:, 1])
        for (a, b), score in zip(edges.tolist(), scores.tolist(), strict=True):
            rag.edges[a, b][MERGE_SCORE] = score


def epsilon_agglomerate(
    affs: np.ndarray,
    neighborhood: list[tuple[int, ...]],
    fragments: np.ndarray,
    merge_function: str,
    threshold: float,
) -> np.ndarray:
    """The block's fragments merged by waterz up to `threshold` (a small one: the
    obvious merges, so fewer fragments reach the graph)."""
    nearest = nearest_neighbour_channels(neighborhood)
    affs = waterz_affinities(affs[nearest], [neighborhood[c] for c in nearest])
    _, local, history = agglomerate_fragments(affs, fragments, merge_function, threshold)
    lut = np.arange(local.max() + 1, dtype=np.uint64)
    for merge in history:  # waterz's region c absorbs a and b
        lut[lut == merge["a"]] = merge["c"]
        lut[lut == merge["b"]] = merge["c"]
    return lut[local]


def boundary_mean_affinities(
    affs: np.ndarray, frags: np.ndarray, offsets: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every pair of different fragments (u < v, both non-zero) that a voxel and its
    neighbour at one of `offsets` join, the mean of those voxels' affinities (channel i
    of `affs` holds the affinity of each voxel to its neighbour at `offsets[i]`).

    The same numbers as volara's `AffAgglom.agglomerate`, which labels every voxel of
    the block and sorts them all; only the voxels on a fragment boundary take part here,
    a few percent of the block."""
    u, v, sums, counts = boundary_affinity_sums(affs, frags, offsets)
    return u, v, sums / np.maximum(counts, 1)


def boundary_affinity_sums(
    affs: np.ndarray, frags: np.ndarray, offsets: list[tuple[int, ...]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`boundary_mean_affinities` as sums and counts of affinities per pair."""
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
    return unique_low, unique_high, sums, counts


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


def run_task(task: Any, what: str, workers: WorkerGroup | None = None) -> None:
    """Run a volara task blockwise; a block that failed after daisy's retries is an
    error, never a quiet success. Workers are placed as the setup's `worker_config.toml`
    says (`connecto.launch.workers`; found beside the logs directory unless `workers` is
    given), else they are local processes that die with this one."""
    group = workers if workers is not None else worker_group()
    parallel = task.num_workers > 1 or group is not None
    # volara's serial path uses a daisy 1.x monitor that daisy 2 lacks: run it here
    with task.task(multiprocessing=parallel) as daisy_task:
        run_daisy_task(daisy_task, what, parallel, group)


def worker_group() -> WorkerGroup | None:
    """The remote workers of a run logging under `<setup>/logs` (see `logs_in`)."""
    log_dir = get_log_basedir()
    return WorkerGroup.for_logs(Path(log_dir)) if log_dir is not None else None


def run_daisy_task(
    daisy_task: daisy.Task, what: str, parallel: bool, group: WorkerGroup | None = None
) -> None:
    """Run one daisy task with its workers as `group` places them (None: local processes,
    `parallel` or in this process); raise naming the blocks that are still not done."""
    if group is not None:
        daisy_task.process_function = group.spawner(daisy_task.process_function, daisy_task.task_id)
    elif parallel:
        daisy_task.process_function = worker_dies_with_parent(daisy_task.process_function)
    with group.running() if group is not None else contextlib.nullcontext():
        try:
            if group is not None:  # never raises for a task daisy gave up: its state says
                states = daisy.Server().run_blockwise([daisy_task])
            else:
                states = daisy.run_blockwise([daisy_task], multiprocessing=parallel,
                                             return_states=True)  # fmt: skip
        except RuntimeError as error:  # daisy gave up: its workers kept failing
            states = {"": str(error).strip().splitlines()[0]}
    state = states.get(daisy_task.task_id)
    if state is not None and state.completed_count == state.total_block_count:
        return
    raise ConnectoError(failure_message(daisy_task, what, group, state or states.get("")))


def unfinished_blocks(daisy_task: daisy.Task) -> list[int] | None:
    """The ids of the task's blocks that its check function does not find done (None
    without a check function)."""
    check = daisy_task.check_function
    if check is None:
        return None
    graph = daisy.BlockwiseDependencyGraph(
        daisy_task.task_id, daisy_task.read_roi, daisy_task.write_roi,
        daisy_task.read_write_conflict, daisy_task.fit, total_read_roi=daisy_task.total_roi,
    )  # fmt: skip
    return sorted(b.block_id[1] for b, _ in graph.enumerate_all_dependencies() if not check(b))


def error_line(text: str) -> str:
    """The line of a traceback (or a log tail) that names the error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (named or lines or [""])[-1]


def failure_message(
    daisy_task: daisy.Task, what: str, group: WorkerGroup | None, state: Any
) -> str:
    """One line: which blocks are not done, why daisy stopped, where the logs are. `state`
    is daisy's TaskState, or the message daisy raised with."""
    missing = unfinished_blocks(daisy_task)
    abandoned = state if isinstance(state, str) else None
    if state is not None and not isinstance(state, str) and state.abandoned:
        abandoned = (state.abandon_reason or "").strip().splitlines()[0]
        last = error_line(state.last_worker_error or "")
        if last:
            abandoned += f"; last worker error: {last}"
    tries = "" if abandoned else f" after {daisy_task.max_retries + 1} tries"
    if missing is None:
        blocks = "some blocks failed"
    else:
        shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
        blocks = f"{len(missing)} block(s) not done{tries} (block ids {shown})"
    log_dir = get_log_basedir()
    where = f"block tracebacks in {Path(log_dir) / daisy_task.task_id}/" if log_dir else ""
    if group is not None:
        failed = [j for j in group.jobs() if j["state"] not in ("completed", "cancelled")]
        where += f"; worker job logs in {group.directory}/"
        if failed:
            where += f" ({len(failed)} worker job(s) failed, e.g. {failed[-1]['log_path']})"
    gave_up = f" daisy gave up: {abandoned.rstrip('.')}." if abandoned else ""
    return f"{what}: {blocks};{gave_up} {where}; rerun to retry them, finished blocks are skipped"
