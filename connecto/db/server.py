"""The embedded MongoDB-wire-compatible server (`connecto db up | down | status`).

A `secantusd-py` process bound to 127.0.0.1, its state kept under
`<data_dir>/mongo/`: `storage/` (data, survives restarts), `server.json` (pid, port),
`server.log`. The code that talks to it is plain pymongo, so a real MongoDB works the same.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from connecto import ConnectoError
from connecto.processes import pid_alive

START_TIMEOUT_S = 30.0
# Below this much free space WiredTiger's journal and checkpoints fail; it then panics and
# answers every later command with an internal error until it is restarted.
MIN_FREE_BYTES = 4 * 1024 * 1024
_SETTING = "set CONNECTO_DATA_DIR or data_dir in connecto.toml"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged writer on `path`'s file system (None: unknown)."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def disk_full_message(data_dir: Path, free: int | None) -> str:
    room = "" if free is None else f" ({_size(free)} free)"
    return (
        f"the data directory's disk is full: {data_dir}{room}; free some space and rerun "
        "(the embedded MongoDB server restarts then)"
    )


def _existing_file_above(path: Path) -> Path | None:
    """The first component of `path` that exists and is not a directory."""
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return None


def data_dir_error(data_dir: Path, error: OSError) -> ConnectoError:
    """`error`, met while using `data_dir`, as one line naming the path and the problem."""
    data_dir = Path(data_dir)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConnectoError(disk_full_message(data_dir, free_bytes(_existing(data_dir))))
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        file = _existing_file_above(data_dir / "mongo")
        what = "not a directory" if file in (None, data_dir) else f"{file} is not a directory"
        return ConnectoError(f"data_dir {data_dir}: {what} ({_SETTING})")
    if error.errno == errno.EROFS:
        return ConnectoError(f"data_dir {data_dir}: on a read-only file system ({_SETTING})")
    if error.errno in (errno.EACCES, errno.EPERM):
        return ConnectoError(f"data_dir {data_dir}: not writable, permission denied ({_SETTING})")
    where = f" ({error.filename})" if error.filename else ""
    reason = (error.strerror or str(error)).lower()
    return ConnectoError(f"data_dir {data_dir}: cannot be used, {reason}{where} ({_SETTING})")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_command(port: int, storage: Path) -> list[str]:
    executable = shutil.which("secantusd-py") or str(Path(sys.executable).parent / "secantusd-py")
    if not Path(executable).exists():
        raise ConnectoError(
            "the embedded MongoDB server is not installed: install connecto with its "
            "`local-server` extra (`make install` does), or set CONNECTO_MONGO_URI"
        )
    return [
        executable,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--storage-path", str(storage),
        "--standalone",
        "--log-level", "WARNING",
        # Write each commit's journal record out (and fsync it) before acknowledging: without
        # it, records wait in the server's own buffer and a kill -9 loses acknowledged writes
        # and whole new collections.
        "--sync-on-commit",
    ]  # fmt: skip


def _wedged(state: ServerState) -> bool:
    """Whether the server answers but has stopped working: after a full disk (or another
    storage failure) WiredTiger panics, and every command that reads or writes data fails
    with an internal error while ping still answers."""
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure, PyMongoError

    client: MongoClient = MongoClient(
        state.uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=10000
    )
    try:
        client.admin.command("listDatabases", nameOnly=True)
    except OperationFailure as error:
        return error.code == 1  # InternalError
    except PyMongoError:  # slow or busy: not provably broken
        return False
    finally:
        client.close()
    return False


class LocalServer:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = Path(data_dir) / "mongo"
        self.storage = self.root / "storage"
        self.state_file = self.root / "server.json"
        self.log_file = self.root / "server.log"
        # the last port, reused while free: a credentials INI naming it keeps working
        self.port_file = self.root / "port"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise start/stop between concurrent connecto processes."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock = open(self.root / "server.lock", "w")  # noqa: SIM115 - closed below
        except OSError as error:
            raise data_dir_error(self.data_dir, error) from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def state(self) -> ServerState | None:
        """The running server, or None (a stale state file is ignored)."""
        try:
            state = ServerState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if pid_alive(state.pid) and _port_open(state.port):
            return state
        return None

    def check_room(self) -> None:
        """A one-line ConnectoError unless the data directory can take the server's writes."""
        probe = self.root / ".write-test"
        try:
            probe.write_bytes(b"connecto")
            probe.unlink()
        except OSError as error:
            raise data_dir_error(self.data_dir, error) from None
        full = self.disk_full()
        if full:
            raise full

    def disk_full(self) -> ConnectoError | None:
        """The one-line error for a data directory whose disk has too little room left (for
        a command whose database writes failed with the embedded server's internal error)."""
        free = free_bytes(_existing(self.root))
        if free is not None and free < MIN_FREE_BYTES:
            return ConnectoError(disk_full_message(self.data_dir, free))
        return None

    def start(self) -> tuple[ServerState, bool]:
        """Start the server unless it runs (restart it if it has stopped working, as after
        a full disk); returns (state, started_now). Problems with the data directory (not
        a directory, not writable, its disk full) are one-line ConnectoErrors."""
        with self._lock():
            try:
                return self._start()
            except OSError as error:
                raise data_dir_error(self.data_dir, error) from None

    def _start(self) -> tuple[ServerState, bool]:
        self.check_room()  # a running server's writes would fail too
        running = self.state()
        if running and _wedged(running):  # restart it
            self.state_file.unlink(missing_ok=True)
            self._terminate(running, timeout_s=5.0)
            running = None
        if running:
            return running, False
        self.storage.mkdir(parents=True, exist_ok=True)
        port = self._last_port() or free_port()
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                server_command(port, self.storage),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the command that started it
                # secantusdb's test switch SECANTUS_TEST_FAST_STORAGE drops the sync above.
                env={**os.environ, "SECANTUS_FORCE_DURABLE": "1"},
            )
        state = ServerState(pid=process.pid, port=port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                full = self.disk_full()
                if full:
                    raise full
                tail = self.log_file.read_text(errors="replace").splitlines()[-5:]
                raise ConnectoError(
                    f"the embedded MongoDB server did not start (log {self.log_file}): "
                    + " | ".join(tail)
                )
            time.sleep(0.1)
        self.state_file.write_text(json.dumps({"pid": state.pid, "port": state.port}))
        self.port_file.write_text(f"{port}\n")
        return state, True

    def _last_port(self) -> int | None:
        """The port of the last start when it is free now, else None."""
        try:
            port = int(self.port_file.read_text())
        except (OSError, ValueError):
            return None
        if not 0 < port < 65536:
            return None
        with socket.socket() as sock:
            # as the server binds: connections of its last run in TIME_WAIT do not block it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return None
        return port

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the server; returns whether one was running."""
        with self._lock():
            state = self.state()
            self.state_file.unlink(missing_ok=True)
            if state is None:
                return False
            self._terminate(state, timeout_s)
            return True

    @staticmethod
    def _terminate(state: ServerState, timeout_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while pid_alive(state.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
