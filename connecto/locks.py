"""One process at a time per setup directory.

Two `connecto train` on one setup overwrite each other's checkpoints, and two `connecto
predict` on one predict setup predict the same synapses twice. An flock on a file in the
setup directory keeps the second out; the kernel drops it when its holder dies (even by
SIGKILL), so a lock is never stale. The file names its holder for the second's message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from connecto import ConnectoError
from connecto.db.tracking import now

LOCK_NAME = ".connecto.lock"


@contextmanager
def setup_lock(path: Path, what: str) -> Iterator[None]:
    """Hold the lock of setup directory `path` for `what` (e.g. "connecto train"), or raise
    ConnectoError naming the process that holds it."""
    lock = Path(path) / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConnectoError(f"{path} is in use by {_holder(lock)}") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                  "started": now().isoformat(timespec="seconds")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(lock: Path) -> str:
    """`pid N on HOST (WHAT started at ...)`, as far as the holder has written it."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return "another process"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')} "
        f"({holder.get('what')} started at {holder.get('started')})"
    )
