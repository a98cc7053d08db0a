"""`connecto db up | down | status`: which server connecto uses (a configured one, else the
embedded one) and what it holds, decided here for every command."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from connecto.db.client import connect, resolve_uri
from connecto.db.server import LocalServer
from connecto.settings import Settings, load_settings, redact_uri

SYSTEM_DATABASES = {"admin", "local", "config"}


def configured_server(settings: Settings) -> str | None:
    """The setting that names the server connecto uses instead of the embedded one
    (`mongo_uri`, else `mongo_credentials`), said for people; None: the embedded server."""
    if settings.mongo_uri:
        return f"mongo_uri is set ({redact_uri(settings.mongo_uri)})"
    if settings.mongo_credentials:
        return f"mongo_credentials is set ({settings.mongo_credentials})"
    return None


@dataclass(frozen=True)
class ServerStatus:
    """The server connecto uses. `uri` (redacted) is None for an embedded server that is
    not running (then nothing else is known)."""

    kind: str  # "configured" | "embedded"
    uri: str | None
    version: str | None = None
    databases: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddedServer:
    """The embedded server after `db up`; `overridden_by` says why commands use another."""

    uri: str
    pid: int
    started: bool
    data: Path
    overridden_by: str | None


def server_status(settings: Settings | None = None) -> ServerStatus:
    """The configured server when one is set, else the embedded one: its URI, version and
    collection counts. A stopped embedded server is reported as such, not started."""
    settings = settings or load_settings()
    kind = "configured" if configured_server(settings) else "embedded"
    if kind == "embedded" and LocalServer(settings.data_dir).state() is None:
        return ServerStatus(kind, None)
    uri = resolve_uri(settings)
    with connect(uri, settings.mongo_timeout_s) as client:
        described = describe_server(client)
    return ServerStatus(kind, redact_uri(uri), described["version"], described["databases"])


def start_embedded(settings: Settings | None = None) -> EmbeddedServer:
    """Start the embedded server (or find it running), whichever server is configured."""
    settings = settings or load_settings()
    state, started = LocalServer(settings.data_dir).start()
    return EmbeddedServer(
        state.uri, state.pid, started, settings.data_dir / "mongo", configured_server(settings)
    )


def stop_embedded(settings: Settings | None = None) -> bool:
    """Stop the embedded server (its data stays); whether one was running."""
    settings = settings or load_settings()
    return LocalServer(settings.data_dir).stop()


def describe_server(client: MongoClient) -> dict[str, Any]:
    info = client.server_info()
    databases: dict[str, dict[str, int]] = {}
    for name in sorted(client.list_database_names()):
        if name in SYSTEM_DATABASES:
            continue
        db = client[name]
        databases[name] = {
            collection: db[collection].estimated_document_count()
            for collection in sorted(db.list_collection_names())
        }
    return {"version": info.get("version", "unknown"), "databases": databases}


# Users created by `connecto db user add` can sign in with either SCRAM mechanism, as with
# mongod: current drivers use SHA-256, older ones (an old synister environment) SHA-1.
USER_MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-1"]
PASSWORD_PROMPT_HELP = "--password-stdin or --password-env VAR"


@dataclass(frozen=True)
class AddedUser:
    """A user `add_user` created (or replaced) and where: `host`, `port` go into a
    credentials INI; `server` is said for people; `embedded`: the embedded server."""

    name: str
    server: str
    host: str
    port: int
    roles: list[str]
    embedded: bool
    replaced: bool


def read_new_password(from_stdin: bool, env_variable: str | None) -> str:
    """The new user's password: the first line of stdin, an environment variable, or a
    hidden prompt (asked twice) on a terminal; never an argument."""
    import os
    import sys

    from connecto import ConnectoError

    if from_stdin and env_variable:
        raise ConnectoError("give the password one way: --password-stdin or --password-env")
    if from_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        source = "stdin"
    elif env_variable:
        if env_variable not in os.environ:
            raise ConnectoError(f"--password-env {env_variable}: that variable is not set")
        password, source = os.environ[env_variable], f"${env_variable}"
    elif sys.stdin.isatty():
        import typer

        password = typer.prompt(
            "password", hide_input=True, confirmation_prompt=True, err=True, default=""
        )
        source = "the prompt"
    else:
        raise ConnectoError(
            f"no password: stdin is not a terminal, so give it with {PASSWORD_PROMPT_HELP}"
        )
    if not password:
        raise ConnectoError(f"empty password (from {source})")
    if "\n" in password or "\r" in password or password != password.strip():
        raise ConnectoError(
            f"the password (from {source}) has line breaks or surrounding spaces, which a "
            "credentials INI cannot hold"
        )
    return password


def user_roles(databases: list[str], tracking_db: str) -> list[dict[str, str]]:
    """readWrite on each data database and the tracking database; with no databases
    named, readWriteAnyDatabase (every database but admin, local, config)."""
    from connecto.names import check_name

    if not databases:
        return [{"role": "readWriteAnyDatabase", "db": "admin"}]
    names = []
    for name in [*databases, tracking_db]:
        check_name("database name", name)
        if name not in names:
            names.append(name)
    return [{"role": "readWrite", "db": name} for name in names]


def add_user(
    name: str,
    password: str,
    databases: list[str],
    *,
    embedded: bool = False,
    replace: bool = False,
    settings: Settings | None = None,
) -> AddedUser:
    """Create user `name` (in `admin`, where a `mongodb://user:password@host:port/` URI
    signs in) on the embedded server, started if needed, or on the configured server when
    one is set and `embedded` is False. `replace`: set an existing user's password and
    roles. One-line ConnectoErrors for a user that exists, a server that refuses."""
    from pymongo.errors import OperationFailure
    from pymongo.uri_parser import parse_uri

    from connecto import ConnectoError
    from connecto.db.client import brief_error, embedded_uri

    settings = settings or load_settings()
    if not name or name != name.strip() or any(ord(c) < 32 for c in name):
        raise ConnectoError(f"user name {name!r}: empty, or with spaces or control characters")
    roles = user_roles(databases, settings.tracking_db)
    on_embedded = embedded or configured_server(settings) is None
    if on_embedded:
        uri = embedded_uri(settings)
    else:
        uri = resolve_uri(settings)
    host, port = parse_uri(uri)["nodelist"][0]
    server = redact_uri(uri)
    try:
        client = connect(uri, settings.mongo_timeout_s)
    except ConnectoError as error:
        if on_embedded or "authentication failed" not in str(error).lower():
            raise
        raise ConnectoError(
            f"{error}; to add the user on the embedded server instead, use --embedded"
        ) from None
    with client:
        replaced = False
        try:
            client.admin.command(
                {"createUser": name, "pwd": password, "roles": roles, "mechanisms": USER_MECHANISMS}
            )
        except OperationFailure as error:
            exists = error.code in (51003, 11000) or "already exists" in str(error)
            if not exists:
                raise ConnectoError(
                    f"{server} refused to create user {name!r}: {brief_error(error)} (creating "
                    "users needs the userAdmin role on admin)"
                ) from None
            if not replace:
                raise ConnectoError(
                    f"user {name!r} already exists on {server} (--replace sets its password "
                    "and roles)"
                ) from None
            try:
                client.admin.command(
                    {"updateUser": name, "pwd": password, "roles": roles,
                     "mechanisms": USER_MECHANISMS}
                )  # fmt: skip
            except OperationFailure as again:
                raise ConnectoError(
                    f"{server} refused to update user {name!r}: {brief_error(again)}"
                ) from None
            replaced = True
    return AddedUser(
        name=name,
        server=server,
        host=host,
        port=port,
        roles=[f"{role['role']}@{role['db']}" for role in roles],
        embedded=on_embedded,
        replaced=replaced,
    )


def write_credentials(path: Path, user: AddedUser, password: str) -> None:
    """A synister credentials INI for `user`, readable by its owner only (0600)."""
    import os

    from connecto import ConnectoError

    escaped = password.replace("%", "%%")  # configparser's interpolation reads %% as %
    text = (
        f"[Credentials]\nuser = {user.name}\npassword = {escaped}\n"
        f"host = {user.host}\nport = {user.port}\n"
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode otherwise
            file.write(text)
    except OSError as error:
        raise ConnectoError(f"cannot write credentials file {path}: {error.strerror}") from None
