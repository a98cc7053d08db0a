"""The Apptainer (Singularity) launcher: `apptainer exec --nv -B DIR:DIR ... --pwd WORKDIR
IMAGE connecto ...`, built as an argument list; the scheduler runs it. The environment
(the MongoDB URI with its password) reaches the container as APPTAINERENV_ variables of the
job's environment, never on the command line."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path

from connecto import ConnectoError
from connecto.launch.base import Task, collect_mounts

BINARIES = ("apptainer", "singularity")


def apptainer_binary() -> str | None:
    """The apptainer (or older singularity) executable on PATH, if any."""
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


class ApptainerLauncher:
    name = "apptainer"

    def __init__(
        self,
        image: str,
        num_gpus: int = 0,
        mount_dirs: list[str] | None = None,
        binary: str | None = None,
    ):
        self.image = image
        self.num_gpus = num_gpus
        self.mount_dirs = list(mount_dirs or [])
        # Without the binary here the command is still built: it may run on a cluster node.
        self.binary = binary or apptainer_binary() or "apptainer"

    def prepare(self, task: Task, env: Mapping[str, str]) -> list[str]:
        argv = [self.binary, "exec"]
        if self.num_gpus:
            argv.append("--nv")
        for mount, mode in collect_mounts(task, self.mount_dirs).items():
            argv += ["-B", f"{mount}:{mount}" + (":ro" if mode == "ro" else "")]
        # --pwd is the working directory of the command (-W/--workdir is apptainer's scratch).
        argv += ["--pwd", str(task.workdir.resolve())]
        # No --env here: a command line is visible to every user (ps); see environment().
        return [*argv, self.image, *task.command]

    def environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """The job's environment, each variable also as APPTAINERENV_<KEY> (SINGULARITYENV_
        for singularity): apptainer sets those in the container over an image's
        %environment, as `--env` would, without the values on the command line."""
        prefix = "SINGULARITYENV_" if Path(self.binary).name == "singularity" else "APPTAINERENV_"
        return {**env, **{f"{prefix}{key}": value for key, value in env.items()}}

    def image_digest(self) -> str | None:
        """sha256 of a local .sif file; a `docker://` or `library://` reference has none here."""
        path = Path(self.image)
        if "://" in self.image:
            return None
        if not path.is_file():
            raise ConnectoError(f"container {self.image!r}: no such image file")
        with path.open("rb") as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
