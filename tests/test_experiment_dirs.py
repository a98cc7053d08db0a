"""prepare-training / prepare-prediction: contents, refusals, tracking."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.db.client import tracking_database
from connecto.db.predictions import prediction_target
from connecto.experiment import TrainSetup, find_setup, prepare_training
from connecto.tasks.synapse_classification.config import SynapsePredictConfig, SynapseTrainConfig
from connecto.tasks.synapse_classification.setups import prepare_prediction


def test_prepare_training_creates_configs_and_refuses_twice(
    connecto, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    result = connecto(
        "prepare-training",
        "-d",
        tmp_path,
        "-e",
        "exp",
        "-t",
        "0",
        "--set",
        "batch_size=2",
        "--set",
        "worker.num_cpus=3",
    )
    assert result.returncode == 0, result.stderr
    setup = tmp_path / "exp" / "02_train" / "setup_t0"
    train = tomllib.loads((setup / "train_config.toml").read_text())
    worker = tomllib.loads((setup / "worker_config.toml").read_text())
    assert train["task"] == "synapse-classification"
    assert train["batch_size"] == 2
    assert train["input_shape"] == [16, 160, 160]
    assert worker["num_cpus"] == 3
    SynapseTrainConfig.model_validate(train)

    run = mongo_client[tracking_db]["runs"].find_one({"setup_dir": str(setup)})
    assert run is not None and run["state"] == "prepared" and run["config"]["batch_size"] == 2
    assert mongo_client[tracking_db]["experiments"].count_documents({"name": "exp"}) == 1

    before = (setup / "train_config.toml").read_text()
    again = connecto(
        "prepare-training", "-d", tmp_path, "-e", "exp", "-t", "0", "--set", "batch_size=4"
    )
    assert again.returncode == 1
    assert len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (setup / "train_config.toml").read_text() == before

    forced = connecto(
        "prepare-training",
        "-d",
        tmp_path,
        "-e",
        "exp",
        "-t",
        "0",
        "--set",
        "batch_size=4",
        "--force",
    )
    assert forced.returncode == 0, forced.stderr
    assert tomllib.loads((setup / "train_config.toml").read_text())["batch_size"] == 4

    listed = connecto("runs", "-e", "exp")
    assert listed.returncode == 0 and "prepared" in listed.stdout


def test_prepare_training_segmentation_task(tmp_path: Path, tracking_db: str) -> None:
    setup, train, _ = prepare_training(tmp_path, "seg", 1, task="segmentation")
    assert train.task == "segmentation"
    assert (setup.path / "train_config.toml").exists()


def test_bad_override_names_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConnectoError) as error:
        prepare_training(tmp_path, "exp", 0, overrides=["input_shape=[16,150,160]"])
    message = str(error.value)
    assert "input_shape" in message and "divisible" in message
    with pytest.raises(ConnectoError, match="'fmaps' = 'many'"):
        prepare_training(tmp_path, "exp", 0, overrides=["fmaps=many"])
    with pytest.raises(ConnectoError, match="'colour' is not a known setting"):
        prepare_training(tmp_path, "exp", 0, overrides=["colour=blue"])
    assert not (tmp_path / "exp").exists()  # nothing written on error


def test_prepare_prediction_numbers_and_contents(
    connecto, tmp_path: Path, tracking_db: str
) -> None:
    setup, _, _ = prepare_training(tmp_path, "exp", 2)
    result = connecto(
        "prepare-prediction",
        "-d",
        tmp_path,
        "-e",
        "exp",
        "-t",
        "2",
        "-i",
        "1000",
        "-i",
        "2000",
        "--split",
        "validation",
    )
    assert result.returncode == 0, result.stderr
    made = setup.predict_setups()
    assert [s.predict_id for s in made] == [0, 1]
    configs = [s.predict_config() for s in made]
    assert [c.iteration for c in configs] == [1000, 2000]
    assert all(c.split_part == "validation" for c in configs)
    assert configs[0].train_checkpoint == str(setup.checkpoint(1000))
    assert configs[0].experiment == "exp" and configs[0].train_number == 2
    assert (made[0].path / "worker_config.toml").exists()

    # default split part is test, numbering continues
    more = prepare_prediction(setup, [3000])
    assert more[0][0].predict_id == 2 and more[0][1].split_part == "test"
    # synister's -v
    result = connecto(
        "prepare-prediction", "-d", tmp_path, "-e", "exp", "-t", "2", "-i", "4000", "-v"
    )
    assert result.returncode == 0
    assert setup.predict_setup(3).predict_config().split_part == "validation"
    # synister's predict.py numbers collections by iteration: `_p5000`, in setup 4
    result = connecto("prepare-prediction", "-d", tmp_path, "-e", "exp", "-t", "2", "-i", "5000",
                      "--number-by-iteration")  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = setup.predict_setup(4).predict_config()
    assert config.predict_number == 5000
    assert prediction_target(config)[1] == f"{config.split_name}_exp_t2_p5000"


def test_prepare_prediction_takes_iterations_as_the_readme_writes_them(
    connecto, tmp_path: Path, tracking_db: str
) -> None:
    setup, _, _ = prepare_training(tmp_path, "exp", 0)
    result = connecto(
        "prepare-prediction", "-d", tmp_path, "-e", "exp", "-t", "0", "-i", "1000", "2000"
    )
    assert result.returncode == 0, result.stderr
    assert [s.predict_config().iteration for s in setup.predict_setups()] == [1000, 2000]


def test_runs_inside_an_experiment_lists_only_its_runs(
    connecto, tmp_path: Path, tracking_db: str
) -> None:
    """A shared tracking database holds everyone's runs: inside an experiment directory
    (or a setup in it) `connecto runs` lists that experiment's, --all and -e any."""
    mine, _, _ = prepare_training(tmp_path / "me", "nt", 0, tracking=tracking_database)
    prepare_training(tmp_path / "me", "nt", 1, tracking=tracking_database)
    prepare_training(tmp_path / "me", "other", 0, tracking=tracking_database)
    prepare_training(tmp_path / "you", "nt", 7, tracking=tracking_database)

    def listed(*args: str, cwd: Path) -> set[str]:
        result = connecto("runs", *args, cwd=cwd, env={"COLUMNS": "400"})
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines]
        return {f"{row[0]}/{row[1]}" for row in rows if len(row) == 7 and row[1].isdigit()}

    everything = {"nt/0", "nt/1", "other/0", "nt/7"}
    assert listed(cwd=tmp_path / "me" / "nt") == {"nt/0", "nt/1"}
    (mine.path / "log").mkdir()
    assert listed(cwd=mine.path / "log") == {"nt/0", "nt/1"}
    assert listed(cwd=tmp_path / "you" / "nt" / "02_train") == {"nt/7"}
    assert listed("--all", cwd=tmp_path / "me" / "nt") == everything
    assert listed(cwd=tmp_path / "me") == everything  # a base directory: no experiment
    assert listed("-e", "other", cwd=tmp_path / "me" / "nt") == {"other/0"}


def test_find_setup_from_inside(tmp_path: Path) -> None:
    setup, _, _ = prepare_training(tmp_path, "exp", 5)
    (setup.path / "log").mkdir()
    found = find_setup(setup.path / "log")
    assert found == TrainSetup(tmp_path.resolve(), "exp", 5)
    with pytest.raises(ConnectoError, match="not inside a setup"):
        find_setup(tmp_path)


def test_predict_config_model_rejects_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SynapsePredictConfig.model_validate(
            {
                "synapse_types": ["a", "b"],
                "db_name_data": "d",
                "split_name": "s",
                "raw_container": "r",
                "raw_dataset": "d",
                "train_checkpoint": "model_checkpoint_1",
                "experiment": "e",
                "train_number": 0,
                "predict_number": 0,
                "split_part": "dev",
            }
        )


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_prepare_training_refuses_non_finite_floats(
    connecto, tmp_path: Path, tracking_db: str, value: str
) -> None:
    result = connecto(
        "prepare-training", "-d", tmp_path, "-e", "exp", "-t", "0",
        "--set", f"learning_rate={value}",
    )  # fmt: skip
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "key 'learning_rate'" in result.stderr and "finite" in result.stderr
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- refusals leave nothing


def unreachable_mongo() -> dict[str, str]:
    """Settings that point connecto at a port nothing listens on, with a short timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "CONNECTO_MONGO_URI": f"mongodb://127.0.0.1:{port}/",
        "CONNECTO_MONGO_TIMEOUT_S": "0.5",
    }


def assert_one_line_refusal(result, *words: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_prepare_training_with_mongodb_down_writes_nothing(connecto, tmp_path: Path) -> None:
    result = connecto(
        "prepare-training", "-d", tmp_path, "-e", "exp", "-t", "0", env=unreachable_mongo()
    )
    assert_one_line_refusal(result, "does not answer")
    assert list(tmp_path.iterdir()) == []


def test_prepare_training_force_with_mongodb_down_keeps_the_configs(
    connecto, tmp_path: Path, tracking_db: str
) -> None:
    setup, _, _ = prepare_training(tmp_path, "exp", 0, overrides=["batch_size=2"])
    before = {p.name: p.read_bytes() for p in setup.path.iterdir()}
    result = connecto(
        "prepare-training", "-d", tmp_path, "-e", "exp", "-t", "0", "--set", "batch_size=4",
        "--force", env=unreachable_mongo(),
    )  # fmt: skip
    assert_one_line_refusal(result, "does not answer")
    assert {p.name: p.read_bytes() for p in setup.path.iterdir()} == before


def test_prepare_training_registration_failure_removes_what_it_wrote(
    tmp_path: Path, tracking_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database answers the check but fails the registration: the files go again."""
    import connecto.experiment as experiment

    def fail(*args: object, **kwargs: object) -> None:
        raise ConnectoError("MongoDB went away")

    monkeypatch.setattr(experiment, "register_train_setup", fail)
    with pytest.raises(ConnectoError, match="went away"):
        prepare_training(tmp_path, "exp", 0, tracking=tracking_database)
    assert list(tmp_path.iterdir()) == []


def train_setup_with_checkpoint(base: Path, data_db: str) -> TrainSetup:
    """A synapse train setup with a checkpoint for iteration 10 that holds no weights:
    the refusals below all come before a model is built."""
    setup, _, _ = prepare_training(
        base, "exp", 0,
        overrides=[f"db_name_data={data_db}", "split_name=skeleton", "synapse_types=a,b"],
    )  # fmt: skip
    write_empty_checkpoint(setup.checkpoint(10))
    return setup


def write_empty_checkpoint(path: Path) -> None:
    import torch

    torch.save({"model_state_dict": {}, "iteration": 0}, path)


def test_predict_with_mongodb_down_creates_no_setup(connecto, tmp_path: Path, db_name: str):
    train = train_setup_with_checkpoint(tmp_path, db_name)
    result = connecto(
        "predict", "--split", "test", "-i", "10", cwd=train.path, env=unreachable_mongo()
    )
    assert_one_line_refusal(result, "does not answer")
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_predict_without_the_split_creates_no_setup(
    connecto, tmp_path: Path, db_name: str, tracking_db: str
) -> None:
    train = train_setup_with_checkpoint(tmp_path, db_name)
    result = connecto("predict", "--split", "test", "-i", "10", cwd=train.path)
    assert_one_line_refusal(result, "has no split 'skeleton'")
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_predict_into_another_setups_collection_creates_no_setup(
    connecto, tmp_path: Path, db_name: str, tracking_db: str, mongo_client: MongoClient
) -> None:
    train = train_setup_with_checkpoint(tmp_path, db_name)
    other = "/elsewhere/exp/03_predict/setup_t0_p0"
    mongo_client[tracking_db]["predictions"].insert_one({
        "setup_dir": other, "predictions_db": f"{db_name}_predictions",
        "collection": "skeleton_exp_t0_p0", "owner": {"setup": other, "checkpoint": "c"},
    })  # fmt: skip
    result = connecto("predict", "--split", "test", "-i", "10", cwd=train.path)
    assert_one_line_refusal(result, f"belongs to predict setup {other}")
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_predict_refused_for_a_later_iteration_creates_none(
    tmp_path: Path, db_name: str, tracking_db: str
) -> None:
    """Several new setups are checked as a whole before the first is created."""
    train = train_setup_with_checkpoint(tmp_path, db_name)
    write_empty_checkpoint(train.checkpoint(20))
    from connecto.tasks.synapse_classification.predict import predict

    with pytest.raises(ConnectoError, match="has no split 'skeleton'"):
        predict(train.path, "test", [10, 20], progress=False)
    assert train.predict_setups() == []
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_prepare_prediction_failing_write_takes_back_every_setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connecto.tasks.synapse_classification.setups as setups

    train, _, _ = prepare_training(tmp_path, "exp", 0)
    write = setups.write_config
    writes: list[Path] = []

    def write_then_fail(path: Path, config: object) -> None:
        writes.append(path)
        if len(writes) == 3:  # the second setup's predict config
            raise ConnectoError("disk full")
        write(path, config)  # type: ignore[arg-type]

    monkeypatch.setattr(setups, "write_config", write_then_fail)
    with pytest.raises(ConnectoError, match="disk full"):
        prepare_prediction(train, [10, 20])
    assert not (tmp_path / "exp" / "03_predict").exists()
    refused: list[object] = []

    def refuse(planned: list) -> None:
        refused.extend(planned)
        raise ConnectoError("no")

    with pytest.raises(ConnectoError, match="no"):
        prepare_prediction(train, [10, 20], check=refuse)
    assert [setup.predict_id for setup, _ in refused] == [0, 1]  # type: ignore[attr-defined]
    assert not (tmp_path / "exp" / "03_predict").exists()


def test_set_reaches_keys_inside_a_table(tmp_path: Path, tracking_db: str) -> None:
    """`--set channel_augment.shuffle=false` changes one key of the template's
    `[channel_augment]` table and keeps the others; a value is not a table."""
    _, train, _ = prepare_training(
        tmp_path, "bc", 0, template="segmentation-barcodes",
        overrides=["channel_augment.shuffle=false", "channel_augment.zero_probability=0.5"],
    )  # fmt: skip
    assert train.channel_augment["shuffle"] is False
    assert train.channel_augment["zero_probability"] == 0.5
    assert train.channel_augment["duplicate_probability"] == 0.1  # the template's, kept
    with pytest.raises(ConnectoError, match="'fmaps' is a value, not a table"):
        prepare_training(tmp_path, "bc", 1, template="segmentation-barcodes",
                         overrides=["fmaps.x=1"])  # fmt: skip
