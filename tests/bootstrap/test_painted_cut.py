"""The painted cut of a merge hierarchy: each segment at the highest threshold at which
the painting shows it no merge, checked by hand and against a brute-force reading."""

from __future__ import annotations

import numpy as np
import pytest

from connecto.bootstrap.painted_cut import cut_hierarchy
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


# fragments 1-2-3-4 in a chain, joined at 0.1, 0.3 and 0.5; 5 on its own
IDS = [1, 2, 3, 4, 5]
CHAIN = edges(IDS, [(1, 2, 0.1), (2, 3, 0.3), (3, 4, 0.5)])
SIZES = np.full(5, 10)
# section 0 paints object 7 on fragment 1 and object 8 on fragment 3; fragment 5 covers
# both objects 9 and 10 of section 4 (a merge already in the fragments)
PAINT = rows((0, 7, 1, 6), (0, 7, 0, 2), (0, 8, 3, 5), (4, 9, 5, 3), (4, 10, 5, 3))


def test_each_segment_is_taken_at_the_highest_threshold_showing_no_merge() -> None:
    cut = cut_hierarchy(np.array(IDS, np.uint64), SIZES, PAINT, CHAIN, [0.2, 0.4, 0.6],
                        "connected_components", overlap=0.5)  # fmt: skip
    # 0.6: {1,2,3,4} holds objects 7 and 8 (a merge) and 5 is a merge itself;
    # 0.4: {1,2,3} still a merge, {4} passes; 0.2: {1,2} and {3} pass; 5 stays alone
    assert dict(zip(*cut.lut.tolist(), strict=True)) == {1: 1, 2: 1, 3: 3, 4: 4, 5: 5}
    assert cut.taken == {0.6: 0, 0.4: 1, 0.2: 2} and cut.alone == 1
    assert cut.summary() == {"0.2": 2, "0.4": 1, "alone": 1}
    # a size limit sends {1,2} (20 voxels) back to its fragments
    small = cut_hierarchy(np.array(IDS, np.uint64), SIZES, PAINT, CHAIN, [0.2, 0.4, 0.6],
                          "connected_components", overlap=0.5, max_size=15)  # fmt: skip
    assert dict(zip(*small.lut.tolist(), strict=True)) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    assert small.alone == 3


@pytest.mark.parametrize("seed", range(5))
def test_the_cut_is_the_highest_passing_segment_of_every_fragment(seed: int) -> None:
    """On random graphs and paintings: every segment of the cut is a segment of one
    threshold, shows no painted merge unless it is one fragment, and its segment at the
    next higher threshold shows one (nothing higher could have been taken)."""
    rng = np.random.default_rng(seed)
    n = 60
    ids = np.sort(rng.choice(np.arange(1, 1000), n, replace=False)).astype(np.uint64)
    pairs = {tuple(sorted(rng.choice(n, 2, replace=False).tolist())) for _ in range(120)}
    graph = EdgeScores(ids, np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                       rng.random(len(pairs)))  # fmt: skip
    painted = [(int(rng.integers(3)), int(rng.integers(1, 15)), int(ids[rng.integers(n)]),
                int(rng.integers(1, 9))) for _ in range(80)]  # fmt: skip
    overlaps = rows(*painted)
    thresholds = [0.2, 0.4, 0.6, 0.8]
    cut = cut_hierarchy(ids, np.ones(n), overlaps, graph, thresholds, "connected_components", 0.5)
    label = cut.lut[1]
    luts = {t: lookup_table(graph, t) for t in thresholds}

    def merges(t: float | None) -> set[int]:
        segments = overlaps[2] if t is None else apply_lut(overlaps[2], luts[t])
        return set(merge_claimants(overlaps[0], overlaps[1], segments, overlaps[3], 0.5).tolist())

    for name in np.unique(label):
        members = label == name
        at = [t for t in thresholds if set(np.flatnonzero(luts[t][1] == name)) ==
              set(np.flatnonzero(members))]  # fmt: skip
        passing = [t for t in at if name not in merges(t)]
        if not passing:  # a fragment alone: a merge at every threshold
            lowest = luts[min(thresholds)][1][members][0]
            assert members.sum() == 1 and lowest in merges(min(thresholds))
            continue
        taken = max(passing)
        higher = [t for t in thresholds if t > taken]
        if higher:
            parent = luts[min(higher)][1][np.flatnonzero(members)[0]]
            assert parent in merges(min(higher))
