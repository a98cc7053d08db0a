"""User-given names (experiments, databases, splits) are checked once, up front, by one rule:
none escapes its directory or puts `.`, `$`, spaces or control characters into a MongoDB
name, and the command says so in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from connecto import ConnectoError
from connecto.experiment import TrainSetup, prepare_training
from connecto.names import check_name

VALID = ["synister_v3", "manc", "nt", "np", "bench", "connecto_segments", "exp-2", "0a", "x" * 63]
INVALID = ["", "..", ".", "../../x", "/abs", "a/b", "a$b", "a.b", "a b", "a\nb", "a\tb", "a\x00b",
           "-a", "_a", "é", 'a"b', "a\\b", "x" * 64]  # fmt: skip
RULE = "expected letters, digits, '_' or '-', starting with a letter or digit"


@pytest.mark.parametrize("name", VALID)
def test_valid_names_pass(name: str) -> None:
    assert check_name("database name", name) == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_fail_with_one_message(name: str) -> None:
    with pytest.raises(ConnectoError) as error:
        check_name("experiment name", name)
    assert str(error.value).startswith(f"experiment name {name!r}: {RULE}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("experiment", ["../../x", "..", "a$b", "a b", "a\nb"])
def test_prepare_training_refuses_names_that_escape(tmp_path: Path, experiment: str) -> None:
    base = tmp_path / "one" / "two" / "base"
    with pytest.raises(ConnectoError, match="experiment name"):
        prepare_training(base, experiment, 0)
    assert [p.name for p in tmp_path.rglob("*")] == []  # nothing written, anywhere
    with pytest.raises(ConnectoError, match="experiment name"):
        TrainSetup(base, experiment, 0)


def test_config_names_are_checked(tmp_path: Path) -> None:
    for key, value in (("db_name_data", "a.b"), ("split_name", "s$"), ("db_name_data", "x" * 60)):
        with pytest.raises(ConnectoError, match=f"key '{key}'.*database name|key '{key}'.*split"):
            prepare_training(tmp_path, "exp", 0, overrides=[f"{key}={value!r}"])
    assert not (tmp_path / "exp").exists()


def test_cli_prints_one_line_and_exits_1(connecto, tmp_path: Path, tracking_db: str) -> None:
    absolute = tmp_path / "elsewhere"
    cases = [
        (["prepare-training", "-d", tmp_path / "b", "-e", absolute, "-t", "0"], "experiment"),
        (["prepare-training", "-d", tmp_path / "b", "-e", "../../x", "-t", "0"], "experiment"),
        (["prepare-prediction", "-d", tmp_path / "b", "-e", "..", "-t", "0", "-i", "1"],
         "experiment"),
        (["db", "init", "--db", "a.b"], "database"),
        (["db", "import", "csv", tmp_path / "none.csv", "--db", "a b", "--voxel-size", "8,8,8"],
         "database"),
        (["split", "--db", "a$b", "--by", "skeleton", "--name", "s"], "database"),
        (["split", "--db", "manc", "--by", "skeleton", "--name", "s.t"], "split"),
    ]  # fmt: skip
    for args, kind in cases:
        result = connecto(*args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"connecto: error: {kind} name"), lines
    assert not absolute.exists() and not (tmp_path.parent / "x").exists()
