"""Training and prediction that cannot go on stop with one line naming what is wrong: a
damaged or foreign checkpoint (for `connecto train`, `connecto predict` and `connecto
segment predict`), and a loss that became NaN or infinite, which must not leave a
checkpoint of broken weights behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.experiment import PREDICT_DIR, prepare_training
from connecto.tasks.synapse_classification.model import build_vgg3d
from connecto.train import train
from tests import test_train
from tests.conftest import run_connecto
from tests.test_train import Synthetic, _edit_config, run_document, small_setup

synthetic = test_train.synthetic  # the module fixture: synthetic synapses, split by skeleton


def _one_line_error(result, *fragments: str) -> str:  # noqa: ANN001
    """The command failed with exit code 1 and one error line, the last on stderr (a
    progress bar may come before it)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("connecto: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- damaged checkpoints


def test_truncated_checkpoint_stops_train_then_deleting_it_resumes(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    setup = small_setup(tmp_path, synthetic, save_every=2, log_every=1)
    assert train(setup, 4, progress=False).iteration == 4
    assert setup.checkpoints() == [2, 4]
    _truncate(setup.checkpoint(4))
    before = run_document(mongo_client, tracking_db, setup)

    failed = run_connecto("train", "6", cwd=setup.path, env={"CONNECTO_TRACKING_DB": tracking_db})
    line = _one_line_error(failed, str(setup.checkpoint(4)), "not a readable connecto checkpoint")
    assert "delete it to resume from model_checkpoint_2" in line
    assert setup.checkpoints() == [2, 4]  # nothing written
    after = run_document(mongo_client, tracking_db, setup)
    assert after["state"] == before["state"] == "finished"  # the run was not touched

    setup.checkpoint(4).unlink()
    resumed = run_connecto("train", "6", cwd=setup.path, env={"CONNECTO_TRACKING_DB": tracking_db})
    assert resumed.returncode == 0, resumed.stderr
    assert "from 2" in resumed.stdout
    assert setup.checkpoints() == [2, 4, 6]


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint\n" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _a_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


def _no_model(path: Path) -> None:
    torch.save({"weights": {}, "iteration": 3}, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_garbage, "not a readable connecto checkpoint"),
        (_empty, "not a readable connecto checkpoint"),
        (_a_tensor, "not a readable connecto checkpoint"),
        (_no_model, "not a readable connecto checkpoint .*model_state_dict"),
    ],
)
def test_damaged_only_checkpoint_refused_before_training(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient,
    damage, message: str,  # noqa: ANN001
) -> None:  # fmt: skip
    setup = small_setup(tmp_path, synthetic)
    damage(setup.checkpoint(3))
    with pytest.raises(ConnectoError, match=message) as raised:
        train(setup, 10, progress=False)
    text = str(raised.value)
    assert "\n" not in text and str(setup.checkpoint(3)) in text
    assert "delete it to train from scratch" in text
    assert setup.checkpoints() == [3] and not setup.log_dir.exists()
    assert run_document(mongo_client, tracking_db, setup) == {}


def test_checkpoint_of_another_model_refused_before_training(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    """A checkpoint written with other model settings (here: fmaps) is named, with the
    keys that may have changed, instead of torch's size-mismatch traceback."""
    setup = small_setup(tmp_path, synthetic, save_every=2)
    train(setup, 2, progress=False)
    _edit_config(setup, "fmaps", 8)
    with pytest.raises(ConnectoError, match="does not fit the model of") as raised:
        train(setup, 4, progress=False)
    assert str(setup.checkpoint(2)) in str(raised.value) and "\n" not in str(raised.value)
    assert setup.checkpoints() == [2]


def test_connecto_predict_refuses_damaged_checkpoints(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str
) -> None:
    setup = small_setup(tmp_path, synthetic)
    config = setup.train_config()
    env = {"CONNECTO_TRACKING_DB": tracking_db}
    _a_tensor(setup.checkpoint(1))
    _garbage(setup.checkpoint(2))
    model = build_vgg3d(config)  # type: ignore[arg-type]
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    torch.save({"model_state_dict": model.state_dict(), "iteration": 3}, setup.checkpoint(3))
    for iteration, problem in [
        (1, "not a readable connecto checkpoint"),
        (2, "not a readable connecto checkpoint"),
        (3, "NaN or infinite weights"),
    ]:
        result = run_connecto(
            "predict", "--split", "validation", "-i", str(iteration), cwd=setup.path, env=env
        )
        _one_line_error(result, str(setup.checkpoint(iteration)), problem)
    assert not (setup.base / setup.experiment / PREDICT_DIR).exists()  # refused before writing


def test_connecto_segment_predict_refuses_a_damaged_checkpoint(
    synthetic: Synthetic, tmp_path: Path, db_name: str
) -> None:
    """Checked before any block is handed to a worker: one line, not "some blocks failed"
    after retries in the worker logs."""
    setup, _, _ = prepare_training(
        tmp_path, "seg", 0, task="segmentation",
        overrides=[f'raw_container="{synthetic.container}"', 'raw_dataset="raw"'],
    )  # fmt: skip
    checkpoint = setup.checkpoint(2)
    _garbage(checkpoint)
    config = tmp_path / "segment_config.toml"
    config.write_text(
        f'checkpoint = "{checkpoint}"\nraw_container = "{synthetic.container}"\n'
        f'raw_dataset = "raw"\nnum_workers = 1\ndb_name = "{db_name}"\n'
    )
    result = run_connecto("segment", "predict", "-c", config, cwd=tmp_path)
    _one_line_error(result, str(checkpoint), "not a readable connecto checkpoint")
    assert not (tmp_path / "segment.zarr").exists()


# ---------------------------------------------------------------- a diverging loss


def test_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(
    synthetic: Synthetic, tmp_path: Path, tracking_db: str, mongo_client: MongoClient
) -> None:
    """A learning rate of 1e30 (finite, so the config accepts it) blows the weights up
    within a few iterations: the run stops at the first non-finite loss, names it, marks
    the run failed and writes no checkpoint; lowering the rate resumes from the last
    good checkpoint."""
    env = {"CONNECTO_TRACKING_DB": tracking_db}
    setup = small_setup(tmp_path, synthetic, save_every=1000, log_every=1, augment=False)
    assert train(setup, 3, progress=False).iteration == 3
    assert setup.checkpoints() == [3]
    _edit_config(setup, "learning_rate", 1e30)

    failed = run_connecto("train", "40", cwd=setup.path, env=env)
    line = _one_line_error(failed, "learning_rate", "iteration")
    assert setup.checkpoints() == [3], line  # no checkpoint of the broken weights
    run = run_document(mongo_client, tracking_db, setup)
    assert run["state"] == "failed" and run["iteration"] == 3
    assert "loss" in run["error"] and "learning_rate" in run["error"]
    assert "Traceback" not in run["error"] and "ConnectoError" not in run["error"]
    saved = torch.load(setup.checkpoint(3), weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved["model_state_dict"].values())

    _edit_config(setup, "learning_rate", 0.001)
    resumed = run_connecto("train", "6", cwd=setup.path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "from 3" in resumed.stdout
    assert setup.checkpoints() == [3, 6]
    run = run_document(mongo_client, tracking_db, setup)
    assert run["state"] == "finished" and run["error"] is None
    assert run["metrics"]["learning_rate"] == pytest.approx(0.001)
