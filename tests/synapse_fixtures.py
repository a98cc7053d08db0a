"""A second server with MongoDB's test commands on, for failure-injection tests
(`configureFailPoint`); the session server runs like a production one, without them."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

from connecto.db.server import free_port, server_command


def _wait_for_port(port: int, process: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("the failpoint server did not start")


@pytest.fixture(scope="module")
def failpoint_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoClient]:
    """A client of a server that accepts `configureFailPoint` (skips where none can be had)."""
    external = os.environ.get("CONNECTO_TEST_MONGO_URI")
    process = None
    if external:
        client: MongoClient = MongoClient(external)
    else:
        port = free_port()
        storage: Path = tmp_path_factory.mktemp("failpoint-server")
        process = subprocess.Popen(
            [*server_command(port, storage), "--enable-test-commands"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(port, process)
        client = MongoClient(f"mongodb://127.0.0.1:{port}/")
    try:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
    except OperationFailure:
        pytest.skip("the server does not enable test commands (configureFailPoint)")
    yield client
    client.close()
    if process is not None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None:
            process.kill()


@contextlib.contextmanager
def drop_connection_once(client: MongoClient, command: str) -> Iterator[None]:
    """The server closes the connection the next time it receives `command`."""
    client.admin.command(
        "configureFailPoint", "failCommand", mode={"times": 1},
        data={"failCommands": [command], "closeConnection": True},
    )  # fmt: skip
    try:
        yield
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")


@pytest.fixture
def failpoint_db(failpoint_client: MongoClient) -> Iterator[Database]:
    name = f"test_fp_{uuid.uuid4().hex[:10]}"
    yield failpoint_client[name]
    failpoint_client.drop_database(name)
