"""Submission: a worker config (launcher + scheduler + resources) and tasks -> tracked jobs.

`connecto train 500000 --submit` and `connecto predict --submit` re-run the same connecto
command without `--submit` in the setup directory, through the launcher and scheduler the
setup's `worker_config.toml` names (unset: the `launcher` / `scheduler` settings).
"""

from __future__ import annotations

import getpass
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.db.client import resolve_uri, tracking_database
from connecto.db.tracking import now
from connecto.experiment import PredictSetup, TrainSetup, find_setup
from connecto.launch.apptainer import ApptainerLauncher
from connecto.launch.base import JobBatch, Resources, Task
from connecto.launch.docker import DockerLauncher
from connecto.launch.jobs import get_scheduler, record_jobs, wait_for_jobs
from connecto.launch.local import LocalLauncher, LocalScheduler
from connecto.settings import Settings, load_settings

JOBS_DIR = "jobs"  # in each setup: job scripts, logs, exit codes


def job_environment(settings: Settings) -> dict[str, str]:
    """What every job needs to reach the same database and settings as its submitter: the
    caller's CONNECTO_* variables and the resolved MongoDB URI (the embedded server's too).
    It holds the password of the URI: schedulers keep it in an owner-only env file beside
    the job script (`base.write_env_file`), never in the script or on a command line."""
    env = {k: v for k, v in os.environ.items() if k.startswith("CONNECTO_")}
    env["CONNECTO_MONGO_URI"] = resolve_uri(settings)
    env["CONNECTO_TRACKING_DB"] = settings.tracking_db
    return env


def make_launcher(worker: WorkerConfig, settings: Settings, source: str = "worker_config") -> Any:
    name = worker.launcher or settings.launcher
    if name == "local":
        return LocalLauncher()
    if not worker.container:
        raise ConnectoError(
            f"{source}: launcher {name!r} needs key 'container' "
            f"({'a docker image' if name == 'docker' else 'an apptainer .sif image'})"
        )
    if name == "docker":
        return DockerLauncher(worker.container, worker.num_gpus, worker.mount_dirs)
    return ApptainerLauncher(worker.container, worker.num_gpus, worker.mount_dirs)


def new_token() -> str:
    return uuid.uuid4().hex[:12]


def make_task(
    command: Sequence[str], workdir: Path, name: str, kind: str = "command",
    mounts: Sequence[Path] = (), setup_dir: Path | None = None,
) -> Task:  # fmt: skip
    """A task whose script, log and exit code live in `<workdir>/jobs/`."""
    workdir = workdir.resolve()
    log = workdir / JOBS_DIR / f"{name}-{new_token()}.log"
    return Task(tuple(command), workdir, log, name, kind, tuple(mounts), setup_dir)


def setup_task(setup: TrainSetup | PredictSetup, args: Sequence[str]) -> Task:
    """`connecto ARGS` run in a setup directory, with its experiment directory mounted."""
    kind = args[0] if args else "command"
    if isinstance(setup, TrainSetup):
        name = f"{kind}-{setup.experiment}-t{setup.train_id}"
    else:
        name = f"{kind}-{setup.experiment}-t{setup.train_id}-p{setup.predict_id}"
    experiment_dir = setup.base / setup.experiment
    return make_task(["connecto", *args], setup.path, name, kind, [experiment_dir], setup.path)


def submit_tasks(
    tasks: Sequence[Task],
    worker: WorkerConfig,
    job_name: str | None = None,
    array: bool = True,
    settings: Settings | None = None,
    source: str = "worker_config",
    extra_env: Mapping[str, str] | None = None,
    extra_fields: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Submit the tasks with one worker config (one job array where the scheduler has them,
    else one job per task); returns the job documents recorded in `jobs`. `extra_env` goes
    into the jobs' owner-only env file with the rest (e.g. a blockwise worker's daisy
    context); `extra_fields` into their documents (e.g. `worker_group`)."""
    if not tasks:
        raise ConnectoError("nothing to submit")
    settings = settings or load_settings()
    launcher = make_launcher(worker, settings, source)
    scheduler = get_scheduler(worker.scheduler or settings.scheduler)
    resources = Resources.from_worker(worker)
    db = tracking_database(settings)
    digest = launcher.image_digest()  # also checks the image exists, before anything is written
    env = launcher.environment({**job_environment(settings), **(extra_env or {})})
    for task in tasks:
        task.log_path.parent.mkdir(parents=True, exist_ok=True)
    argvs = [launcher.prepare(task, env) for task in tasks]
    groups = [list(range(len(tasks)))] if array else [[i] for i in range(len(tasks))]
    docs = []
    for group in groups:
        group_tasks = [tasks[i] for i in group]
        name = job_name or group_tasks[0].name
        script = group_tasks[0].log_path.with_suffix(".sh")
        batch = JobBatch([argvs[i] for i in group], group_tasks, resources, name, env, script)
        ids = scheduler.submit(batch)
        for index, (number, job_id) in enumerate(zip(group, ids, strict=True)):
            task = tasks[number]
            docs.append(
                {
                    "_id": task.log_path.stem.rsplit("-", 1)[-1],
                    "name": task.name,
                    "kind": task.kind,
                    "setup_dir": str(task.setup_dir) if task.setup_dir else None,
                    "workdir": str(task.workdir),
                    "scheduler": scheduler.name,
                    "job_id": job_id,
                    "array_index": index if len(group) > 1 else None,
                    "launcher": launcher.name,
                    "command": list(task.command),
                    "argv": argvs[number],
                    "image": launcher.image,
                    "image_digest": digest,
                    "state": "pending",
                    "exit_code": None,
                    "reason": None,
                    "log_path": str(task.log_path),
                    "script_path": str(script),
                    "resources": asdict(resources),
                    "submitted": now(),
                    "host": socket.gethostname(),
                    "user": getpass.getuser(),
                    "cancel_requested": False,
                    **(extra_fields or {}),
                }
            )
            if isinstance(scheduler, LocalScheduler):
                docs[-1]["process"] = scheduler.launched[job_id]
    try:
        return record_jobs(db, docs)
    except Exception:
        # Untracked jobs would be orphans: take them back.
        scheduler.cancel([doc["job_id"] for doc in docs])
        raise


def submit_setups(
    paths: Sequence[Path],
    args: Sequence[str] | None = None,
    array: bool = True,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Submit a connecto command in many setups at once (synister's start_predictions):
    `args` default to `predict` in predict setups; train setups need them (`train N`).
    Setups sharing a worker config go as one job array."""
    settings = load_settings()
    batches: dict[str, tuple[WorkerConfig, list[Task], str]] = {}
    for path in paths:
        setup = find_setup(Path(path))
        if setup.path != Path(path).resolve():
            raise ConnectoError(f"{path}: not a setup directory (it lies inside {setup.path})")
        command = list(args or [])
        if not command:
            if isinstance(setup, TrainSetup):
                raise ConnectoError(f"{path}: a train setup; say what to run (e.g. train 500000)")
            command = ["predict"]
        worker = setup.worker_config()
        key = worker.model_dump_json()
        source = str(setup.path / "worker_config")
        batches.setdefault(key, (worker, [], source))[1].append(setup_task(setup, command))
    docs: list[dict[str, Any]] = []
    for worker, tasks, source in batches.values():
        name = tasks[0].name if len(tasks) == 1 else f"{tasks[0].kind}-batch-{len(tasks)}"
        docs += submit_tasks(tasks, worker, name, array, settings, source)
    if wait:
        docs = wait_for_jobs(tracking_database(settings), docs)
    return docs


def submit_here(args: Sequence[str], cwd: Path | None = None, wait: bool = False) -> list[dict]:
    """`connecto ARGS` as a job in the setup directory `cwd` lies in."""
    setup = find_setup(cwd or Path.cwd())
    return submit_setups([setup.path], args, wait=wait)


def job_args(
    name: str, arguments: Sequence[object] = (), options: Mapping[str, object] | None = None
) -> list[str]:
    """The arguments of `connecto NAME` for the job of `connecto NAME ... --submit`, from the
    options as the command parsed them: `snake_case` names become `--kebab-case`, a true
    flag `--flag`, a list one `--option value` per item; None, False and empty lists are
    left out. So the job runs what was asked, with each option spelled one way."""
    args = [name, *map(str, arguments)]
    for key, value in (options or {}).items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [part for item in value for part in (flag, str(item))]
        else:
            args += [flag, str(value)]
    return args


def submit_rerun(
    where: Path,
    name: str,
    arguments: Sequence[object] = (),
    options: Mapping[str, object] | None = None,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """`connecto NAME ... --submit [--wait]`: the same command, without those two options,
    as a job in the setup directory `where` lies in (the job's working directory, so
    options that locate the setup, such as train's -d/-e/-t, are not passed on)."""
    return submit_here(job_args(name, arguments, options), where, wait)


def submit_command(
    command: Sequence[str],
    workdir: Path,
    worker: WorkerConfig | None = None,
    name: str | None = None,
    wait: bool = False,
) -> list[dict[str, Any]]:
    """Any command (`connecto ...` or a program) as one tracked job run in `workdir`."""
    if not command:
        raise ConnectoError("no command given")
    if not workdir.is_dir():
        raise ConnectoError(f"{workdir}: no such directory")
    label = name or Path(command[0]).name
    task = make_task(command, workdir, label, mounts=[workdir])
    docs = submit_tasks([task], worker or WorkerConfig(num_gpus=0, num_cpus=1), label)
    return wait_for_jobs(tracking_database(), docs) if wait else docs
