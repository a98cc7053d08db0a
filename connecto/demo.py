"""`make demo`: the main job end to end on the embedded default, no set-up by the user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEMO_DIR = Path(os.environ.get("CONNECTO_DEMO_DIR", "demo_out")).resolve()


def connecto(*args: str | Path, cwd: Path | None = None) -> None:
    command = [sys.executable, "-m", "cli.main", *map(str, args)]
    print(f"\n$ connecto {' '.join(map(str, args))}", flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def main() -> None:
    if DEMO_DIR.exists():
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(parents=True)
    connecto("db", "up")
    connecto("prepare-training", "-d", DEMO_DIR, "-e", "demo", "-t", "0")
    from connecto.experiment import tree

    print("\n".join(tree(DEMO_DIR / "demo")))
    connecto("runs", "-e", "demo")
    print(f"\ndemo finished: everything is under {DEMO_DIR}")


if __name__ == "__main__":
    main()
