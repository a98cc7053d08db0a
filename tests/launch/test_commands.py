"""The command lines the launchers and schedulers build, the job script they share, and
the state mapping; Apptainer and LSF execution where their binaries exist."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.launch.apptainer import ApptainerLauncher, apptainer_binary
from connecto.launch.base import (
    JobBatch,
    Resources,
    Task,
    job_script,
    read_exit_file,
    write_env_file,
)
from connecto.launch.docker import DockerLauncher, needs_host_network
from connecto.launch.lsf import bsub_argv, lsf_time
from connecto.launch.slurm import exit_code, sbatch_argv, to_status
from connecto.launch.submit import make_launcher
from connecto.settings import Settings


def task(tmp_path: Path, command: tuple[str, ...] = ("connecto", "train", "20")) -> Task:
    work = tmp_path / "exp" / "02_train" / "setup_t0"
    work.mkdir(parents=True, exist_ok=True)
    return Task(command, work, work / "jobs" / "train-abc.log", "train-exp-t0", "train",
                (tmp_path / "exp",), work)  # fmt: skip


RESOURCES = Resources(queue="gpu_any", num_cpus=5, num_gpus=1, memory_gb=16, time_limit="48:00:00")


def test_sbatch_command_line(tmp_path: Path) -> None:
    argv = sbatch_argv(RESOURCES, "train-exp-t0", tmp_path / "a.log", tmp_path / "a.sh", 1)
    assert argv[:2] == ["sbatch", "--parsable"]
    expected = ["--job-name=train-exp-t0", "--partition=gpu_any", "--cpus-per-task=5", "--gpus=1"]
    expected += ["--mem=16G", "--time=48:00:00", f"--output={tmp_path}/a.log"]
    assert set(expected) <= set(argv)
    assert argv[-1] == str(tmp_path / "a.sh")
    assert not any(a.startswith("--array") for a in argv)
    array = sbatch_argv(Resources(), "batch", tmp_path / "b.log", tmp_path / "b.sh", 4)
    assert "--array=0-3" in array
    assert not any(a.startswith(("--gpus", "--mem", "--time", "--partition")) for a in array)


def test_bsub_command_line(tmp_path: Path) -> None:
    argv = bsub_argv(RESOURCES, "train", tmp_path / "a.log", tmp_path / "a.sh", 1)
    assert argv == [
        "bsub", "-J", "train", "-n", "5", "-q", "gpu_any", "-gpu", "num=1",
        "-R", "rusage[mem=16384]", "-W", "48:00", "-o", str(tmp_path / "a.log"),
        "/bin/bash", str(tmp_path / "a.sh"),
    ]  # fmt: skip
    array = bsub_argv(Resources(num_cpus=2), "batch", tmp_path / "b.log", tmp_path / "b.sh", 3)
    assert array[:3] == ["bsub", "-J", "batch[1-3]"]
    assert lsf_time("1-02:30:00") == "26:30" and lsf_time("00:10:01") == "0:11"


def test_apptainer_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    launcher = ApptainerLauncher(
        "/images/connecto.sif", 1, [str(data), f"{tmp_path}:ro"], "apptainer"
    )
    t = task(tmp_path)
    env = {"CONNECTO_MONGO_URI": "mongodb://u:pw@db.lab:27017/"}
    argv = launcher.prepare(t, env)
    assert argv[:3] == ["apptainer", "exec", "--nv"]
    binds = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    assert f"{data}:{data}" in binds and f"{tmp_path}:{tmp_path}:ro" in binds
    assert f"{tmp_path / 'exp'}:{tmp_path / 'exp'}" in binds
    assert argv[argv.index("--pwd") + 1] == str(t.workdir)
    assert not any("pw@" in a for a in argv)  # the environment comes from the job's env file
    assert launcher.environment(env)["APPTAINERENV_CONNECTO_MONGO_URI"] == env["CONNECTO_MONGO_URI"]
    assert argv[-4:] == ["/images/connecto.sif", "connecto", "train", "20"]
    no_gpu = ApptainerLauncher("x.sif", 0, [], "apptainer").prepare(t, {})
    assert "--nv" not in no_gpu


def test_docker_spec(tmp_path: Path) -> None:
    t = task(tmp_path)
    launcher = DockerLauncher("connecto:latest", 2, [f"{tmp_path}:ro"])
    spec = launcher.spec(t, {"CONNECTO_MONGO_URI": "mongodb://127.0.0.1:27017/"})
    assert spec.network_mode == "host"  # a loopback server is only reachable on the host network
    assert spec.workdir == str(t.workdir) and spec.command == ["connecto", "train", "20"]
    assert spec.mounts[str(tmp_path)] == "ro" and spec.mounts[str(tmp_path / "exp")] == "rw"
    assert spec.num_gpus == 2 and spec.user.count(":") == 1
    remote = launcher.spec(t, {"CONNECTO_MONGO_URI": "mongodb://u:p@db.lab:27017/"})
    assert remote.network_mode is None
    assert not needs_host_network({})
    with pytest.raises(ConnectoError, match="does not exist"):
        DockerLauncher("x", 0, [str(tmp_path / "missing")]).spec(t, {})


def test_container_launcher_needs_an_image() -> None:
    with pytest.raises(ConnectoError, match="needs key 'container'"):
        make_launcher(WorkerConfig(launcher="docker"), Settings(), "w.toml")


@pytest.mark.parametrize(
    ("state", "code", "expected"),
    [
        ("PENDING", "0:0", ("pending", None)),
        ("RUNNING", "0:0", ("running", None)),
        ("COMPLETED", "0:0", ("completed", 0)),
        ("COMPLETED", "2:0", ("failed", 2)),  # never completed without exit code 0
        ("FAILED", "3:0", ("failed", 3)),
        ("CANCELLED by 0", "0:15", ("cancelled", 143)),
        ("TIMEOUT", "0:0", ("failed", None)),
        ("OUT_OF_MEMORY", "0:125", ("failed", 253)),
    ],
)
def test_slurm_states(state: str, code: str, expected: tuple[str, int | None]) -> None:
    status = to_status(state, exit_code(code))
    assert (status.state, status.exit_code) == expected


def test_job_script_runs_the_indexed_task(tmp_path: Path) -> None:
    """The generated script, run by bash as a scheduler would: each array index runs its own
    task in its own directory, appends to its own log and records its exit code."""
    tasks = []
    for number in range(2):
        work = tmp_path / f"w{number}"
        work.mkdir()
        tasks.append(Task(("x",), work, work / "t.log", f"t{number}"))
    argvs = [["bash", "-c", 'echo "in $PWD $GREETING"'], ["bash", "-c", "exit 7"]]
    script = tmp_path / "job.sh"
    env_file = write_env_file(tmp_path / "job.env", {"GREETING": "it's here"})
    script.write_text(job_script(argvs, tasks, env_file, "${INDEX:-0}"))
    first = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    second = subprocess.run(
        ["bash", str(script)], env={"INDEX": "1", "PATH": "/usr/bin:/bin"}, check=False
    )
    assert first.returncode == 0 and second.returncode == 7
    assert f"in {tmp_path / 'w0'} it's here" in (tmp_path / "w0" / "t.log").read_text()
    assert read_exit_file(tasks[0].exit_path) == 0 and read_exit_file(tasks[1].exit_path) == 7
    missing = subprocess.run(["bash", str(script)], env={"INDEX": "5"}, check=False)
    assert missing.returncode == 2
    assert "it's here" not in script.read_text() and env_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(apptainer_binary() is None, reason="apptainer/singularity is not installed")
def test_apptainer_executes(tmp_path: Path) -> None:  # pragma: no cover - needs apptainer
    image = tmp_path / "base.sif"
    build = subprocess.run(
        [apptainer_binary(), "build", str(image), "docker-daemon://connecto-base:bookworm"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    argv = ApptainerLauncher(str(image)).prepare(
        task(tmp_path, ("python3", "-c", "print(6*7)")), {}
    )
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "42"


@pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v bsub"], capture_output=True).returncode != 0,
    reason="LSF (bsub) is not installed",
)
def test_lsf_executes(tmp_path: Path) -> None:  # pragma: no cover - needs LSF
    from connecto.launch.lsf import LsfScheduler

    t = Task(("true",), tmp_path, tmp_path / "j.log", "j")
    batch = JobBatch([["true"]], [t], Resources(), "connecto-test", {}, tmp_path / "j.sh")
    ids = LsfScheduler().submit(batch)
    assert ids and ids[0].isdigit()
