"""Import of the 87k MANC synapses: connecto's validated all-or-nothing import against a plain
pymongo `insert_many` of the same documents (a fresh database each, same validators and
indexes, same server). Prints both throughputs and their ratio (goal: at least 0.8)."""

from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path

from connecto.db.client import get_client
from connecto.db.schema import SKELETONS, SYNAPSES, init_database
from connecto.db.synapse_import import import_csv
from connecto.db.synapse_readers import read_synapse_csvs

MANC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "manc_synapses"
FILES = ["acetylcholine.csv", "gaba.csv", "glutamate.csv", "others.csv"]


def main() -> None:
    if not MANC.is_dir():
        print(f"skipped: {MANC} is absent")
        return
    files = [MANC / f for f in FILES]
    client = get_client()
    raw_name, ours_name = (f"connecto_bench_{kind}_{uuid.uuid4().hex[:6]}" for kind in "ab")
    try:
        data = read_synapse_csvs(files, (8, 8, 8), nt_from_filename=True)
        documents = len(data.synapses) + len(data.skeletons)
        raw = client[raw_name]
        init_database(raw)
        synapses, skeletons = copy.deepcopy(data.synapses), copy.deepcopy(data.skeletons)
        start = time.perf_counter()
        raw[SKELETONS].insert_many(skeletons, ordered=False)
        raw[SYNAPSES].insert_many(synapses, ordered=False)
        raw_s = time.perf_counter() - start
        print(f"plain insert_many:  {documents} documents in {raw_s:6.1f} s "
              f"({documents / raw_s:8.0f} doc/s)")  # fmt: skip

        ours = client[ours_name]
        init_database(ours)
        start = time.perf_counter()
        report = import_csv(ours, files, (8, 8, 8), nt_from_filename=True, progress=False)
        ours_s = time.perf_counter() - start
        print(
            f"connecto import:    {documents} documents in {ours_s:6.1f} s "
            f"({documents / ours_s:8.0f} doc/s), reading + validating the CSVs included; "
            f"{report.inserted[SYNAPSES]} synapses inserted"
        )
        print(f"throughput ratio connecto / insert_many: {raw_s / ours_s:.2f} (goal >= 0.8)")

        start = time.perf_counter()
        import_csv(ours, files, (8, 8, 8), nt_from_filename=True, progress=False)
        print(f"identical re-import (nothing written): {time.perf_counter() - start:.1f} s")
    finally:
        client.drop_database(raw_name)
        client.drop_database(ours_name)
