"""`connecto db up | down | status`, auto-start, persistence, unreachable servers."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError

from connecto.db.client import connect
from connecto.db.server import LocalServer
from connecto.processes import pid_alive
from tests.conftest import CONNECTO


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    """Settings with no URI, so the embedded server is used, in a private data dir."""
    return {"CONNECTO_MONGO_URI": "", "CONNECTO_DATA_DIR": str(tmp_path / "data")}


def _uri_of(text: str) -> str:
    match = re.search(r"mongodb://127\.0\.0\.1:\d+/", text)
    assert match, text
    return match.group(0)


def test_up_status_down_and_data_survives_restart(connecto, embedded_env, tmp_path: Path) -> None:
    try:
        up = connecto("db", "up", env=embedded_env)
        assert up.returncode == 0, up.stderr
        assert "started" in up.stdout
        uri = _uri_of(up.stdout)
        assert "already running" in connecto("db", "up", env=embedded_env).stdout

        with MongoClient(uri) as client:
            client.keep.things.insert_one({"name": "kept", "n": 7})
        status = connecto("db", "status", env=embedded_env)
        assert status.returncode == 0, status.stderr
        assert "embedded" in status.stdout and "version" in status.stdout
        assert "keep" in status.stdout and "things" in status.stdout

        down = connecto("db", "down", env=embedded_env)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert LocalServer(tmp_path / "data").state() is None
        assert "not running" in connecto("db", "status", env=embedded_env).stdout

        again = connecto("db", "up", env=embedded_env)
        with MongoClient(_uri_of(again.stdout)) as client:
            assert client.keep.things.find_one({"name": "kept"})["n"] == 7
    finally:
        connecto("db", "down", env=embedded_env)


def test_commands_auto_start_the_server_and_say_so_once(
    connecto, embedded_env, tmp_path: Path
) -> None:
    try:
        first = connecto("runs", env=embedded_env)
        assert first.returncode == 0, first.stderr
        assert "started the embedded MongoDB server" in first.stderr
        second = connecto("runs", env=embedded_env)
        assert second.returncode == 0
        assert "started" not in second.stderr
    finally:
        connecto("db", "down", env=embedded_env)


def test_unreachable_server_one_line_error_fast(connecto) -> None:
    start = time.monotonic()
    result = connecto("runs", env={"CONNECTO_MONGO_URI": "mongodb://alice:pw@127.0.0.1:1/"})
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "mongodb://alice:***@127.0.0.1:1/" in lines[0]
    assert "pw@" not in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 15  # generous: the 5 s figure is measured in benchmarks, not asserted


def test_stale_state_file_is_ignored(tmp_path: Path) -> None:
    server = LocalServer(tmp_path)
    server.root.mkdir(parents=True)
    server.state_file.write_text('{"pid": 999999, "port": 1}')
    assert server.state() is None
    assert server.stop() is False


def _write(kind: int, client: MongoClient, trial: Database) -> None:
    if kind == 0:
        trial.create_collection("created")
    elif kind == 1:
        trial.synapses.insert_many([{"synapse_id": i} for i in range(30)])
    else:
        client.tracking.runs.update_one({"_id": "run"}, {"$inc": {"n": 1}}, upsert=True)


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    """kill -9 right after each acknowledgment, restart: every acknowledged write is there.

    Each trial creates a collection, inserts 30 synapses into a new one and updates a
    tracking document, in turn last before the kill; up to 25 trials (at least 5, about 30 s).
    """
    server = LocalServer(tmp_path)
    kills = 0
    deadline = time.monotonic() + 30
    try:
        while kills < 25 and (kills < 5 or time.monotonic() < deadline):
            state, _ = server.start()
            client = connect(state.uri, 5.0)
            trial = client[f"trial{kills}"]
            for kind in range(kills % 3, kills % 3 + 3):  # each kind of write comes last
                _write(kind % 3, client, trial)
            os.kill(state.pid, signal.SIGKILL)
            kills += 1
            client.close()
            while pid_alive(state.pid):
                time.sleep(0.01)

        state, _ = server.start()
        with MongoClient(state.uri) as client:
            lost = 0
            for t in range(kills):
                trial = client[f"trial{t}"]
                lost += "created" not in trial.list_collection_names()
                lost += 30 - trial.synapses.count_documents({})
            run = client.tracking.runs.find_one({"_id": "run"}) or {"n": 0}
            lost += kills - run["n"]
    finally:
        server.stop()
    checked = kills * 32
    print(f"kill -9 durability: {kills} kills, {checked} acknowledged writes checked, {lost} lost")
    assert lost == 0, f"{lost} of {checked} acknowledged writes lost over {kills} kills"


# ---------------------------------------------------------------- a data directory unfit for use


def _one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("under", [False, True], ids=["a-file", "under-a-file"])
def test_a_data_dir_that_is_a_file_is_one_line(connecto, tmp_path: Path, under: bool) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("a file, not a directory\n")
    data_dir = file / "data" if under else file
    env = {"CONNECTO_MONGO_URI": "", "CONNECTO_DATA_DIR": str(data_dir)}
    for command in (("runs",), ("db", "up"), ("db", "down")):
        line = _one_line_error(connecto(*command, env=env), str(data_dir), "not a directory")
        assert "CONNECTO_DATA_DIR" in line


@contextlib.contextmanager
def _mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where` (root in a sandbox that allows mounts), else a skip."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_data_dir_is_one_line(connecto, tmp_path: Path) -> None:
    with _mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as read_only:
        for data_dir in (read_only, read_only / "data"):  # existing, or to be made
            env = {"CONNECTO_MONGO_URI": "", "CONNECTO_DATA_DIR": str(data_dir)}
            _one_line_error(connecto("runs", env=env), str(data_dir), "read-only")
            _one_line_error(connecto("db", "up", env=env), str(data_dir), "read-only")


def _fill(disk: Path) -> Path:
    """A file that takes all the free space on `disk`."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as file:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    file.write(b"\0" * size)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    return ballast


def test_a_full_disk_is_one_line_and_the_server_recovers_once_space_is_free(
    connecto, tmp_path: Path
) -> None:
    """A full data directory's disk: one line, whether the server is to start or is running
    (WiredTiger then panics, and fails every command until restarted); with space again,
    the next command restarts it, and the data written before is there."""
    with _mounted_tmpfs(tmp_path / "disk", "size=32m") as disk:
        data_dir = disk / "data"
        env = {"CONNECTO_MONGO_URI": "", "CONNECTO_DATA_DIR": str(data_dir)}
        try:
            ballast = _fill(disk)
            for command in (("db", "up"), ("runs",)):
                _one_line_error(connecto(*command, env=env), "disk is full", str(data_dir))
            ballast.unlink()

            up = connecto("db", "up", env=env)
            assert up.returncode == 0, up.stderr
            with MongoClient(_uri_of(up.stdout), serverSelectionTimeoutMS=5000) as client:
                client.keep.things.insert_one({"name": "kept"})
                ballast = _fill(disk)
                for command in (("db", "status"), ("runs",)):  # it runs, its writes fail
                    _one_line_error(connecto(*command, env=env), "disk is full", str(data_dir))
                with pytest.raises(PyMongoError):  # once its cache must be written out
                    for _ in range(2000):
                        client.keep.things.insert_many([{"pad": "x" * 10000} for _ in range(10)])
                with pytest.raises(PyMongoError):  # WiredTiger panicked: nothing works
                    client.keep.things.find_one({"name": "kept"})
            for command in (("db", "status"), ("runs",)):
                _one_line_error(connecto(*command, env=env), "disk is full", str(data_dir))

            ballast.unlink()
            status = connecto("db", "status", env=env)
            assert status.returncode == 0, status.stderr
            assert "keep" in status.stdout and "things" in status.stdout
            state = LocalServer(data_dir).state()
            assert state is not None
            with MongoClient(state.uri, serverSelectionTimeoutMS=5000) as client:
                assert client.keep.things.find_one({"name": "kept"}) is not None
                client.keep.things.insert_one({"name": "after"})  # writes work again
        finally:
            connecto("db", "down", env=env)


def _credentials_ini(path: Path, user: str, password: str, port: int) -> Path:
    path.write_text(
        f"[Credentials]\nuser = {user}\npassword = {password}\nhost = 127.0.0.1\nport = {port}\n"
    )
    return path


def test_db_user_add_lets_a_synister_credentials_ini_sign_in(
    connecto, embedded_env, tmp_path: Path
) -> None:
    """Before `db user add` a synister INI fails authentication; after it, connecto commands
    and plain pymongo sign in with it, across a restart; a wrong password still fails."""
    from connecto.settings import uri_from_credentials

    password = "s3cret%pw"  # a `%` as configparser writes it: %%
    try:
        up = connecto("db", "up", env=embedded_env)
        assert up.returncode == 0, up.stderr
        port = int(_uri_of(up.stdout).rsplit(":", 1)[1].strip("/"))
        ini = _credentials_ini(tmp_path / "db_credentials.ini", "alice", "s3cret%%pw", port)
        with_ini = {**embedded_env, "CONNECTO_MONGO_CREDENTIALS": str(ini)}
        before = connecto("runs", env=with_ini)
        assert before.returncode != 0 and "authentication failed" in before.stderr.lower()

        no_password = subprocess.run(
            [*CONNECTO, "db", "user", "add", "alice"],
            env={**os.environ, **embedded_env}, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert no_password.returncode != 0 and "--password-stdin" in no_password.stderr

        # with the INI set, its server counts as configured: the user is not there yet
        hint = subprocess.run(
            [*CONNECTO, "db", "user", "add", "alice", "--password-stdin"],
            env={**os.environ, **with_ini}, input=f"{password}\n",
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert hint.returncode != 0 and "--embedded" in hint.stderr, hint.stderr

        written = tmp_path / "written.ini"
        added = subprocess.run(
            [*CONNECTO, "db", "user", "add", "alice", "--db", "synister_v3", "--embedded",
             "--password-stdin", "--write-credentials", str(written)],
            env={**os.environ, **with_ini}, input=f"{password}\n",
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        assert "user alice created" in added.stdout and "readWrite@synister_v3" in added.stdout
        assert "readWrite@connecto" in added.stdout and f"port = {port}" in added.stdout
        assert password not in added.stdout + added.stderr
        assert written.stat().st_mode & 0o777 == 0o600
        assert uri_from_credentials(written) == uri_from_credentials(ini)

        for settings in (with_ini, {**embedded_env, "CONNECTO_MONGO_CREDENTIALS": str(written)}):
            runs = connecto("runs", env=settings)
            assert runs.returncode == 0, runs.stderr
            status = connecto("db", "status", env=settings)
            assert status.returncode == 0, status.stderr
            assert "alice:***@" in status.stdout and "configured" in status.stdout
        with MongoClient(uri_from_credentials(ini), serverSelectionTimeoutMS=5000) as client:
            client.synister_v3.synapses.insert_one({"synapse_id": 1})
            assert client.synister_v3.synapses.count_documents({}) == 1

        wrong = _credentials_ini(tmp_path / "wrong.ini", "alice", "nope", port)
        failed = connecto("runs", env={**embedded_env, "CONNECTO_MONGO_CREDENTIALS": str(wrong)})
        assert failed.returncode != 0 and "authentication failed" in failed.stderr.lower()

        again = connecto("db", "user", "add", "alice", "--password-env", "NEW_PW",
                         env={**embedded_env, "NEW_PW": "other"})  # fmt: skip
        assert again.returncode != 0 and "already exists" in again.stderr
        assert "--replace" in again.stderr

        assert connecto("db", "down", env=embedded_env).returncode == 0
        restarted = connecto("db", "up", env=embedded_env)
        assert f"127.0.0.1:{port}/" in restarted.stdout  # the INI's port still holds
        runs = connecto("runs", env=with_ini)
        assert runs.returncode == 0, runs.stderr
        log = (tmp_path / "data" / "mongo" / "server.log").read_text(errors="replace")
        assert "s3cret" not in log
    finally:
        connecto("db", "down", env=embedded_env)
