"""Split of MANC by skeleton (0.8/0.1/0.1 over acetylcholine, gaba, glutamate): time to plan
(read + solve), time to write the labels, and the largest per-class deviation from the target
fractions (goals: under 5 s; train part within 2 percentage points)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from connecto.db.client import get_client
from connecto.db.synapse_import import import_csv
from connecto.db.synapses import PARTS
from connecto.splits import plan_split, write_split

MANC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "manc_synapses"
CLASSES = ["acetylcholine", "gaba", "glutamate"]


def main() -> None:
    if not MANC.is_dir():
        print(f"skipped: {MANC} is absent")
        return
    client = get_client()
    name = f"connecto_bench_split_{uuid.uuid4().hex[:6]}"
    try:
        db = client[name]
        start = time.perf_counter()
        import_csv(db, [MANC / f"{c}.csv" for c in CLASSES], (8, 8, 8), nt_from_filename=True)
        print(f"(setup: import of 79,946 synapses took {time.perf_counter() - start:.1f} s)")
        # planning is cheap: three seeds; writing 80k labels is server-bound: once
        for seed in (0, 1, 2):
            plan = plan_split(db, "skeleton", "skeleton", (0.8, 0.1, 0.1), CLASSES, seed=seed)
            report = plan.report
            train = max(abs(report.share(c, "train") - 0.8) for c in CLASSES)
            print(
                f"seed {seed}: plan (read + solve) {report.seconds:.2f} s ({report.solver}); "
                f"largest deviation {report.max_deviation * 100:.3f} pp, "
                f"train {train * 100:.3f} pp (goal < 2 pp)"
            )
            for c in CLASSES:
                shares = ", ".join(f"{p} {report.share(c, p):.4f}" for p in PARTS)
                print(f"    {c:14s} {shares}")
        write_split(db, plan)
        print(
            f"write of {report.written} labels (batched updates): {report.write_seconds:.1f} s; "
            f"plan + write {report.seconds + report.write_seconds:.1f} s (goal < 5 s)"
        )
    finally:
        client.drop_database(name)
