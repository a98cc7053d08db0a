"""Balanced train/validation/test splits of whole groups (skeletons, hemilineages, brain regions).

A synapse's class is its own `label`, else its skeleton's one transmitter
(`connecto.db.synapses.synapse_class`). Every group goes entirely to one part, chosen so
that for every class the share of its synapses in each part is as close as possible to the
target fractions. That is a small assignment problem, solved as a mixed-integer program
with HiGHS (`scipy.optimize.milp`) under a time limit, with a greedy assignment as fallback
(kept whenever it is better).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from pymongo.database import Database
from tqdm import tqdm

from connecto import ConnectoError
from connecto.db.client import retry_write
from connecto.db.schema import SKELETONS, SYNAPSES, require_current_layout
from connecto.db.synapses import PARTS, class_of_skeletons, class_query, synapse_class
from connecto.names import check_name

GROUP_BY: tuple[str, ...] = ("skeleton", "hemilineage", "brain_region")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
# Near-perfect balances come within a second; proving optimality can take much longer.
DEFAULT_TIME_LIMIT_S = 1.0
WRITE_BATCH = 5000  # synapses per update: short server calls, cheap to resend


@dataclass
class SplitReport:
    name: str
    by: str
    classes: list[str]
    fractions: tuple[float, float, float]
    counts: dict[str, dict[str, int]]  # class -> part -> synapses
    groups: dict[str, int]  # part -> groups
    solver: str
    seconds: float  # planning (reading + solving)
    write_seconds: float = 0.0
    excluded: int = 0  # synapses of the classes without a group (no hemilineage / region)
    written: int = 0

    def share(self, name: str, part: str) -> float:
        total = sum(self.counts[name].values())
        return self.counts[name][part] / total if total else 0.0

    @property
    def max_deviation(self) -> float:
        return max(
            abs(self.share(c, p) - f)
            for c in self.classes
            for p, f in zip(PARTS, self.fractions, strict=True)
        )


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConnectoError(
            f"--fractions {text!r}: expected three numbers like 0.8,0.1,0.1"
        ) from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ConnectoError(
            f"--fractions {text!r}: expected three non-negative numbers (train, validation, "
            "test) summing to 1"
        )
    return values  # type: ignore[return-value]


def _group_counts(
    db: Database, by: str, skeleton_class: dict[int, str], chosen: list[str]
) -> tuple[dict[Any, dict[str, int]], dict[Any, list[int]], int]:
    """Per group: synapses per chosen class; per group: its skeletons; synapses of the
    chosen classes without a group."""
    wanted = set(chosen)
    # counted on the server: a few hundred rows back instead of every synapse
    key = {"s": "$skeleton_id", "r": "$brain_region", "l": "$label"}
    rows = []
    for row in db[SYNAPSES].aggregate([{"$group": {"_id": key, "n": {"$sum": 1}}}]):
        skeleton = row["_id"]["s"]
        name = synapse_class(
            {"skeleton_id": skeleton, "label": row["_id"].get("l")}, skeleton_class
        )
        if name in wanted:
            rows.append((skeleton, row["_id"].get("r"), name, row["n"]))
    hemi_lineage: dict[int, Any] = {}
    if by == "hemilineage":
        ids = sorted({skeleton for skeleton, _, _, _ in rows})
        for doc in db[SKELETONS].find(
            {"skeleton_id": {"$in": ids}}, {"skeleton_id": 1, "hemi_lineage_id": 1}
        ):
            hemi_lineage[doc["skeleton_id"]] = doc.get("hemi_lineage_id")
    counts: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    members: dict[Any, set[int]] = defaultdict(set)
    excluded = 0
    for skeleton, region, name, count in rows:
        if by == "skeleton":
            group = skeleton
        elif by == "hemilineage":
            group = hemi_lineage.get(skeleton)
        else:
            group = region
        if group is None:
            excluded += count
            continue
        counts[group][name] += count
        members[group].add(skeleton)
    return counts, {g: sorted(s) for g, s in members.items()}, excluded


class _Program:
    """The mixed-integer program over one vector of variables: x[g, p] = 1 when group g is
    in part p, then d[c, p] >= |share of class c in part p - target|, then t >= every d.
    Constraint rows are collected as lower <= row . variables <= upper."""

    def __init__(self, n: np.ndarray, fractions: np.ndarray) -> None:
        self.n = n
        self.fractions = fractions
        self.totals = n.sum(axis=0)
        self.groups, self.classes = n.shape
        self.parts = len(fractions)
        self.nx, self.nd = self.groups * self.parts, self.classes * self.parts
        self.nvar = self.nx + self.nd + 1
        self.t = self.nvar - 1
        self.rows: list[dict[int, float]] = []
        self.lower: list[float] = []
        self.upper: list[float] = []

    def x(self, g: int, p: int) -> int:
        return g * self.parts + p

    def d(self, c: int, p: int) -> int:
        return self.nx + c * self.parts + p

    def add(self, row: dict[int, float], lower: float, upper: float) -> None:
        self.rows.append(row)
        self.lower.append(lower)
        self.upper.append(upper)

    def add_constraints(self) -> None:
        for g in range(self.groups):  # each group in exactly one part
            self.add({self.x(g, p): 1 for p in range(self.parts)}, 1, 1)
        for c in range(self.classes):
            for p in range(self.parts):
                self.add_class_part(c, p)

    def add_class_part(self, c: int, p: int) -> None:
        carriers = np.nonzero(self.n[:, c])[0]
        f = self.fractions[p]
        share = {self.x(g, p): self.n[g, c] / self.totals[c] for g in carriers}
        self.add({**share, self.d(c, p): -1}, -np.inf, f)  # share - d <= f
        self.add({**share, self.d(c, p): 1}, f, np.inf)  # share + d >= f
        self.add({self.d(c, p): 1, self.t: -1}, -np.inf, 0)  # d <= t
        if f > 0:  # every class present in every non-empty part
            self.add({self.x(g, p): 1 for g in carriers}, 1, np.inf)

    def constraints(self) -> Any:
        from scipy.optimize import LinearConstraint  # slow imports: only here
        from scipy.sparse import lil_matrix

        matrix = lil_matrix((len(self.rows), self.nvar))
        for r, row in enumerate(self.rows):
            for column, value in row.items():
                matrix[r, column] = value
        return LinearConstraint(matrix.tocsr(), self.lower, self.upper)

    def worst_deviation_cost(self) -> np.ndarray:
        cost = np.zeros(self.nvar)
        cost[self.t] = 1
        return cost

    def total_deviation_cost(self) -> np.ndarray:
        cost = np.zeros(self.nvar)
        cost[self.nx : self.nx + self.nd] = 1
        return cost

    def integrality(self) -> np.ndarray:
        integrality = np.zeros(self.nvar)
        integrality[: self.nx] = 1
        return integrality

    def bounds(self) -> Any:
        from scipy.optimize import Bounds

        upper = np.concatenate([np.ones(self.nx), np.full(self.nd + 1, np.inf)])
        return Bounds(np.zeros(self.nvar), upper)


def _solve_milp(
    n: np.ndarray, fractions: np.ndarray, time_limit_s: float
) -> tuple[np.ndarray | None, str]:
    """n: groups x classes synapse counts. Returns part index per group (or None) and status.

    Variables: x[g, p] binary (group g in part p), d[c, p] >= |share - target| and t >= every
    d. Two solves: the least worst deviation t, then, t held, the least sum of d. (One
    weighted sum K*t + sum(d) is not lexicographic: it traded a worse t for a smaller sum.)
    """
    from scipy.optimize import milp  # slow import: only here

    program = _Program(n, fractions)
    program.add_constraints()
    deadline = time.monotonic() + time_limit_s
    statuses = []
    best = None
    for cost in (program.worst_deviation_cost, program.total_deviation_cost):
        left = deadline - time.monotonic()
        if best is not None and left <= 0:
            break
        result = milp(
            cost(),
            constraints=program.constraints(),
            integrality=program.integrality(),
            bounds=program.bounds(),
            options={"time_limit": max(left, 0.1), "disp": False},
        )
        if result.x is None:
            if best is None:
                return None, f"milp: {result.message}"
            break
        best = result.x
        statuses.append(result.status == 0)
        worst = result.x[program.t]  # the second solve may not worsen it
        program.add({program.t: 1}, -np.inf, worst + 1e-9)
    assignment = best[: program.nx].reshape(program.groups, program.parts).argmax(axis=1)
    optimal = len(statuses) == 2 and all(statuses)
    return assignment, "milp optimal" if optimal else "milp best found (time limit)"


def _max_deviation(n: np.ndarray, assignment: np.ndarray, fractions: np.ndarray) -> float:
    totals = np.maximum(n.sum(axis=0), 1)
    shares = np.stack([n[assignment == p].sum(axis=0) / totals for p in range(len(fractions))])
    return float(np.abs(shares - fractions[:, None]).max())


def _solve_greedy(n: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Largest groups first, each to the part whose classes are furthest below target."""
    totals = np.maximum(n.sum(axis=0), 1)
    shares = n / totals  # share of each class a group carries
    filled = np.zeros((len(fractions), n.shape[1]))
    assignment = np.zeros(len(n), dtype=int)
    for g in np.argsort(-shares.max(axis=1), kind="stable"):
        carried = shares[g] > 0
        # deficit of each part over the classes this group carries
        gain = ((fractions[:, None] - filled) * carried).sum(axis=1)
        gain[fractions == 0] = -np.inf
        p = int(np.argmax(gain))
        assignment[g] = p
        filled[p] += shares[g]
    return assignment


@dataclass
class SplitPlan:
    """Which synapses go to which part: the report plus the write it needs."""

    report: SplitReport
    queries: dict[str, list[dict[str, Any]]]  # part -> synapse queries, one per write batch


@dataclass
class _Groups:
    """The groups to split, in solving order, with their synapses per chosen class."""

    order: list[Any]
    n: np.ndarray  # groups (in `order`) x classes synapse counts
    counts: dict[Any, dict[str, int]]  # group -> class -> synapses (every class)
    members: dict[Any, list[int]]  # group -> its skeletons
    excluded: int  # synapses of the classes without a group


def plan_split(
    db: Database,
    by: str,
    name: str,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    classes: list[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
) -> SplitPlan:
    """Choose the part of every group; writes nothing (see `make_split`)."""
    _check_request(db, by, name, fractions, overwrite)
    start = time.perf_counter()
    skeleton_class = class_of_skeletons(db)
    chosen = _chosen_classes(db, classes, skeleton_class)
    groups = _shuffled_groups(db, by, skeleton_class, chosen, seed)
    _check_enough_groups(groups, chosen, by, fractions)
    assignment, solver = _best_assignment(groups.n, np.array(fractions, dtype=float), time_limit_s)
    parts = [PARTS[p] for p in assignment]  # part of each group, in solving order
    report = _split_report(name, by, chosen, fractions, solver, groups, parts)
    queries = _write_queries(by, groups, parts, chosen, skeleton_class)
    report.seconds = time.perf_counter() - start
    return SplitPlan(report=report, queries=queries)


def _check_request(
    db: Database, by: str, name: str, fractions: tuple[float, ...], overwrite: bool
) -> None:
    if by not in GROUP_BY:
        raise ConnectoError(f"--by {by!r}: expected one of {', '.join(GROUP_BY)}")
    check_name("split name", name)
    require_current_layout(db)
    if len(fractions) != len(PARTS) or abs(sum(fractions) - 1) > 1e-6:
        raise ConnectoError(f"fractions {fractions}: expected three numbers summing to 1")
    key = f"splits.{name}"
    if not overwrite and db[SYNAPSES].find_one({key: {"$exists": True}}, {"_id": 1}):
        raise ConnectoError(
            f"split {name!r} already exists in database {db.name}; use --overwrite to replace it"
        )


def _chosen_classes(
    db: Database, classes: list[str] | None, skeleton_class: dict[int, str]
) -> list[str]:
    """The requested classes (each must be present), or every class present: synapse labels
    and the transmitters of skeletons with exactly one."""
    labels = [v for v in db[SYNAPSES].distinct("label") if isinstance(v, str)]
    present = sorted(set(skeleton_class.values()) | set(labels))
    if classes:
        missing = [c for c in classes if c not in present]
        if missing:
            raise ConnectoError(
                f"class(es) {', '.join(missing)} are neither a synapse label nor the one known "
                f"transmitter of a skeleton in database {db.name} (classes there: "
                f"{', '.join(present) or 'none'})"
            )
        chosen = list(classes)
    else:
        chosen = present
    if not chosen:
        raise ConnectoError(
            f"database {db.name} has no class: no synapse label and no skeleton with one "
            "known transmitter"
        )
    return chosen


def _shuffled_groups(
    db: Database, by: str, skeleton_class: dict[int, str], chosen: list[str], seed: int
) -> _Groups:
    counts, members, excluded = _group_counts(db, by, skeleton_class, chosen)
    order = sorted(counts, key=str)
    np.random.default_rng(seed).shuffle(order)
    n = np.array([[counts[g].get(c, 0) for c in chosen] for g in order], dtype=float)
    return _Groups(order=order, n=n, counts=counts, members=members, excluded=excluded)


def _check_enough_groups(
    groups: _Groups, chosen: list[str], by: str, fractions: tuple[float, ...]
) -> None:
    """Every class needs a group with its synapses in every non-empty part."""
    needed = sum(1 for f in fractions if f > 0)
    for c, class_name in enumerate(chosen):
        have = int((groups.n[:, c] > 0).sum()) if len(groups.n) else 0
        if have < needed:
            raise ConnectoError(
                f"class {class_name!r} has {have} {by} group(s) with synapses; "
                f"{needed} parts need at least {needed}"
            )


def _best_assignment(
    n: np.ndarray, target: np.ndarray, time_limit_s: float
) -> tuple[np.ndarray, str]:
    """Part index per group, and which solver chose it."""
    # The greedy answer is instant and often close; the program improves on it when it can.
    greedy = _solve_greedy(n, target)
    assignment, solver = _solve_milp(n, target, time_limit_s)
    if assignment is None or _max_deviation(n, greedy, target) < _max_deviation(
        n, assignment, target
    ):
        assignment, solver = greedy, f"greedy (better than {solver})"
    return assignment, solver


def _split_report(
    name: str,
    by: str,
    chosen: list[str],
    fractions: tuple[float, ...],
    solver: str,
    groups: _Groups,
    parts: list[str],
) -> SplitReport:
    """Groups and synapses per part (`seconds` is left to the caller)."""
    report = SplitReport(
        name=name,
        by=by,
        classes=chosen,
        fractions=tuple(fractions),  # type: ignore[arg-type]
        counts={c: {p: 0 for p in PARTS} for c in chosen},
        groups={p: 0 for p in PARTS},
        solver=solver,
        seconds=0.0,
        excluded=groups.excluded,
    )
    for g, part in enumerate(parts):
        report.groups[part] += 1
        for c, class_name in enumerate(chosen):
            report.counts[class_name][part] += int(groups.n[g, c])
    return report


def _write_queries(
    by: str, groups: _Groups, parts: list[str], chosen: list[str], skeleton_class: dict[int, str]
) -> dict[str, list[dict[str, Any]]]:
    """Per part: one query per write batch of its groups, for their synapses of the chosen
    classes (synapses of other classes in the same groups get no part)."""
    queries: dict[str, list[dict[str, Any]]] = {p: [] for p in PARTS}
    of_classes = class_query(chosen, skeleton_class) if by == "brain_region" else {}
    for part in PARTS:
        in_part = [group for group, p in zip(groups.order, parts, strict=True) if p == part]
        for batch in _batches(in_part, lambda g: sum(groups.counts[g].values())):
            if by == "brain_region":
                query = {"$and": [{"brain_region": {"$in": batch}}, of_classes]}
            else:
                skeletons = [s for group in batch for s in groups.members[group]]
                query = class_query(chosen, skeleton_class, skeletons)
            queries[part].append(query)
    return queries


def _batches(groups: list[Any], size: Callable[[Any], int]) -> Iterator[list[Any]]:
    """Groups in batches of about WRITE_BATCH synapses (a group is never cut)."""
    batch: list[Any] = []
    total = 0
    for group in groups:
        if batch and total + size(group) > WRITE_BATCH:
            yield batch
            batch, total = [], 0
        batch.append(group)
        total += size(group)
    if batch:
        yield batch


def write_split(
    db: Database, plan: SplitPlan, overwrite: bool = False, progress: bool = False
) -> SplitReport:
    """Write `splits.<name>`: first drop the old labels (with `overwrite`), then one update per
    batch of groups. The updates are idempotent, so a batch whose connection dropped is simply
    sent again; a run that died midway is completed by running the split with --overwrite."""
    start = time.perf_counter()
    report = plan.report
    key = f"splits.{report.name}"
    coll = db[SYNAPSES]
    total = sum(sum(parts.values()) for parts in report.counts.values())
    with tqdm(total=total, desc=f"split {report.name}", unit="syn", disable=not progress) as bar:
        # synister's null `splits` cannot hold a field: `{}` first (idempotent)
        retry_write(partial(coll.update_many, {"splits": None}, {"$set": {"splits": {}}}))
        if overwrite:
            retry_write(partial(coll.update_many, {key: {"$exists": True}}, {"$unset": {key: ""}}))
        for part, queries in plan.queries.items():
            for query in queries:
                result = retry_write(partial(coll.update_many, query, {"$set": {key: part}}))
                bar.update(result.matched_count)
    report.written = total
    report.write_seconds = time.perf_counter() - start
    return report


def make_split(
    db: Database,
    by: str,
    name: str,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    classes: list[str] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    progress: bool = False,
) -> SplitReport:
    """Assign whole groups to train/validation/test and write `splits.<name>` on their synapses.

    `classes`: classes to balance (synapse labels or transmitters; default: every class
    present); synapses of other classes get no part in this split. `seed` shuffles the
    groups before solving, so equally good assignments can differ between seeds.
    """
    plan = plan_split(db, by, name, fractions, classes, seed, overwrite, time_limit_s)
    return write_split(db, plan, overwrite, progress)
