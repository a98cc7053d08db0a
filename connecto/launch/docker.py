"""The Docker launcher: runs a task in a container through the Docker SDK.

`prepare()` writes the container's spec (image, command, mounts, the names of the variables
to pass from the job's environment, user, working directory, GPUs, network) beside the task's
log and returns the host-side command `python -m connecto.launch.docker SPEC`, which starts
the container, streams its output to stdout (the task's log), stops it on SIGTERM/SIGINT
(scancel, bkill, `connecto jobs cancel`) and exits with the container's exit code. So a
container is an ordinary process to every scheduler, and no container outlives its job. The
runner gets the environment's values (the MongoDB password) from the job, not from the spec.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from connecto import ConnectoError
from connecto.launch.base import Task, collect_mounts

# Short: SLURM sends SIGKILL KillWait seconds after SIGTERM, and the container must be gone
# by then (a killed runner would leave it running; `connecto jobs cancel` also stops it by
# its label).
STOP_TIMEOUT_S = 3
LABEL = "connecto.log"
LOOPBACK = ("localhost", "127.", "::1", "[::1]")


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    command: list[str]
    workdir: str
    mounts: dict[str, str]  # host directory -> "rw" | "ro", bound at the same path
    env: dict[str, str]  # fixed values, written to disk: never a secret
    user: str  # "uid:gid" of the caller, so files it writes belong to the user
    num_gpus: int = 0
    network_mode: str | None = None  # "host" when the MongoDB URI is a loopback address
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    pass_env: list[str] = field(default_factory=list)  # names whose values come from the runner

    def environment(self, host_env: Mapping[str, str]) -> dict[str, str]:
        """The container's environment: `env`, plus the `pass_env` variables of the runner's
        environment (the job's, from its 0600 env file), so the spec on disk holds no
        password."""
        return {**self.env, **{key: host_env[key] for key in self.pass_env if key in host_env}}


def needs_host_network(env: Mapping[str, str]) -> bool:
    """A loopback MongoDB URI (the embedded server, a tunnel) is reachable from a container
    only on the host's network; any other host is reachable from the default bridge. So is
    a blockwise worker's daisy scheduler listening on the loopback (`DAISY_CONTEXT`)."""
    if _loopback_scheduler(env.get("DAISY_CONTEXT", "")):
        return True
    uri = env.get("CONNECTO_MONGO_URI", "")
    if not uri:
        return False
    from pymongo.uri_parser import parse_uri

    try:
        hosts = [host for host, _ in parse_uri(uri, validate=False)["nodelist"]]
    except Exception:  # a URI pymongo cannot parse fails later with a clear message
        return False
    return any(h.startswith(LOOPBACK) for h in hosts)


def _loopback_scheduler(context: str) -> bool:
    if not context:
        return False
    from daisy import Context

    try:
        host = str(Context.from_env_string(context)["hostname"])
    except Exception:  # a malformed context fails in the worker with daisy's message
        return False
    return host.startswith(LOOPBACK)


def client() -> Any:
    import docker
    from docker.errors import DockerException

    try:
        return docker.from_env()
    except DockerException as error:
        raise ConnectoError(f"the Docker engine does not answer: {error}") from None


class DockerLauncher:
    name = "docker"

    def __init__(self, image: str, num_gpus: int = 0, mount_dirs: list[str] | None = None):
        self.image = image
        self.num_gpus = num_gpus
        self.mount_dirs = list(mount_dirs or [])

    def spec(self, task: Task, env: Mapping[str, str]) -> ContainerSpec:
        mounts = collect_mounts(task, self.mount_dirs)
        missing = [m for m in mounts if not Path(m).exists()]
        if missing:
            raise ConnectoError(f"mount_dirs: {', '.join(missing)} does not exist on this host")
        return ContainerSpec(
            image=self.image,
            command=list(task.command),
            workdir=str(task.workdir.resolve()),
            mounts=mounts,
            env={"HOME": "/tmp"},  # an image's HOME may not exist for our uid
            pass_env=sorted(env),
            user=f"{os.getuid()}:{os.getgid()}",
            num_gpus=self.num_gpus,
            network_mode="host" if needs_host_network(env) else None,
            labels={LABEL: str(task.log_path)},
        )

    def prepare(self, task: Task, env: Mapping[str, str]) -> list[str]:
        path = task.log_path.with_suffix(".docker.json")
        path.write_text(json.dumps(asdict(self.spec(task, env)), indent=1))
        return [sys.executable, "-m", "connecto.launch.docker", str(path)]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The job's environment: the runner passes it on to the container."""
        return dict(env)

    def image_digest(self) -> str | None:
        from docker.errors import ImageNotFound

        try:
            image = client().images.get(self.image)
        except ImageNotFound:
            raise ConnectoError(
                f"docker image {self.image!r} is not on this machine (build it: make image)"
            ) from None
        digests = image.attrs.get("RepoDigests") or []
        return digests[0] if digests else image.id


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signum)


def run_container(spec: ContainerSpec) -> int:
    """Run the container in the foreground; its output goes to stdout. Returns its exit code."""
    import docker

    device_requests = (
        [docker.types.DeviceRequest(count=spec.num_gpus, capabilities=[["gpu"]])]
        if spec.num_gpus
        else None
    )
    engine = client()
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    container = None
    try:
        container = engine.containers.run(
            spec.image,
            spec.command,
            detach=True,
            working_dir=spec.workdir,
            volumes={m: {"bind": m, "mode": mode} for m, mode in spec.mounts.items()},
            environment=spec.environment(os.environ),
            user=spec.user,
            device_requests=device_requests,
            network_mode=spec.network_mode,
            name=spec.name,
            labels=spec.labels,
        )
        print(f"connecto: container {container.short_id} from {spec.image}", flush=True)
        for chunk in container.logs(stream=True, follow=True):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return int(container.wait()["StatusCode"])
    except _Stop as stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not skip the stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if container is not None:
            print(f"connecto: stopping container {container.short_id}", flush=True)
            container.stop(timeout=STOP_TIMEOUT_S)
        return 128 + int(stop.args[0])
    finally:
        if container is not None:
            container.remove(force=True)


def stop_containers(log_path: str) -> int:
    """Stop the containers of a job (found by their label); how many were running. A
    ConnectoError when the Docker engine cannot be asked (they may run on)."""
    import docker.errors
    import requests

    try:
        found = client().containers.list(
            filters={"label": f"{LABEL}={log_path}"},
            ignore_removed=True,  # it may go meanwhile
        )
        for container in found:
            try:
                container.stop(timeout=STOP_TIMEOUT_S)
            except docker.errors.NotFound:  # it exited and was removed meanwhile
                pass
    except (docker.errors.DockerException, requests.RequestException) as error:
        raise ConnectoError(f"the Docker engine does not answer: {error}") from None
    return len(found)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m connecto.launch.docker SPEC.json", file=sys.stderr)
        return 2
    spec = ContainerSpec(**json.loads(Path(argv[0]).read_text()))
    try:
        return run_container(spec)
    except ConnectoError as error:
        print(f"connecto: error: {error}", file=sys.stderr)
        return 125
    except Exception as error:  # docker.errors.* (bad image, bad device request, ...)
        print(f"connecto: error: container failed to start: {error}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
