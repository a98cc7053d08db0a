"""Settings precedence and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from connecto import ConnectoError
from connecto.db.client import resolve_uri
from connecto.settings import load_settings, redact_uri


def test_redact_uri() -> None:
    assert redact_uri("mongodb://alice:s3cret@db.example:27017/x") == (
        "mongodb://alice:***@db.example:27017/x"
    )
    assert redact_uri("mongodb+srv://bob:p@cluster/") == "mongodb+srv://bob:***@cluster/"
    assert redact_uri("mongodb://127.0.0.1:27017/") == "mongodb://127.0.0.1:27017/"


def test_precedence_env_over_cwd_over_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("CONNECTO_CONFIG_DIR", str(user_dir))
    monkeypatch.chdir(work)
    for key in ("CONNECTO_MONGO_URI", "CONNECTO_LAUNCHER", "CONNECTO_TRACKING_DB"):
        monkeypatch.delenv(key, raising=False)

    (user_dir / "connecto.toml").write_text(
        'mongo_uri = "mongodb://user-file/"\nlauncher = "docker"\ntracking_db = "from_user"\n'
    )
    settings = load_settings()
    assert (settings.mongo_uri, settings.launcher, settings.tracking_db) == (
        "mongodb://user-file/",
        "docker",
        "from_user",
    )

    (work / "connecto.toml").write_text('mongo_uri = "mongodb://cwd-file/"\n')
    settings = load_settings()
    assert settings.mongo_uri == "mongodb://cwd-file/"
    assert settings.launcher == "docker"  # still from the user file

    monkeypatch.setenv("CONNECTO_MONGO_URI", "mongodb://env/")
    assert load_settings().mongo_uri == "mongodb://env/"


def test_invalid_settings_name_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "connecto.toml").write_text('launcher = "kubernetes"\n')
    with pytest.raises(ConnectoError, match="launcher"):
        load_settings()


def test_config_show_redacts_password(connecto, tmp_path: Path) -> None:
    result = connecto(
        "config", "show", cwd=tmp_path,
        env={"CONNECTO_MONGO_URI": "mongodb://admin:hunter2@10.0.0.1:27017/"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "mongodb://admin:***@10.0.0.1:27017/" in result.stdout


def test_synister_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "db_credentials.ini"
    credentials.write_text(
        "[Credentials]\nuser = nils\npassword = p@ss\nhost = mongo.lab\nport = 27018\n"
    )
    monkeypatch.delenv("CONNECTO_MONGO_URI", raising=False)
    monkeypatch.setenv("CONNECTO_MONGO_CREDENTIALS", str(credentials))
    assert resolve_uri(load_settings()) == "mongodb://nils:p%40ss@mongo.lab:27018/"
    credentials.write_text("[Other]\nhost = x\n")
    with pytest.raises(ConnectoError, match="credentials"):
        resolve_uri(load_settings())


def _one_line_error(result) -> str:
    """The CLI refused with exit 1 and one line on stderr, no traceback."""
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("content", [b"launcher = \n", b"\x00\xff\xfe binary"])
def test_malformed_cwd_settings_file_is_one_line(connecto, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "connecto.toml").write_bytes(content)
    message = _one_line_error(connecto("config", "show", cwd=tmp_path))
    assert str(tmp_path / "connecto.toml") in message


def test_credentials_port_not_a_number_is_one_line(connecto, tmp_path: Path) -> None:
    credentials = tmp_path / "db_credentials.ini"
    credentials.write_text("[Credentials]\nhost = localhost\nport = abc\n")
    result = connecto(
        "db", "status", cwd=tmp_path,
        env={"CONNECTO_MONGO_URI": "", "CONNECTO_MONGO_CREDENTIALS": str(credentials)},
    )  # fmt: skip
    message = _one_line_error(result)
    assert str(credentials) in message and "'port' = 'abc'" in message


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("mongodb://", "hostname"),
        ("mongodb://db.lab:abc/", "Port"),
        ("mongodb://alice:pa:ss@db.lab/", "escaped"),
        ("mongodb+srv://db.lab:27017/", "port"),
    ],
)
def test_malformed_mongo_uri_is_one_line(connecto, tmp_path: Path, uri: str, reason: str) -> None:
    result = connecto(
        "db", "status", cwd=tmp_path,
        env={"CONNECTO_MONGO_URI": uri, "CONNECTO_MONGO_TIMEOUT_S": "0.5"},
    )  # fmt: skip
    message = _one_line_error(result)
    assert "mongo_uri" in message and reason in message
    assert "pa:ss" not in message


def test_bad_setting_names_variable_key_and_value(connecto, tmp_path: Path) -> None:
    result = connecto("config", "show", cwd=tmp_path, env={"CONNECTO_MONGO_TIMEOUT_S": "inf"})
    message = _one_line_error(result)
    assert "CONNECTO_MONGO_TIMEOUT_S: mongo_timeout_s = 'inf'" in message and "finite" in message
