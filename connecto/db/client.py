"""One way to reach MongoDB: the configured URI, or the embedded local server."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import AutoReconnect, ConfigurationError, OperationFailure, PyMongoError

from connecto import ConnectoError
from connecto.db.server import LocalServer
from connecto.names import check_name
from connecto.settings import Settings, load_settings, redact_uri, uri_from_credentials

RETRIES = 3
AUTHENTICATION_FAILED = 18  # MongoDB's error code
T = TypeVar("T")


def resolve_uri(settings: Settings) -> str:
    """The configured URI, or the embedded server's (started if needed, said once)."""
    if settings.mongo_uri:
        return settings.mongo_uri
    if settings.mongo_credentials:
        return uri_from_credentials(settings.mongo_credentials)
    return embedded_uri(settings)


def embedded_uri(settings: Settings) -> str:
    """The embedded server's URI, started if needed (and said, once)."""
    state, started = LocalServer(settings.data_dir).start()
    if started:
        print(
            f"connecto: started the embedded MongoDB server at {state.uri} "
            f"(data in {settings.data_dir}; stop it with `connecto db down`)",
            file=sys.stderr,
        )
    return state.uri


def connect(uri: str, timeout_s: float) -> MongoClient:
    """A client that has answered a ping; otherwise a one-line ConnectoError."""
    try:
        client: MongoClient = MongoClient(
            uri,
            # Only server selection is short (a dead server fails fast); connectTimeoutMS also
            # bounds pymongo's heartbeats, and a short one cancels long operations on a busy
            # server.
            serverSelectionTimeoutMS=int(timeout_s * 1000),
            tz_aware=True,
        )
    except (ConfigurationError, ValueError) as error:  # a bad URI, or an SRV record not found
        raise ConnectoError(f"mongo_uri {redact_uri(uri)!r} is not usable: {error}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as error:
        client.close()
        if isinstance(error, OperationFailure) and error.code == AUTHENTICATION_FAILED:
            raise ConnectoError(
                f"MongoDB at {redact_uri(uri)} refused the credentials: {brief_error(error)} "
                "(`connecto db user add NAME` creates a user on the embedded server)"
            ) from None
        raise ConnectoError(
            f"MongoDB at {redact_uri(uri)} does not answer: {brief_error(error)}"
        ) from None
    return client


def retry_write(
    operation: Callable[[], T],
    attempts: int = RETRIES,
    before_retry: Callable[[], object] | None = None,
) -> T:
    """Run an idempotent write again when the connection drops (a busy server can miss the
    client's heartbeat, and the client then cancels operations in flight); waits 1 s, 2 s,
    ... between attempts. `before_retry` runs after each wait, e.g. to drop what already
    landed from a batch that may have been written in part."""
    for attempt in range(1, attempts):
        try:
            return operation()
        except AutoReconnect:
            time.sleep(attempt)
            if before_retry is not None:
                before_retry()
    return operation()  # the last attempt: its error is the caller's


def brief_error(error: BaseException) -> str:
    """A pymongo error without the topology description and timeouts it appends."""
    return str(error).split(",")[0].split(" (configured timeouts")[0][:300]


@lru_cache(maxsize=4)
def _cached_client(uri: str, timeout_s: float) -> MongoClient:
    return connect(uri, timeout_s)


def get_client(settings: Settings | None = None) -> MongoClient:
    settings = settings or load_settings()
    return _cached_client(resolve_uri(settings), settings.mongo_timeout_s)


def get_database(name: str, settings: Settings | None = None) -> Database:
    """The database `name`, checked before connecting: every --db option and config key
    comes here."""
    check_name("database name", name)
    return get_client(settings)[name]


def tracking_database(settings: Settings | None = None) -> Database:
    settings = settings or load_settings()
    return get_database(settings.tracking_db, settings)


def server_failure(error: BaseException) -> str | None:
    """One line for a server that failed mid-command (stopped answering, or the embedded
    one's disk filled); None for other errors."""
    from pymongo.errors import ConnectionFailure, OperationFailure

    if isinstance(error, ConnectionFailure):
        return (
            f"MongoDB stopped answering ({brief_error(error)}); run the command again once it "
            "answers (the embedded server restarts by itself)"
        )
    settings = load_settings()
    if isinstance(error, OperationFailure) and not settings.mongo_uri:
        full = LocalServer(settings.data_dir).disk_full()
        return None if full is None else str(full)
    return None
