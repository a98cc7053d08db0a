"""Hierarchical agglomeration of one block's fragments with waterz, as in the LSD
pipeline: waterz merges the block's fragments in order of its merge function (e.g. the
median affinity along their boundary) until everything that touches is one; every edge
of the region adjacency graph then records the score at which its two fragments ended
up in one region. Thresholding those scores globally (connected components of the
edges below a threshold) reproduces waterz's segmentation at that threshold, blockwise.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

# waterz's C++ merge functions, compiled ahead of time in its wheels
MERGE_FUNCTIONS = {
    "mean": "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>",
    **{
        f"hist_quant_{q}": f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, "
        "ScoreValue, 256>>"
        for q in range(10, 100, 5)
    },
}
UNMERGED = 1.0  # the score of fragments that never merge


def waterz_affinities(affs: np.ndarray, neighborhood: list[tuple[int, int, int]]) -> np.ndarray:
    """The three nearest-neighbour channels in waterz's convention (channel d at voxel p:
    affinity between p and p - e_d), float32, from connecto's (channel at p: affinity
    between p and p + offset; offsets +e_d or -e_d)."""
    out = np.zeros((3, *affs.shape[1:]), dtype=np.float32)
    for d in range(3):
        unit = tuple(int(i == d) for i in range(3))
        if unit in neighborhood:  # shift by one voxel along d
            source = affs[neighborhood.index(unit)]
            target = tuple(slice(1, None) if i == d else slice(None) for i in range(3))
            moved = tuple(slice(None, -1) if i == d else slice(None) for i in range(3))
            out[d][target] = source[moved]
        elif tuple(-u for u in unit) in neighborhood:
            out[d] = affs[neighborhood.index(tuple(-u for u in unit))]
        else:
            raise ValueError(f"the neighborhood {neighborhood} has no offset along axis {d}")
    return out


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """waterz prints a line per call from C++; keep it out of the logs."""
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def agglomerate_fragments(
    affs: np.ndarray, fragments: np.ndarray, merge_function: str, threshold: float = 1.0
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Run waterz on `fragments` (uint64) with `affs` in waterz's convention up to
    `threshold`; returns the fragment ids (ascending, without 0), the block's fragments
    relabelled to 1..n (0 stays 0), and the merge history in those labels."""
    ids = np.unique(fragments)
    ids = ids[ids != 0]
    local = np.searchsorted(ids, fragments).astype(np.uint64) + np.uint64(1)
    local[fragments == 0] = 0
    if ids.size < 2:
        return ids, local, []
    import waterz  # compiled; only the workers need it

    with quiet_stdout():
        generator = waterz.agglomerate(
            np.ascontiguousarray(affs, dtype=np.float32), [threshold],
            fragments=local.copy(), scoring_function=MERGE_FUNCTIONS[merge_function],
            discretize_queue=256, return_merge_history=True,
        )  # fmt: skip
        _, history = next(generator)
        for _ in generator:  # let waterz finish and free its state
            pass
    return ids, local, history


def merge_scores(n_fragments: int, history: list[dict], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """For each pair (u[i], v[i]) of local labels (1..n), the score of the merge that
    first put them in one region, `UNMERGED` if none did. Union by size with the pending
    pairs of the smaller region checked at each merge: O(pairs log n)."""
    scores = np.full(len(u), UNMERGED, dtype=np.float64)
    parent = list(range(n_fragments + 1))
    members: dict[int, list[int]] = {i: [i] for i in range(n_fragments + 1)}
    pending: dict[int, list[int]] = {i: [] for i in range(n_fragments + 1)}
    for index, (a, b) in enumerate(zip(u.tolist(), v.tolist(), strict=True)):
        pending[a].append(index)
        pending[b].append(index)
    region = {i: i for i in range(n_fragments + 1)}  # waterz's region id -> our root

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for merge in history:
        ra, rb = root(region[int(merge["a"])]), root(region[int(merge["b"])])
        if ra == rb:
            continue
        if len(members[ra]) < len(members[rb]):
            ra, rb = rb, ra  # rb is the smaller
        still = []
        for index in pending.pop(rb):
            if scores[index] != UNMERGED:
                continue
            other = v[index] if root(int(u[index])) == rb else u[index]
            if root(int(other)) == ra:
                scores[index] = float(merge["score"])
            else:
                still.append(index)
        parent[rb] = ra
        members[ra].extend(members.pop(rb))
        pending[ra].extend(still)
        region[int(merge["c"])] = ra
    return scores


def boundary_statistics(
    n_fragments: int, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> list[dict[int, list[float]]]:
    """Per fragment, its neighbours' [affinity sum, count] over their shared boundary,
    summed over the edge rows of every block (one list shared by both ends)."""
    neighbours: list[dict[int, list[float]]] = [{} for _ in range(n_fragments + 1)]
    rows = zip(u.tolist(), v.tolist(), sums.tolist(), counts.tolist(), strict=True)
    for a, b, total, count in rows:
        if a == b or count == 0:
            continue
        stats = neighbours[a].setdefault(b, [0.0, 0.0])
        stats[0] += total
        stats[1] += count
        neighbours[b][a] = stats
    return neighbours


def mean_affinity_history(
    n_fragments: int, u: np.ndarray, v: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> list[dict]:
    """waterz's `mean` agglomeration on a region adjacency graph instead of a volume:
    fragments 1..n, edge i joins u[i] and v[i] with `counts[i]` boundary voxel pairs
    whose affinities add up to `sums[i]`. Regions merge in order of 1 - mean affinity of
    their whole boundary, recomputed after every merge, until only unaffine boundaries
    remain. The statistics are exact sums over the blocks, so this equals waterz on the
    whole volume (with the same fragments), blockwise. Returns the merge history in
    waterz's form ({a, b, c, score})."""
    neighbours = boundary_statistics(n_fragments, u, v, sums, counts)
    queue = [
        (1.0 - stats[0] / stats[1], a, b)
        for a in range(n_fragments + 1)
        for b, stats in neighbours[a].items()
        if a < b
    ]
    heapq.heapify(queue)
    alive = [True] * (n_fragments + 1)
    history = []
    while queue:
        score, a, b = heapq.heappop(queue)
        if score >= UNMERGED:
            break
        if not (alive[a] and alive[b]) or b not in neighbours[a]:
            continue
        stats = neighbours[a][b]
        if 1.0 - stats[0] / stats[1] != score:
            continue  # stale: the boundary changed since this entry was queued
        if len(neighbours[a]) < len(neighbours[b]):
            a, b = b, a  # b, the region with fewer neighbours, joins a
        del neighbours[a][b]
        for x, other in neighbours[b].items():
            if x == a:
                continue
            del neighbours[x][b]
            joined = neighbours[a].get(x)
            if joined is None:
                neighbours[a][x] = neighbours[x][a] = joined = other
            else:
                joined[0] += other[0]
                joined[1] += other[1]
            heapq.heappush(queue, (1.0 - joined[0] / joined[1], min(a, x), max(a, x)))
        neighbours[b] = {}
        alive[b] = False
        history.append({"a": a, "b": b, "c": a, "score": score})
    return history
