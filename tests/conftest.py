"""Shared fixtures: one real MongoDB-wire server for the session (started by connecto's
own embedded-server launcher, over TCP), isolated settings, and a CLI runner.

Set CONNECTO_TEST_MONGO_URI to run the suite against a real MongoDB instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from pymongo import MongoClient

from connecto.db.server import LocalServer
from connecto.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NEUROPROOF = SHARED_DATA / "neuroproof_medulla_ts2" / "neuroproof_ts2_raw_gt.h5"
MANC = SHARED_DATA / "manc_synapses"
FAFB = SHARED_DATA / "synister_fafb_v3"
CONNECTO = [sys.executable, "-m", "cli.main"]


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("CONNECTO_TEST_MONGO_URI")
    if external:
        yield external
        return
    server = LocalServer(tmp_path_factory.mktemp("mongo-data"))
    state, _ = server.start()
    yield state.uri
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, mongo_uri: str) -> Iterator[None]:
    """No test reads the user's connecto.toml or data dir; all use the session server."""
    saved = dict(os.environ)
    os.environ["CONNECTO_MONGO_URI"] = mongo_uri
    os.environ["CONNECTO_DATA_DIR"] = str(tmp_path_factory.mktemp("data-dir"))
    os.environ["CONNECTO_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config-dir"))
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def mongo_client(mongo_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def db_name(mongo_client: MongoClient) -> Iterator[str]:
    """A fresh database name, dropped (with its _predictions twin) afterwards."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    yield name
    for suffix in ("", "_predictions"):
        mongo_client.drop_database(name + suffix)


@pytest.fixture
def tracking_db(mongo_client: MongoClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh tracking database for this test (CONNECTO_TRACKING_DB)."""
    name = f"tracking_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("CONNECTO_TRACKING_DB", name)
    yield name
    mongo_client.drop_database(name)


def run_connecto(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the real `connecto` command in a subprocess, as a user would."""
    return subprocess.run(
        [*CONNECTO, *map(str, args)],
        cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


@pytest.fixture
def connecto():
    return run_connecto


def sigkill_when_ready(
    process: subprocess.Popen, ready: Callable[[psutil.Process], bool], what: str
) -> list[psutil.Process]:
    """Wait (at most 120 s) until `ready(parent)`, SIGKILL the parent alone and return the
    children it had then; `what` names the command in the failure messages."""
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while not ready(parent):
            assert process.poll() is None, f"{what} stopped on its own"
            assert time.monotonic() < deadline, f"{what} made no progress"
            time.sleep(0.05)
        children = parent.children(recursive=True)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    return children


def survivors(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Those of `processes` still running after up to `timeout_s` (a zombie has ended: its
    reaper may be slow); killed then, so that no test leaves them behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in processes if pid_alive(p.pid) and p.is_running()]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for process in alive:
        process.kill()
    return alive


def require_shared_data(path: Path) -> Path:
    """`path` of the shared real data (../shared/data). When it is absent the test fails
    and says so: CI has the data, and a skip there would hide a broken feature. In a
    checkout without it, CONNECTO_TEST_SKIP_MISSING_DATA=1 makes that a skip instead."""
    if not path.exists():
        message = f"the shared real data {path} is missing (see ../shared/data/PROVENANCE.md)"
        if os.environ.get("CONNECTO_TEST_SKIP_MISSING_DATA") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return path


@pytest.fixture
def neuroproof_data() -> Path:
    return require_shared_data(NEUROPROOF)


@pytest.fixture
def manc_data() -> Path:
    return require_shared_data(MANC)


@pytest.fixture
def fafb_data() -> Path:
    return require_shared_data(FAFB)


needs_neuroproof = pytest.mark.usefixtures("neuroproof_data")
needs_manc = pytest.mark.usefixtures("manc_data")
needs_fafb = pytest.mark.usefixtures("fafb_data")
