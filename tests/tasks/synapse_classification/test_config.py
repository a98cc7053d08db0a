"""synister's INI configs load into the same models and convert to TOML."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from connecto import ConnectoError
from connecto.config import WorkerConfig, load_config, parse_ini_value
from connecto.tasks import load_train_config
from connecto.tasks.synapse_classification.config import SynapsePredictConfig, SynapseTrainConfig

TRAIN_INI = """[Training]
synapse_types = gaba, acetylcholine, glutamate, serotonin, octopamine, dopamine
input_shape = 16, 160, 160
fmaps = 12
batch_size = 8
db_credentials = synister_data/credentials/db_credentials.ini
db_name_data = synister_v3
split_name = skeleton
voxel_size = 40, 4, 4
raw_container = /nrs/saalfeld/FAFB00/v14_align_tps_20170818_dmg.n5
raw_dataset = volumes/raw/s0
downsample_factors = (1,2,2), (1,2,2), (1,2,2), (2,2,2)
network = VGG
fmap_inc = 2, 2, 2, 2
n_convolutions = 2, 2, 2, 2
network_appendix = None
"""

WORKER_INI = """[Worker]
singularity_container = synister/singularity/synister.img
num_cpus = 5
num_block_workers = 1
num_cache_workers = 5
queue = gpu_any
mount_dirs = /nrs, /scratch, /groups, /misc
"""

PREDICT_INI = """[Predict]
train_checkpoint = exp/02_train/setup_t0/model_checkpoint_300000
experiment = exp
train_number = 0
predict_number = 0
synapse_types = gaba, acetylcholine, glutamate, serotonin, octopamine, dopamine
input_shape = 16, 160, 160
fmaps = 12
batch_size = 8
db_credentials = synister_data/credentials/db_credentials.ini
db_name_data = synister_v3
split_name = skeleton
voxel_size = 40, 4, 4
raw_container = /nrs/saalfeld/FAFB00/v14_align_tps_20170818_dmg.n5
raw_dataset = volumes/raw/s0
downsample_factors = (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)
split_part = validation
overwrite = False
network = VGG
fmap_inc = 2, 2, 2, 2
n_convolutions = 2, 2, 2, 2
network_appendix = None
"""


def test_parse_ini_values() -> None:
    assert parse_ini_value("None") is None
    assert parse_ini_value("False") is False
    assert parse_ini_value("12") == 12
    assert parse_ini_value("16, 160, 160") == [16, 160, 160]
    assert parse_ini_value("(1,2,2), (2,2,2)") == [[1, 2, 2], [2, 2, 2]]
    assert parse_ini_value("gaba, acetylcholine") == ["gaba", "acetylcholine"]
    assert parse_ini_value("/nrs, /scratch") == ["/nrs", "/scratch"]


def test_load_synister_train_ini(tmp_path: Path) -> None:
    path = tmp_path / "train_config.ini"
    path.write_text(TRAIN_INI)
    config = load_config(path, SynapseTrainConfig)
    assert config.synapse_types[0] == "gaba" and len(config.synapse_types) == 6
    assert config.downsample_factors == [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    assert config.network_appendix is None
    assert config.input_shape == (16, 160, 160)


def test_load_synister_worker_and_predict_ini(tmp_path: Path) -> None:
    worker_path = tmp_path / "worker_config.ini"
    worker_path.write_text(WORKER_INI)
    worker = load_config(worker_path, WorkerConfig)
    assert worker.container == "synister/singularity/synister.img"
    assert worker.mount_dirs == ["/nrs", "/scratch", "/groups", "/misc"]
    assert worker.queue == "gpu_any"
    predict_path = tmp_path / "predict_config.ini"
    predict_path.write_text(PREDICT_INI)
    predict = load_config(predict_path, SynapsePredictConfig)
    assert predict.split_part == "validation" and predict.overwrite is False
    assert predict.iteration == 300000


def test_single_item_list(tmp_path: Path) -> None:
    path = tmp_path / "worker_config.ini"
    path.write_text("[Worker]\nmount_dirs = /nrs\n")
    assert load_config(path, WorkerConfig).mount_dirs == ["/nrs"]


def test_convert_ini_to_toml(connecto, tmp_path: Path) -> None:
    for name, text in [
        ("train_config.ini", TRAIN_INI),
        ("worker_config.ini", WORKER_INI),
        ("predict_config.ini", PREDICT_INI),
    ]:
        (tmp_path / name).write_text(text)
        result = connecto("config", "convert", tmp_path / name)
        assert result.returncode == 0, result.stderr
    train = tomllib.loads((tmp_path / "train_config.toml").read_text())
    assert train["downsample_factors"] == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert "network_appendix" not in train  # None is omitted in TOML
    assert SynapseTrainConfig.model_validate(train) == load_config(
        tmp_path / "train_config.ini", SynapseTrainConfig
    )
    worker = tomllib.loads((tmp_path / "worker_config.toml").read_text())
    assert worker["container"] == "synister/singularity/synister.img"
    again = connecto("config", "convert", tmp_path / "train_config.ini")
    assert again.returncode == 1 and "exists" in again.stderr


def test_ini_errors_name_file_key_value(tmp_path: Path) -> None:
    path = tmp_path / "train_config.ini"
    path.write_text(TRAIN_INI.replace("fmaps = 12", "fmaps = twelve"))
    with pytest.raises(ConnectoError) as error:
        load_config(path, SynapseTrainConfig)
    message = str(error.value)
    assert str(path) in message and "fmaps" in message and "twelve" in message
    assert "integer" in message

    path.write_text(TRAIN_INI.replace("input_shape = 16, 160, 160", "input_shape = 16, 150, 160"))
    with pytest.raises(ConnectoError, match="divisible"):
        load_config(path, SynapseTrainConfig)

    path.write_text(TRAIN_INI.replace("split_name = skeleton\n", ""))
    with pytest.raises(ConnectoError, match="'split_name' is missing"):
        load_config(path, SynapseTrainConfig)

    path.write_text("not an ini file")
    with pytest.raises(ConnectoError, match="not a valid INI"):
        load_config(path, SynapseTrainConfig)


def test_binary_config_files_are_one_line(connecto, tmp_path: Path) -> None:
    binary = b"\x00\xff\xfe\x89PNG"
    toml_path = tmp_path / "train_config.toml"
    toml_path.write_bytes(binary)
    with pytest.raises(ConnectoError, match=r"train_config\.toml: not a text file"):
        load_train_config(toml_path)
    ini_path = tmp_path / "train_config.ini"
    ini_path.write_bytes(binary)
    result = connecto("config", "convert", ini_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{ini_path}: not a text file" in result.stderr


def test_malformed_ini_is_one_line(connecto, tmp_path: Path) -> None:
    path = tmp_path / "worker_config.ini"
    path.write_text("num_cpus = 5\n[Worker]\n")
    result = connecto("config", "convert", path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert f"{path}: not a valid INI file" in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (WORKER_INI + "shiny = None\n", r"\[Worker\] key 'shiny' is not a known setting"),
        (WORKER_INI + "num_gpu = 2\n", r"\[Worker\] key 'num_gpu' is not a known setting"),
        (
            "[Training]\nnum_cpus = 5\n",
            r"expected exactly one section \[Worker\], found \[Training\]",
        ),
    ],
)
def test_ini_unknown_key_or_wrong_section_is_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "worker_config.ini"
    path.write_text(text)
    with pytest.raises(ConnectoError, match=rf"^{re.escape(str(path))}: {expected}"):
        load_config(path, WorkerConfig)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e999"])
def test_non_finite_floats_are_refused(tmp_path: Path, value: str) -> None:
    path = tmp_path / "train_config.ini"
    path.write_text(TRAIN_INI + f"learning_rate = {value}\n")
    with pytest.raises(ConnectoError, match=r"key 'learning_rate' = .*finite"):
        load_config(path, SynapseTrainConfig)
