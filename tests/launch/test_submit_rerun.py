"""`connecto train|predict ... --submit`: the job runs the command as parsed (every option
spelled one way, without --submit/--wait) in the setup directory. A stand-in `sbatch`
takes the job, so nothing runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomli_w
from pymongo import MongoClient

from connecto.experiment import prepare_training
from connecto.launch.submit import job_args


def test_job_args_from_parsed_options() -> None:
    options = {
        "split": "test", "iterations": [10, 20], "all_checkpoints": False, "overwrite": True,
        "workers": 1, "batch_size": None, "device": "",
    }  # fmt: skip
    assert job_args("predict", [], options) == [
        "predict", "--split", "test", "--iterations", "10", "--iterations", "20",
        "--overwrite", "--workers", "1", "--device", "",
    ]  # fmt: skip
    assert job_args("train", [500000], {"device": None}) == ["train", "500000"]


@pytest.fixture
def slurm_setup(tmp_path: Path, tracking_db: str) -> tuple[Path, dict[str, str]]:
    """A train setup whose worker config submits to SLURM, and an environment whose `sbatch`
    only answers a job id."""
    setup, _, _ = prepare_training(tmp_path / "base", "exp", 0)
    (setup.path / "worker_config.toml").write_text(
        tomli_w.dumps({"scheduler": "slurm", "num_cpus": 1, "num_gpus": 0})
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 4711\n")
    sbatch.chmod(0o755)
    return setup.path, {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}


def submitted(mongo_client: MongoClient, tracking_db: str) -> dict:
    [job] = mongo_client[tracking_db]["jobs"].find()
    assert job["scheduler"] == "slurm" and job["job_id"] == "4711"
    return job


def test_train_submit_from_elsewhere_runs_in_the_setup(
    connecto, tmp_path: Path, tracking_db: str, mongo_client: MongoClient, slurm_setup
) -> None:
    setup, env = slurm_setup
    result = connecto(
        "train", "4", "-d", "base", "-e", "exp", "-t", "0", "--device", "cpu", "--submit",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "submitted job 4711" in result.stdout
    job = submitted(mongo_client, tracking_db)
    # -d/-e/-t located the setup from here; the job runs inside it and needs none of them.
    assert job["command"] == ["connecto", "train", "4", "--device", "cpu"]
    assert job["workdir"] == str(setup) == job["setup_dir"]
    assert "--submit" not in Path(job["script_path"]).read_text()


def test_predict_submit_passes_every_iteration(
    connecto, tracking_db: str, mongo_client: MongoClient, slurm_setup
) -> None:
    setup, env = slurm_setup
    result = connecto(
        "predict", "--iterations", "10", "20", "--split", "test", "--submit", cwd=setup, env=env
    )
    assert result.returncode == 0, result.stderr
    assert submitted(mongo_client, tracking_db)["command"] == [
        "connecto", "predict", "--split", "test", "--iterations", "10", "--iterations", "20",
        "--workers", "1",
    ]  # fmt: skip


def test_predict_iterations_without_the_option_are_refused(
    connecto, tracking_db: str, mongo_client: MongoClient, slurm_setup
) -> None:
    setup, env = slurm_setup
    result = connecto("predict", "--split", "test", "10", "20", "--submit", cwd=setup, env=env)
    assert result.returncode == 2
    assert "--iterations" in result.stderr
    assert mongo_client[tracking_db]["jobs"].count_documents({}) == 0
