"""Effective settings: CONNECTO_* environment, connecto.toml files, defaults.

Precedence, highest first:
1. environment variables `CONNECTO_<FIELD>` (e.g. `CONNECTO_MONGO_URI`);
2. `./connecto.toml` in the working directory;
3. `<user config dir>/connecto.toml` (`~/.config/connecto/connecto.toml` on Linux,
   or `$CONNECTO_CONFIG_DIR/connecto.toml`);
4. built-in defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Launcher = Literal["local", "docker", "apptainer"]
Scheduler = Literal["none", "slurm", "lsf"]


def user_config_dir() -> Path:
    override = os.environ.get("CONNECTO_CONFIG_DIR")
    return Path(override) if override else Path(platformdirs.user_config_dir("connecto"))


def settings_files() -> list[Path]:
    """The TOML files consulted, lowest precedence first."""
    return [user_config_dir() / "connecto.toml", Path.cwd() / "connecto.toml"]


class _TomlFile(TomlConfigSettingsSource):
    """A settings file whose TOML errors name the file, in one line."""

    def _read_file(self, file_path: Path) -> dict[str, Any]:  # type: ignore[override]
        from connecto.config import read_toml

        return read_toml(Path(file_path))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONNECTO_", extra="forbid", allow_inf_nan=False)

    mongo_uri: str | None = Field(
        default=None,
        description="MongoDB URI; unset means the embedded local server (`connecto db up`).",
    )
    mongo_credentials: Path | None = Field(
        default=None,
        description="synister-style credentials INI ([Credentials] user, password, host, port), "
        "used when mongo_uri is unset",
    )
    mongo_timeout_s: float = Field(default=2.0, gt=0, description="seconds to wait for the server")
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("connecto")),
        description="where the embedded server keeps its data, pid and log",
    )
    tracking_db: str = Field(default="connecto", description="tracking database name")
    launcher: Launcher = Field(default="local", description="default job launcher")
    scheduler: Scheduler = Field(default="none", description="default cluster scheduler")

    @field_validator("mongo_uri")
    @classmethod
    def _check_mongo_uri(cls, uri: str | None) -> str | None:
        if uri:
            check_mongo_uri(uri)
        return uri

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        user_file, cwd_file = settings_files()
        return (
            init_settings,
            env_settings,
            _TomlFile(settings_cls, toml_file=cwd_file),
            _TomlFile(settings_cls, toml_file=user_file),
        )

    def redacted(self) -> dict[str, object]:
        values = self.model_dump(mode="json")
        if values["mongo_uri"]:
            values["mongo_uri"] = redact_uri(values["mongo_uri"])
        return values


_PASSWORD_IN_URI = re.compile(r"^(?P<scheme>[a-z+]+://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@")


def redact_uri(uri: str) -> str:
    """`mongodb://user:secret@host` -> `mongodb://user:***@host`."""
    return _PASSWORD_IN_URI.sub(r"\g<scheme>\g<user>:***@", uri)


def check_mongo_uri(uri: str) -> None:
    """A ValueError naming the (redacted) URI unless pymongo can parse it; no DNS lookups."""
    from pymongo.errors import ConfigurationError
    from pymongo.uri_parser import parse_uri

    try:
        # pymongo reads a bare `host[:port]` as a URI; an SRV URI's DNS lookup waits for connect
        plain = (
            uri.replace("mongodb+srv://", "mongodb://", 1) if "://" in uri else f"mongodb://{uri}"
        )
        parse_uri(plain, warn=True)
    except (ValueError, ConfigurationError) as error:
        raise ValueError(
            f"{redact_uri(uri)!r} is not a MongoDB URI (mongodb://[user:password@]host[:port]/): "
            f"{str(error).split('. Hint')[0]}"
        ) from None


def uri_from_credentials(path: Path) -> str:
    """synister's `db_credentials.ini` -> a MongoDB URI."""
    import configparser
    from urllib.parse import quote_plus

    from connecto import ConnectoError

    parser = configparser.ConfigParser()
    try:
        parser.read_string(Path(path).read_text(), source=str(path))
        section = parser["Credentials"]
        host = section["host"]
    except (OSError, configparser.Error, KeyError) as error:
        raise ConnectoError(
            f"{path}: not a usable credentials file ([Credentials] with host, optional "
            f"user, password, port): {error}"
        ) from None
    port = section.get("port", "27017")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConnectoError(
            f"{path}: [Credentials] key 'port' = {port!r}: expected a port number (1-65535)"
        )
    user, password = section.get("user"), section.get("password")
    auth = f"{quote_plus(user)}:{quote_plus(password or '')}@" if user else ""
    return f"mongodb://{auth}{host}:{port}/"


def load_settings() -> Settings:
    from pydantic import ValidationError

    from connecto import ConnectoError

    try:
        return Settings()
    except ValidationError as error:
        files = ", ".join(str(f) for f in settings_files() if f.exists()) or "defaults"
        problems = []
        for item in error.errors():
            key = ".".join(str(p) for p in item["loc"])
            variable = f"CONNECTO_{key.upper()}"
            source = variable if variable in os.environ else files
            # a URI may hold a password: its validator shows it redacted
            value = "" if key == "mongo_uri" else f" = {item['input']!r}"
            problems.append(f"{source}: {key}{value}: {item['msg'].removeprefix('Value error, ')}")
        raise ConnectoError(f"invalid settings: {'; '.join(problems)}") from None
