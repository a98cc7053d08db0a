"""Locate the data folders that ship with connecto (`mongo/`, `experiments/`)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The shipped folder `name`: the repository's copy in a source checkout or
    editable install, the copy inside the wheel otherwise."""
    for candidate in (_PACKAGE_DIR.parent / name, _PACKAGE_DIR / "_resources" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"connecto resource folder {name!r} is missing from the installation")


def project_root() -> Path | None:
    """The source checkout connecto runs from, if any (for git commit tracking)."""
    root = _PACKAGE_DIR.parent
    return root if (root / "pyproject.toml").is_file() else None
