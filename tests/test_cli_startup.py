"""The command starts fast: heavy libraries load only in the command that needs them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "gunpowder", "daisy", "volara", "zarr", "matplotlib", "docker", "scipy")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = f"import sys, cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"imported at start-up: {result.stdout.strip()}"
