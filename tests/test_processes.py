"""Workers die with their parent (children of children too); a recorded process is gone
only when that is provable on this host."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from connecto.processes import process_gone, process_record
from tests.conftest import REPO, survivors

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's"
)

# A parent that forks a child, which forks a grandchild (as gunpowder's PreCache forks its
# watchdog, which forks the cache workers); both would sleep on after the parent is killed.
FAMILY = """
import multiprocessing, os, time
from connecto.processes import children_die_with_parent

def grandchild():
    time.sleep(600)

def child():
    multiprocessing.Process(target=grandchild).start()
    time.sleep(600)

with children_die_with_parent():
    multiprocessing.Process(target=child).start()
print("started", flush=True)
time.sleep(600)
"""


def test_children_and_grandchildren_die_with_a_killed_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", FAMILY], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "started\n"
        deadline = time.monotonic() + 30
        while len(family := psutil.Process(parent.pid).children(recursive=True)) < 2:
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    finally:
        if parent.poll() is None:
            parent.kill()
    assert survivors(family, timeout_s=5) == []


def test_a_record_is_gone_only_when_provably_so() -> None:
    me = process_record()
    assert me["pid"] == os.getpid() and me["host"]
    assert not process_gone(me)

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert process_gone({**me, "pid": finished.pid})  # its pid is free
    assert process_gone({**me, "pid_started": "another boot:0"})  # the pid is another's now

    assert not process_gone({**me, "pid": finished.pid, "host": "elsewhere"})
    assert not process_gone({**me, "pid": finished.pid, "pid_namespace": "pid:[1]"})
    assert not process_gone({"state": "running", "host": me["host"]})  # nothing recorded
