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
