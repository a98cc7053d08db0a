"""Launch overheads: a tracked `--submit --wait` job through SLURM against a plain
`sbatch --wait --wrap` of the same command, and a Docker container against the local
launcher. Needs the services of `make ci-services`; missing ones are reported and skipped."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPEATS = 3
REPO = Path(__file__).resolve().parents[1]
TRIVIAL = ["python3", "-c", "pass"]


def timed(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of `repeats` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"benchmark run failed: {what}")


def main() -> None:
    os.environ["PATH"] += ":/usr/local/sbin:/usr/sbin:/sbin"
    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    os.environ["CONNECTO_TRACKING_DB"] = "bench_launch"
    from connecto.config import WorkerConfig
    from connecto.db.client import get_client
    from connecto.launch.submit import submit_command

    client = get_client()  # start (or find) the server once, outside the timings
    try:
        run_all(work, submit_command, WorkerConfig)
    finally:
        client.drop_database("bench_launch")
        shutil.rmtree(work, ignore_errors=True)


def run_all(work: Path, submit_command: Callable, WorkerConfig: type) -> None:  # noqa: N803

    def tracked(worker: WorkerConfig, command: list[str]) -> None:
        [job] = submit_command(command, work, worker, wait=True)
        check(job["state"] == "completed", f"{job['job_id']}: {job['state']}")

    local = WorkerConfig(num_cpus=1, num_gpus=0)
    t_local = timed(lambda: tracked(local, TRIVIAL))
    print(f"local launcher, tracked job of `{' '.join(TRIVIAL)}`: {t_local:.2f} s")

    if shutil.which("sbatch"):
        slurm = WorkerConfig(scheduler="slurm", queue="debug", num_cpus=1, num_gpus=0)
        wrap = " ".join(TRIVIAL)

        def plain() -> None:
            done = subprocess.run(
                ["sbatch", "--wait", "-p", "debug", "-o", "/dev/null", "--wrap", wrap],
                capture_output=True, cwd=work, check=False,
            )  # fmt: skip
            check(done.returncode == 0, "sbatch --wait")

        t_plain = timed(plain)
        t_lib = timed(lambda: tracked(slurm, TRIVIAL))
        worker_file = work / "worker.toml"
        worker_file.write_text('scheduler = "slurm"\nqueue = "debug"\nnum_cpus = 1\nnum_gpus = 0\n')
        cli = [sys.executable, "-m", "cli.main", "jobs", "run", "--wait", "--worker-config",
               str(worker_file), "--dir", str(work), "--", *TRIVIAL]  # fmt: skip
        t_cli = timed(
            lambda: check(subprocess.run(cli, capture_output=True).returncode == 0, "cli")
        )
        print(f"plain `sbatch --wait --wrap`:                 {t_plain:.2f} s")
        print(f"tracked submit + wait (library):             {t_lib:.2f} s "
              f"(ratio {t_lib / t_plain:.2f})")  # fmt: skip
        print(f"`connecto jobs run --wait` (CLI, as --submit --wait): {t_cli:.2f} s "
              f"(ratio {t_cli / t_plain:.2f}; includes the CLI's start-up)")  # fmt: skip
    else:
        print("SLURM: sbatch not installed, skipped (run `make ci-services`)")

    try:
        import docker

        docker.from_env().ping()
        from tests.launch.fixtures import build_test_image, venv_mounts

        image = build_test_image()
    except Exception as error:
        print(f"Docker: unavailable ({error}), skipped")
        return
    container = WorkerConfig(
        launcher="docker", container=image, num_cpus=1, num_gpus=0, mount_dirs=venv_mounts()
    )
    t_docker = timed(lambda: tracked(container, TRIVIAL))
    overhead = t_docker - t_local
    print(f"docker launcher, same job: {t_docker:.2f} s "
          f"(start overhead {overhead:.2f} s, ratio {t_docker / t_local:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
