"""Run the benchmarks: `python -m benchmarks [NAME ...]` (default: all `bench_*.py`).

Each module prints its measurements and the ratios its issue asks for; nothing here is
asserted, the figures go into the issue notes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import benchmarks


def main(names: list[str]) -> int:
    available = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    chosen = [n if n.startswith("bench_") else f"bench_{n}" for n in names] or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmarks {unknown}; available: {available}", file=sys.stderr)
        return 2
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"--- {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
