"""Blockwise workers as tracked jobs: daisy's scheduler stays in the driver (`connecto
segment ...`); each of its worker slots is a job submitted through connecto's launchers and
schedulers (a local process, a SLURM or LSF job, optionally in the docker or apptainer
image), tracked in `jobs` like any other.

Placement: a `worker_config.toml` beside the segment config (the keys of every
`worker_config`: launcher, scheduler, container, queue, num_cpus, num_gpus, memory_gb,
time_limit, mount_dirs). Without one, workers are local processes of the driver, as before.

How one worker slot runs:
- driver (daisy's server) -> daisy spawns `python -m daisy._subprocess_worker` on the
  driver's host, which calls `ClusterWorker` (the *spawner*): it submits one job, with
  daisy's worker context (`DAISY_CONTEXT`) and the job environment (MongoDB URI) in the
  job's owner-only env file, and waits for the job's end; a job that failed makes the slot
  a dirty exit (daisy retries its block, within `max_retries`, and restarts the slot).
- the job runs `python -m connecto.launch.worker PAYLOAD`: the block function (pickled by
  the driver into an owner-only file) in daisy's `Client` loop.

Before the run the placement is checked (the image exists, `sbatch --test-only` accepts
the partition and resources). With a cluster scheduler, daisy's scheduler listens on an
address of this host other nodes reach (not the loopback; `DAISY_HOST` chooses one).

No orphans: the spawner dies with the driver (the kernel sends it SIGTERM) and then
cancels its job; Ctrl-C reaches the spawners as well; SIGTERM on the driver stops the run
as Ctrl-C does; the driver cancels whatever of its worker group is still queued or running
when it returns or raises. A worker whose driver
is gone without any of that (its host lost, SIGKILL of the whole process group) notices the
missing scheduler (its TCP port refuses or times out, probed every
`connecto.launch.worker.PROBE_INTERVAL_S`) and exits within `DRIVER_GONE_BOUND_S`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.config import WorkerConfig, find_config, load_config
from connecto.launch.base import ACTIVE_STATES, FINAL_STATES, Task
from connecto.launch.jobs import cancel_jobs, describe_state, log_tail, refresh_jobs

WORKER_CONFIG = "worker_config"  # <stem>.toml beside the segment config
WORKERS_DIR = "workers"  # under the logs directory: payloads, job scripts, job logs
WORKER_MODULE = "connecto.launch.worker"
# A worker stops at most this long after its driver is gone (see connecto.launch.worker:
# 3 failed probes 2 s apart, each waiting 3 s at most for an answer, plus the job's exit).
DRIVER_GONE_BOUND_S = 30
JOB_POLL_S = 1.0
LOOPBACK_HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def load_placement(setup_dir: Path) -> WorkerConfig | None:
    """The worker config beside a segment config, or None (local worker processes)."""
    try:
        path = find_config(setup_dir, WORKER_CONFIG)
    except ConnectoError:
        return None
    return load_config(path, WorkerConfig)


@dataclass(frozen=True)
class WorkerGroup:
    """The workers of one blockwise run: their placement and where their files go.
    `group` names them in `jobs` (field `worker_group`)."""

    worker: WorkerConfig
    setup_dir: Path
    log_dir: Path
    group: str

    @classmethod
    def for_logs(cls, log_dir: Path) -> WorkerGroup | None:
        """The group for a run logging to `log_dir` (`<setup>/logs`), when its setup has a
        worker config."""
        setup_dir = Path(log_dir).resolve().parent
        worker = load_placement(setup_dir)
        if worker is None:
            return None
        group = cls(worker, setup_dir, Path(log_dir).resolve(), uuid.uuid4().hex[:12])
        group.check()
        return group

    def check(self) -> None:
        """Refuse a placement that cannot start a worker now, before the run: an unknown
        launcher or scheduler, a missing image, a partition or resources SLURM refuses."""
        from connecto.launch.base import Resources
        from connecto.launch.jobs import get_scheduler
        from connecto.launch.submit import make_launcher
        from connecto.settings import load_settings

        settings = load_settings()
        make_launcher(self.worker, settings, self.source).image_digest()
        scheduler = get_scheduler(self.worker.scheduler or settings.scheduler)
        if hasattr(scheduler, "check"):
            scheduler.check(Resources.from_worker(self.worker), self.source)

    @property
    def directory(self) -> Path:
        return self.log_dir / WORKERS_DIR

    @property
    def source(self) -> str:
        return str(self.setup_dir / f"{WORKER_CONFIG}.toml")

    def spawner(self, function: Callable[..., Any], task_id: str) -> ClusterWorker:
        """daisy's process function for this group: `function` (a worker function, or a
        block function) pickled once into an owner-only payload file."""
        import cloudpickle

        from connecto.launch.base import write_private

        self.directory.mkdir(parents=True, exist_ok=True)
        arity = _arity(function)
        payload = self.directory / f"{task_id}-{self.group}.payload"
        fd = os.open(payload, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(cloudpickle.dumps({"function": function, "arity": arity}))
        write_private(payload.with_suffix(".task"), task_id)  # for people reading the dir
        return ClusterWorker(self, task_id, payload, os.getpid())

    def jobs(self) -> list[dict[str, Any]]:
        from connecto.db.client import tracking_database
        from connecto.db.tracking import JOBS

        db = tracking_database()
        return list(db[JOBS].find({"worker_group": self.group}, sort=[("submitted", 1)]))

    def cancel_active(self) -> list[dict[str, Any]]:
        """Cancel the group's jobs still queued or running (the driver's last word)."""
        from connecto.db.client import tracking_database
        from connecto.db.tracking import JOBS

        db = tracking_database()
        active = list(db[JOBS].find({"worker_group": self.group, "state": {"$in": ACTIVE_STATES}}))
        return cancel_jobs(db, active) if active else []

    @property
    def remote(self) -> bool:
        """Whether the workers may run on other hosts (a cluster scheduler's jobs)."""
        from connecto.settings import load_settings

        return (self.worker.scheduler or load_settings().scheduler) != "none"

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """While the driver runs: daisy's scheduler listens where workers on other hosts
        reach it; SIGTERM stops the run as Ctrl-C does; on every way out the group's
        unfinished jobs are cancelled."""
        loopback = os.environ.get("DAISY_HOST") == LOOPBACK_HOST
        if self.remote and loopback:
            # connecto's default for local workers (steps.logs_in); a cluster's workers need
            # an address of this host they can reach: daisy finds one (set DAISY_HOST to
            # choose another)
            del os.environ["DAISY_HOST"]
        try:
            with sigterm_as_sigint():
                yield
        finally:
            if self.remote and loopback:
                os.environ["DAISY_HOST"] = LOOPBACK_HOST
            with _ignoring_interrupts():
                self.cancel_active()


@contextlib.contextmanager
def sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM becomes SIGINT, which daisy's scheduler (Rust, where Python's own signal
    handlers do not run until it returns) answers by stopping the run. A thread reads the
    signal numbers Python's C-level handler writes to the wakeup fd and sends SIGINT."""
    import socket
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def relay() -> None:
        while data := reader.recv(64):
            if signal.SIGTERM in data:
                os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=relay, name="connecto-sigterm-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.set_wakeup_fd(previous_fd)
        writer.close()  # the relay reads the end and stops
        thread.join(timeout=5)
        reader.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """A second Ctrl-C must not stop the cancelling halfway (orphans)."""
    try:
        saved = [(s, signal.signal(s, signal.SIG_IGN)) for s in (signal.SIGINT, signal.SIGTERM)]
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _arity(function: Callable[..., Any]) -> int:
    """0 for a worker function (it runs its own daisy Client loop), 1 for a block one."""
    import inspect

    try:
        arguments = [a for a in inspect.getfullargspec(function).args if a != "self"]
    except TypeError:
        return 0
    return 1 if arguments else 0


def worker_task(group: WorkerGroup, payload: Path, task_id: str, worker_id: int) -> Task:
    """The job of one worker slot: `python -m connecto.launch.worker PAYLOAD` in the setup
    directory, logging under `<logs>/workers/`."""
    name = f"worker-{task_id}-{worker_id}"
    log = group.directory / f"{name}-{uuid.uuid4().hex[:12]}.log"
    command = ("python", "-m", WORKER_MODULE, str(payload))
    return Task(command, group.setup_dir, log, name, "worker", (group.setup_dir,), group.setup_dir)


def die_with_parent_gently(parent_pid: int) -> None:
    """Have the kernel send SIGTERM (not SIGKILL: the spawner must cancel its job) to this
    process when its parent dies; gone already: exit now."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        raise SystemExit("connecto: the blockwise driver is gone; no worker started")


class ClusterWorker:
    """daisy's worker function for a remote worker slot (runs in daisy's worker process on
    the driver's host): submit the slot's job, wait for it, cancel it when interrupted."""

    def __init__(self, group: WorkerGroup, task_id: str, payload: Path, driver_pid: int):
        self.group = group
        self.task_id = task_id
        self.payload = payload
        self.driver_pid = driver_pid

    def __call__(self, *, context: Any = None) -> None:
        from connecto.db.client import tracking_database
        from connecto.launch.submit import submit_tasks

        die_with_parent_gently(self.driver_pid)
        signal.signal(signal.SIGTERM, _interrupt)
        if context is None:
            import daisy

            context = daisy.Context.from_env()
        worker_id = int(context["worker_id"])
        task = worker_task(self.group, self.payload, self.task_id, worker_id)
        db = tracking_database()
        docs: list[dict[str, Any]] = []
        try:
            docs = submit_tasks(
                [task], self.group.worker, task.name, source=self.group.source,
                extra_env={"DAISY_CONTEXT": context.to_env()},
                extra_fields={"worker_group": self.group.group, "daisy_task": self.task_id,
                              "daisy_worker_id": worker_id},
            )  # fmt: skip
            job = docs[0]
            print(f"connecto: worker job {job['job_id']} ({job['scheduler']}), log {task.log_path}")
            while job["state"] not in FINAL_STATES:
                time.sleep(JOB_POLL_S)
                [job] = refresh_jobs(db, [job])
        except KeyboardInterrupt:
            with _ignoring_interrupts():
                if docs:
                    cancel_jobs(db, docs)
            raise SystemExit(130) from None
        if job["state"] != "completed":
            tail = log_tail(job["log_path"], 30)
            raise RuntimeError(
                f"worker job {job['job_id']} {describe_state(job)}; log {job['log_path']}"
                + (f"\n{tail}" if tail else "")
            )


# ---------------------------------------------------------------- the driver as a job

DRIVER_CONFIG = "driver_config"  # <stem>.toml beside the segment config: the driver's job


def driver_placement(setup_dir: Path) -> WorkerConfig:
    """Where `--submit` runs the driver: `driver_config.toml` beside the segment config, else
    one CPU, no GPU, on this installation (`local` launcher: it submits its workers), with
    the workers' scheduler and the scheduler's default partition."""
    try:
        return load_config(find_config(setup_dir, DRIVER_CONFIG), WorkerConfig)
    except ConnectoError as error:
        if "no driver_config" not in str(error):
            raise
    workers = load_placement(setup_dir)
    scheduler = workers.scheduler if workers is not None else None
    return WorkerConfig(launcher="local", scheduler=scheduler, num_cpus=1, num_gpus=0,
                        time_limit=workers.time_limit if workers else None)  # fmt: skip


def submit_driver(
    config_path: Path, args: Sequence[str], wait: bool = False
) -> list[dict[str, Any]]:
    """`connecto segment ARGS -c CONFIG` as a tracked job (the driver on the CPU partition;
    its workers go where `worker_config.toml` says, e.g. the GPU partition). With `wait`,
    Ctrl-C or SIGTERM cancels the driver job, whose SIGTERM cancels its workers."""
    from connecto.db.client import tracking_database
    from connecto.launch.jobs import wait_for_jobs
    from connecto.launch.submit import make_task, submit_tasks

    config_path = Path(config_path).resolve()
    if not config_path.is_file():
        raise ConnectoError(f"{config_path}: no such segment config")
    setup_dir = config_path.parent
    command = ["connecto", "segment", *args, "-c", str(config_path)]
    name = f"segment-{args[0] if args else 'run'}"
    task = make_task(command, setup_dir, name, kind="segment", mounts=[setup_dir])
    source = str(setup_dir / f"{DRIVER_CONFIG}.toml")
    docs = submit_tasks([task], driver_placement(setup_dir), name, source=source)
    return wait_for_jobs(tracking_database(), docs) if wait else docs
