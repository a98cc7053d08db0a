"""A blockwise worker run as a job: `python -m connecto.launch.worker PAYLOAD`.

PAYLOAD (owner-only, written by the driver: `workers.WorkerGroup.spawner`) holds the block
function (or a worker function running its own daisy Client loop); `DAISY_CONTEXT` (from
the job's owner-only env file) says where daisy's scheduler listens. The worker takes
blocks until the scheduler has none left.

A watchdog thread probes the scheduler's port: when it refuses (or does not answer)
`LOST_AFTER` times in a row, the driver is gone and the worker exits at once with
`EXIT_DRIVER_GONE`, even in the middle of a block (whose bookkeeping then says not done, so
a rerun does it again). daisy's own connection failing ends it the same way, at once.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 3.0
LOST_AFTER = 3
EXIT_DRIVER_GONE = 75  # EX_TEMPFAIL: nothing wrong with the worker


def scheduler_address() -> tuple[str, int]:
    from daisy import Context

    context = Context.from_env()
    return context["hostname"], int(context["port"])


def driver_answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def watch_driver(address: tuple[str, int]) -> threading.Thread:
    """A daemon thread ending this process when the scheduler at `address` is gone."""

    def watch() -> None:
        failures = 0
        while True:
            time.sleep(PROBE_INTERVAL_S)
            failures = 0 if driver_answers(address) else failures + 1
            if failures >= LOST_AFTER:
                driver_gone(address)

    thread = threading.Thread(target=watch, name="connecto-driver-watch", daemon=True)
    thread.start()
    return thread


def run_blocks(function: Any) -> None:
    """daisy's block loop: take blocks until there are none."""
    from daisy import Client

    client = Client()
    while True:
        with client.acquire_block() as block:
            if block is None:
                return
            function(block)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m connecto.launch.worker PAYLOAD", file=sys.stderr)
        return 2
    import cloudpickle

    from connecto.processes import children_die_with_parent

    address = scheduler_address()
    if not driver_answers(address):
        print(f"connecto: no blockwise scheduler at {address[0]}:{address[1]}; nothing to do")
        return 0  # a straggler started after the run ended
    watch_driver(address)
    payload = cloudpickle.loads(Path(argv[0]).read_bytes())
    print(f"connecto: worker on {socket.gethostname()} pid {os.getpid()}", flush=True)
    try:
        with children_die_with_parent():  # cache workers volara forks die with this one
            if payload["arity"] == 0:
                payload["function"]()
            else:
                run_blocks(payload["function"])
    except Exception:
        if driver_answers(address):
            raise  # the worker's own failure: its traceback goes to the log
        driver_gone(address)  # daisy's connection lost: the driver stopped
    return 0


def driver_gone(address: tuple[str, int]) -> None:
    print(
        f"connecto: the blockwise scheduler at {address[0]}:{address[1]} is gone "
        "(its driver stopped); this worker stops",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_DRIVER_GONE)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
