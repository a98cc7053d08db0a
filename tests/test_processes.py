"""Workers die with their parent (children of children too); a recorded process is gone
only when that is provable on this host."""

from __future__ import annotations

import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from connecto.processes import process_gone, process_record, worker_dies_with_parent
from tests.conftest import CONNECTO, REPO, needs_neuroproof, sigkill_when_ready, survivors
from tests.tasks.segmentation.test_workflow import write_config

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


# A worker process: unpickles its function from stdin, says whether the kernel will kill
# it with its parent (PR_GET_PDEATHSIG), and calls the function.
UNPICKLE_AND_CALL = """
import ctypes, pickle, sys
function = pickle.loads(sys.stdin.buffer.read())
signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(signal), 0, 0, 0)
print(signal.value, function(*sys.argv[1:]))
"""


def test_a_worker_function_kills_its_process_with_the_parent_and_keeps_its_arity() -> None:
    from daisy._task import _block_fn_arity  # how daisy tells worker and block functions

    worker = worker_dies_with_parent(platform.python_version)
    block = worker_dies_with_parent(json.dumps)
    assert (_block_fn_arity(worker), _block_fn_arity(block)) == (0, 1)
    assert worker() == platform.python_version()  # in this process: no death wish
    for function, args in ((worker, []), (block, ["x"])):
        child = subprocess.run(
            [sys.executable, "-c", UNPICKLE_AND_CALL, *args], cwd=REPO,
            input=pickle.dumps(function), capture_output=True, check=True,
        )  # fmt: skip
        expected = platform.python_version() if not args else json.dumps("x")
        assert child.stdout.decode().split() == [str(int(signal.SIGKILL)), expected]


def _daisy_workers(processes: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for process in processes:
        try:
            if "daisy._subprocess_worker" in process.cmdline():
                found.append(process)
        except psutil.Error:  # gone meanwhile
            pass
    return found


@needs_neuroproof
def test_segment_workers_die_with_a_killed_segment_run(
    tmp_path: Path, db_name: str, connecto
) -> None:
    """`connecto segment fragments` with 2 daisy workers, SIGKILLed while they start: they
    die at once. (Unguarded, each lives on for seconds, loading its modules, and may start
    a block of the dead run.)"""
    config = write_config(tmp_path, db_name, num_workers=2, roi=[[0, 0, 0], [1280] * 3])
    made = connecto("segment", "gt-affinities", "-c", config, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    process = subprocess.Popen(
        [*CONNECTO, "segment", "fragments", "-c", str(config)], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def workers_started(parent: psutil.Process) -> bool:
        workers = _daisy_workers(parent.children(recursive=True))
        return len(workers) >= 2 and all(time.time() - w.create_time() > 0.3 for w in workers)

    children = sigkill_when_ready(process, workers_started, "the segment run")
    alive = survivors(children, timeout_s=1.5)
    assert not alive, f"{len(alive)} of {len(children)} processes outlived the segment run"


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
