"""`connecto train 4 --submit --wait` for real: through sbatch, and in a Docker container;
checkpoints appear and the job reaches `completed` in `connecto jobs`."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from pymongo import MongoClient

from tests.launch.fixtures import build_test_image, slurm_unavailable, venv_mounts

TINY = [
    "synapse_types=gaba,acetylcholine", "input_shape=[4,16,16]", "fmaps=2",
    "fmap_inc=[2,2]", "n_convolutions=[1,1]", "downsample_factors=[[1,2,2],[2,2,2]]",
    "batch_size=2", "save_every=2", "snapshot_every=1000", "log_every=1", "augment=false",
]  # fmt: skip


def train_setup(tmp_path: Path, db_name: str, mongo_client: MongoClient, worker: dict) -> Path:
    from connecto.data.synthetic import synthesize_synapses
    from connecto.experiment import prepare_training

    raw = tmp_path / "raw.zarr"
    synthesize_synapses(raw, mongo_client[db_name], 24, ["gaba", "acetylcholine"], progress=False)
    mongo_client[db_name]["synapses"].update_many({}, {"$set": {"splits.launch": "train"}})
    setup, _, _ = prepare_training(
        tmp_path, "exp", 0,
        overrides=[*TINY, f"db_name_data={db_name!r}", "split_name='launch'",
                   f"raw_container={str(raw)!r}", "raw_dataset='raw'"],
    )  # fmt: skip
    (setup.path / "worker_config.toml").write_text(
        tomli_w.dumps({"num_cpus": 1, "num_gpus": 0, **worker})
    )
    return setup.path


@pytest.mark.slurm
def test_train_submit_wait_through_slurm(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, connecto
) -> None:
    if reason := slurm_unavailable():
        pytest.skip(reason)
    setup = train_setup(tmp_path, db_name, mongo_client, {"scheduler": "slurm", "queue": "debug"})
    result = connecto("train", "4", "--submit", "--wait", cwd=setup)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (setup / "model_checkpoint_4").is_file()
    job = mongo_client[tracking_db]["jobs"].find_one({"kind": "train"})
    assert job["scheduler"] == "slurm" and job["state"] == "completed" and job["exit_code"] == 0
    listed = connecto("jobs")
    assert any(job["job_id"] in line and "completed" in line for line in listed.stdout.splitlines())


@pytest.mark.docker
def test_train_submit_wait_in_docker(
    tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient, connecto
) -> None:
    image = build_test_image()
    # The raw volume lies outside the experiment directory: mount it as users would.
    mounts = [*venv_mounts(), f"{tmp_path}:ro"]
    worker = {"launcher": "docker", "container": image, "mount_dirs": mounts}
    setup = train_setup(tmp_path, db_name, mongo_client, worker)
    result = connecto("train", "4", "--submit", "--wait", cwd=setup)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (setup / "model_checkpoint_4").is_file()
    job = mongo_client[tracking_db]["jobs"].find_one({"kind": "train"})
    assert job["launcher"] == "docker" and job["state"] == "completed"
    assert "connecto: container" in Path(job["log_path"]).read_text()
