"""The embedded MongoDB-wire-compatible server (`connecto db up | down | status`).

A `secantusd-py` process bound to 127.0.0.1, its state kept under
`<data_dir>/mongo/`: `storage/` (data, survives restarts), `server.json` (pid, port),
`server.log`. The code that talks to it is plain pymongo, so a real MongoDB works the same.
"""

from __future__ import annotations

import contextlib
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


class LocalServer:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "mongo"
        self.storage = self.root / "storage"
        self.state_file = self.root / "server.json"
        self.log_file = self.root / "server.log"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise start/stop between concurrent connecto processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "server.lock", "w") as lock:
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

    def start(self) -> tuple[ServerState, bool]:
        """Start the server unless it runs; returns (state, started_now)."""
        with self._lock():
            running = self.state()
            if running:
                return running, False
            self.storage.mkdir(parents=True, exist_ok=True)
            port = free_port()
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
                    tail = self.log_file.read_text(errors="replace").splitlines()[-5:]
                    raise ConnectoError(
                        f"the embedded MongoDB server did not start (log {self.log_file}): "
                        + " | ".join(tail)
                    )
                time.sleep(0.1)
            self.state_file.write_text(json.dumps({"pid": state.pid, "port": state.port}))
            return state, True

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the server; returns whether one was running."""
        with self._lock():
            state = self.state()
            self.state_file.unlink(missing_ok=True)
            if state is None:
                return False
            os.kill(state.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while pid_alive(state.pid):
                if time.monotonic() > deadline:
                    os.kill(state.pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
            return True
