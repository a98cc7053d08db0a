"""Every command and group answers --help."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from cli.main import app


def _all_commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        paths.extend(_all_commands(command, (*prefix, name)))
    return paths


COMMANDS = _all_commands(typer.main.get_command(app))


def test_the_expected_commands_exist() -> None:
    names = {" ".join(path) for path in COMMANDS}
    for expected in (
        "db up",
        "db down",
        "db status",
        "config show",
        "config convert",
        "prepare-training",
        "prepare-prediction",
        "runs",
    ):
        assert expected in names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "connecto")
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
