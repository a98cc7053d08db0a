"""An import stays all-or-nothing when the server dies or the importing process is killed
mid-write: the journal on the server rolls it back at the next command, and a rerun
completes it. Real processes, the real embedded server, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from connecto.db.server import LocalServer
from tests.conftest import CONNECTO

SYNAPSES = 24000  # twelve write chunks: the kill lands mid-import
SKELETONS = 40
DB = "crashed"


def _synister_export(directory: Path) -> Path:
    directory.mkdir()
    synapses = [
        {"synapse_id": i, "x": float(i), "y": 1.0, "z": 2.0, "skeleton_id": i % SKELETONS}
        for i in range(SYNAPSES)
    ]
    skeletons = [{"skeleton_id": s, "nt_known": ["gaba"]} for s in range(SKELETONS)]
    (directory / "synapses.json").write_text(json.dumps(synapses))
    (directory / "skeletons.json").write_text(json.dumps(skeletons))
    return directory


def _counts(uri: str) -> tuple[int, int, int]:
    with MongoClient(uri) as client:
        db = client[DB]
        return (
            db.synapses.count_documents({}),
            db.skeletons.count_documents({}),
            db.import_journal.count_documents({}),
        )


def _start_import(export: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*CONNECTO, "db", "import", "synister", str(export), "--db", DB],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_synapses(uri: str, process: subprocess.Popen) -> None:
    """Until the first synapses landed (the skeletons went before them)."""
    deadline = time.monotonic() + 120
    with MongoClient(uri) as client:
        while client[DB].synapses.estimated_document_count() == 0:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the import wrote nothing"
            time.sleep(0.02)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("connecto: error")]


@dataclass
class Crash:
    """A synister export, and a private embedded server in the data dir of `env`."""

    export: Path
    env: dict[str, str]
    server: LocalServer
    uri: str

    def import_until_synapses_land(self) -> subprocess.Popen:
        process = _start_import(self.export, self.env)
        _wait_for_synapses(self.uri, process)
        return process


@pytest.fixture
def crash(tmp_path: Path) -> Iterator[Crash]:
    server = LocalServer(tmp_path / "data")
    state, _ = server.start()
    env = {"CONNECTO_MONGO_URI": "", "CONNECTO_DATA_DIR": str(tmp_path / "data")}
    try:
        yield Crash(_synister_export(tmp_path / "export"), env, server, state.uri)
    finally:
        server.stop()


def test_server_killed_mid_import_is_rolled_back_then_rerun_completes(
    connecto, crash: Crash
) -> None:
    process = crash.import_until_synapses_land()
    state = crash.server.state()
    assert state is not None
    os.kill(state.pid, signal.SIGKILL)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    [error] = _errors(stderr)
    assert f"import into database '{DB}' stopped after" in error
    assert f"connecto db recover --db {DB}" in error

    stats = connecto("db", "stats", "--db", DB, env=crash.env)  # restarts the server
    assert stats.returncode == 0, stats.stderr
    assert "rolled back an import that was cut short" in stats.stderr
    assert f"database {DB}: 0 synapses, 0 skeletons" in stats.stdout
    state = crash.server.state()
    assert state is not None and _counts(state.uri) == (0, 0, 0)

    rerun = connecto("db", "import", "synister", crash.export, "--db", DB, env=crash.env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"synapses: {SYNAPSES} inserted" in rerun.stdout
    assert _counts(state.uri) == (SYNAPSES, SKELETONS, 0)


def test_killed_import_is_rolled_back_by_the_next_import(connecto, crash: Crash) -> None:
    process = crash.import_until_synapses_land()
    process.send_signal(signal.SIGKILL)
    process.communicate()
    synapses, skeletons, journal = _counts(crash.uri)
    assert 0 < synapses < SYNAPSES and skeletons == SKELETONS and journal > 0

    recover = connecto("db", "recover", "--db", DB, env=crash.env)
    assert recover.returncode == 0, recover.stderr
    assert f"synister import of {crash.export}" in recover.stderr
    assert _counts(crash.uri) == (0, 0, 0)

    process = crash.import_until_synapses_land()  # killed again; the rerun recovers
    process.send_signal(signal.SIGKILL)
    process.communicate()
    rerun = connecto("db", "import", "synister", crash.export, "--db", DB, env=crash.env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"synapses: {SYNAPSES} inserted, 0 unchanged" in rerun.stdout
    assert _counts(crash.uri) == (SYNAPSES, SKELETONS, 0)
