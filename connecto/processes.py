"""Worker processes that die with their parent, and whether a recorded process is gone.

A command killed outright (SIGKILL, the OOM killer) runs no cleanup: its workers would
live on, and its tracking document would say `running` forever. So workers ask the kernel
to kill them with their parent, and tracking documents record who runs them (host, PID
namespace, pid and its start), which lets a reader on the same host tell a run that is
gone from one that still works.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import multiprocessing
import multiprocessing.util
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere a no-op).

    Call it first thing in a worker. The signal comes when the parent *thread* that started
    the worker ends, so start workers from a thread that lives as long as they should.
    `parent_pid`, the pid of the process that started this one, tells a parent that died
    before the call from a live one (a multiprocessing child knows its parent without it).
    """
    if not sys.platform.startswith("linux"):
        return
    parent = multiprocessing.parent_process()
    if parent_pid is not None:
        expected = parent_pid
    else:
        expected = parent.pid if parent is not None else os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != expected:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


_forked_children_die = False


def _after_fork(_: object) -> None:
    if _forked_children_die:
        die_with_parent()


@cache
def _register_after_fork() -> None:
    multiprocessing.util.register_after_fork(_after_fork, _after_fork)


@contextlib.contextmanager
def children_die_with_parent() -> Iterator[None]:
    """Every multiprocessing child forked inside this block, and every child those fork,
    dies with its parent: gunpowder's PreCache watchdog and its cache workers. (Its own
    parent check blocks forever on a full queue, and the workers then outlive a killed
    `connecto train`.)"""
    global _forked_children_die
    _register_after_fork()
    previous, _forked_children_die = _forked_children_die, True
    try:
        yield
    finally:
        _forked_children_die = previous


class _ParentWatch:
    """Unpickled in a worker process, asks the kernel to kill it with `parent_pid`.

    A spawned worker (daisy's `python -m daisy._subprocess_worker`) runs no code of ours
    until it has unpickled its function, which imports everything the function needs
    (seconds); pickled ahead of that function, this runs first, before those imports."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_watch_parent, (self.parent_pid,))


def _watch_parent(parent_pid: int) -> _ParentWatch:
    if os.getpid() != parent_pid:  # not a copy made in the parent itself
        die_with_parent(parent_pid)
    return _ParentWatch(parent_pid)


class _DiesWithParent:
    """A worker function (no arguments) whose process dies with the one that made it."""

    def __init__(self, function: Callable[..., Any], watch: _ParentWatch | None = None) -> None:
        self.watch = watch or _ParentWatch(os.getpid())
        self.function = function

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.watch, self.function))  # the watch unpickles first

    def _call(self, *args: Any) -> Any:
        _watch_parent(self.watch.parent_pid)  # in case it was not unpickled (a fork)
        with children_die_with_parent():
            return self.function(*args)

    def __call__(self) -> Any:
        return self._call()


class _BlockDiesWithParent(_DiesWithParent):
    """A block function (one argument) whose process dies with the one that made it."""

    def __call__(self, block: Any) -> Any:  # type: ignore[override]
        return self._call(block)


def _rebuild(
    cls: type[_DiesWithParent], watch: _ParentWatch, function: Callable[..., Any]
) -> _DiesWithParent:
    return cls(function, watch)


def worker_dies_with_parent(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` for a worker process started by this one (daisy's blockwise workers):
    the worker dies with this process, as do the children it forks. Its arity (a worker
    function takes no argument, a block function one) is kept: daisy dispatches on it."""
    try:
        arguments = [a for a in inspect.getfullargspec(function).args if a != "self"]
    except TypeError:
        arguments = []
    wrapper = _BlockDiesWithParent if arguments else _DiesWithParent
    return wrapper(function)


# ---------------------------------------------------------------- is it still there?


def pid_alive(pid: int) -> bool:
    """Whether `pid` names a process that runs (a zombie, killed but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """Which pids this process sees: a container has its own, even under the host's name."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When `pid` started, as `<boot id>:<clock ticks since boot>` (Linux), exact and immune
    to clock changes; None when no such process runs (or it is a zombie), or off Linux."""
    stat = _read(f"/proc/{pid}/stat")
    boot = _read("/proc/sys/kernel/random/boot_id")
    if stat is None or boot is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # fields 3.. of proc(5); the name may hold spaces
    if fields[0] == "Z":
        return None
    return f"{boot}:{fields[19]}"  # field 22, starttime


def process_record() -> dict[str, Any]:
    """This process as a tracking document records it (see `process_gone`)."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid_namespace": _pid_namespace(),
        "pid": pid,
        "pid_started": process_start(pid),
    }


def process_gone(document: Mapping[str, Any]) -> bool:
    """Whether the process a document records (`process_record`) has provably ended: it ran
    on this host, in this PID namespace, and its pid is free, a zombie, or another, later
    process's. Anything else (another host or container, no record) proves nothing."""
    pid, started = document.get("pid"), document.get("pid_started")
    if not isinstance(pid, int) or not started:
        return False
    here = _pid_namespace()
    if here is None or document.get("pid_namespace") != here:
        return False
    if document.get("host") != socket.gethostname():
        return False
    return process_start(pid) != started
