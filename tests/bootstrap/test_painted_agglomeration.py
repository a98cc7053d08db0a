"""Agglomeration under the painting's cannot-link constraints, checked by hand and, on
random graphs, against what such an agglomeration must give."""

from __future__ import annotations

import numpy as np
import pytest

from connecto.bootstrap.painted_agglomeration import agglomerate_with_painting
from connecto.bootstrap.pseudo_labels import merge_claimants
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks.segmentation.workflow import EdgeScores, lookup_table


def edges(ids: list[int], scored: list[tuple[int, int, float]]) -> EdgeScores:
    index = {f: i for i, f in enumerate(ids)}
    u, v, score = zip(*scored, strict=True)
    return EdgeScores(
        np.array(ids, np.uint64), np.array([index[f] for f in u]), np.array([index[f] for f in v]),
        np.array(score, float),
    )  # fmt: skip


def rows(*overlaps: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """(section, painted object, fragment, voxels) rows."""
    sections, objects, fragments, voxels = (np.array(c) for c in zip(*overlaps, strict=True))
    return (sections.astype(np.uint64), objects.astype(np.uint64),
            fragments.astype(np.uint64), voxels.astype(np.int64))  # fmt: skip


def mapping(lut: np.ndarray) -> dict[int, int]:
    return dict(zip(*lut.tolist(), strict=True))


# fragments 1-2-3-4 in a chain joined at 0.1, 0.3 and 0.5, and 2-5 at 0.4; 6 on its own
IDS = [1, 2, 3, 4, 5, 6]
GRAPH = edges(IDS, [(1, 2, 0.1), (2, 3, 0.3), (3, 4, 0.5), (2, 5, 0.4)])
SIZES = np.full(6, 10)
# section 0 paints object 7 on fragment 1 (and background) and object 8 on fragment 3;
# fragment 6 covers both objects 9 and 10 of section 4: a merge in the fragments already
PAINT = rows((0, 7, 1, 6), (0, 7, 0, 2), (0, 8, 3, 5), (4, 9, 6, 3), (4, 10, 6, 3))


def test_unions_the_painting_shows_to_be_merges_are_refused() -> None:
    ids = np.array(IDS, np.uint64)
    joined = agglomerate_with_painting(ids, SIZES, PAINT, GRAPH, 0.6, overlap=0.5)
    # 1-2 joins; 2-3 would put objects 7 and 8 of section 0 together: refused; 2-5 joins
    # (5 is unpainted) at 0.4; 3-4 joins at 0.5
    assert mapping(joined.lut) == {1: 1, 2: 1, 3: 3, 4: 3, 5: 1, 6: 6}
    assert (joined.merged, joined.refused) == (3, 1)
    # below the threshold only: 3-4 (0.5) waits
    assert mapping(agglomerate_with_painting(ids, SIZES, PAINT, GRAPH, 0.45, 0.5).lut)[4] == 4
    # a size limit refuses the union of 20 and 10 voxels
    small = agglomerate_with_painting(ids, SIZES, PAINT, GRAPH, 0.6, 0.5, max_size=25)
    assert mapping(small.lut) == {1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 6}
    # an object only 5 of 8 voxels inside fragment 1 is not claimed at overlap 0.7
    assert mapping(agglomerate_with_painting(ids, SIZES, PAINT, GRAPH, 0.6, 0.8).lut)[3] == 1


@pytest.mark.parametrize("seed", range(4))
def test_random_graphs_agglomerate_as_the_constraints_demand(seed: int) -> None:
    """Without painting the result is the plain agglomeration at the threshold; with it,
    every segment is connected by edges below the threshold, shows no painted merge
    unless it is one fragment, and every edge below the threshold left between two
    segments joins a pair whose union would show one."""
    rng = np.random.default_rng(seed)
    n = 60
    ids = np.sort(rng.choice(np.arange(1, 1000), n, replace=False)).astype(np.uint64)
    pairs = sorted({tuple(sorted(rng.choice(n, 2, replace=False).tolist())) for _ in range(120)})
    graph = EdgeScores(ids, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                       rng.random(len(pairs)))  # fmt: skip
    painted = [(int(rng.integers(3)), int(rng.integers(1, 15)), int(ids[rng.integers(n)]),
                int(rng.integers(1, 9))) for _ in range(80)]  # fmt: skip
    overlaps = rows(*painted)
    nothing = rows((0, 1, 0, 1))  # one painted voxel on background
    plain = agglomerate_with_painting(ids, np.ones(n), nothing, graph, 0.5, 0.5)
    np.testing.assert_array_equal(plain.lut, lookup_table(graph, 0.5))

    joined = agglomerate_with_painting(ids, np.ones(n), overlaps, graph, 0.5, 0.5).lut[1]
    below = graph.score < 0.5
    segments = apply_lut(overlaps[2], np.stack([ids, joined]))
    merges = set(merge_claimants(overlaps[0], overlaps[1], segments, overlaps[3], 0.5).tolist())
    for name in np.unique(joined):
        members = np.flatnonzero(joined == name)
        inside = below & np.isin(graph.iu, members) & np.isin(graph.iv, members)
        iu, iv = (np.searchsorted(members, end[inside]) for end in (graph.iu, graph.iv))
        sub = EdgeScores(ids[members], iu, iv, graph.score[inside])
        if len(members) > 1:
            assert len(np.unique(lookup_table(sub, 0.5)[1])) == 1  # connected
            assert name not in merges
    for u, v in zip(graph.iu[below], graph.iv[below], strict=True):
        if joined[u] != joined[v]:
            union = np.where(np.isin(joined, [joined[u], joined[v]]), joined[u], joined)
            segments = apply_lut(overlaps[2], np.stack([ids, union]))
            claimants = merge_claimants(overlaps[0], overlaps[1], segments, overlaps[3], 0.5)
            assert joined[u] in claimants.tolist()
