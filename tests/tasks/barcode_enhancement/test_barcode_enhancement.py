"""Barcode enhancement: the channel-agnostic U-Net, the masked MSE, the pipeline's
residual target and weights, a short training through the real driver and a prediction
through `connecto predict` (which adds the residual back to raw)."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds

from connecto import ConnectoError
from connecto.config import WorkerConfig, write_config
from connecto.experiment import TrainSetup
from connecto.tasks import load_train_config
from connecto.tasks.barcode_enhancement.config import BarcodeEnhancementTrainConfig
from connecto.tasks.barcode_enhancement.evaluate import barcode_correlation
from connecto.tasks.barcode_enhancement.model import ChannelAgnosticUNet, MaskedMseLoss
from connecto.tasks.barcode_enhancement.pipeline import (
    RAW,
    TARGET,
    WEIGHTS,
    batch_request,
    data_pipeline,
    open_channel_data,
)
from connecto.tasks.barcode_enhancement.predict import predict_enhanced
from tests.conftest import run_connecto
from tests.tasks.prism_fixtures import CHANNELS, VOXEL_SIZE, write_barcode_container

SMALL = {"input_shape": (24, 24, 24), "downsample_factors": [(2, 2, 2)], "fmaps": 2,
         "fmap_inc_factor": 2}  # fmt: skip  # 8^3 out


def small_config(container: Path, **values: object) -> BarcodeEnhancementTrainConfig:
    defaults = {
        "container": str(container), "train_roi": [[0, 0, 0], [240, 400, 200]],
        "validation_roi": [[0, 0, 200], [240, 400, 200]], "seed": 0, **SMALL,
    }  # fmt: skip
    return BarcodeEnhancementTrainConfig(**{**defaults, **values})


def write_setup(base: Path, config: object, experiment: str = "prism") -> TrainSetup:
    """A train setup as `connecto prepare-training --template` writes one."""
    setup = TrainSetup(base, experiment, 0)
    setup.path.mkdir(parents=True)
    write_config(setup.path / "train_config.toml", config)  # type: ignore[arg-type]
    write_config(setup.path / "worker_config.toml", WorkerConfig(num_cpus=2, num_cache_workers=1))
    return setup


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_barcode_container(tmp_path_factory.mktemp("prism") / "barcodes.zarr")


def test_permuting_input_channels_permutes_the_outputs():
    torch.manual_seed(0)
    model = ChannelAgnosticUNet(2, 2, [(2, 2, 2)]).eval()
    raw = torch.rand(2, 5, 20, 20, 20)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        out = model(raw)
        permuted = model(raw[:, order])
        alone = model(raw[:, 2:3])
    assert out.shape == (2, 5, 4, 4, 4)
    assert torch.allclose(permuted, out[:, order], atol=1e-6)
    assert torch.allclose(alone, out[:, 2:3], atol=1e-6)  # a channel never sees the others


def test_the_masked_mse_has_no_gradient_outside_the_mask():
    generator = torch.Generator().manual_seed(0)
    prediction = torch.rand(2, 3, 4, 5, 6, generator=generator, requires_grad=True)
    target = torch.rand(2, 3, 4, 5, 6, generator=generator)
    weights = (torch.rand(2, 3, 4, 5, 6, generator=generator) > 0.5).float()
    loss = MaskedMseLoss()(prediction, target, weights)
    loss.backward()
    assert prediction.grad is not None
    assert torch.all(prediction.grad[weights == 0] == 0)
    assert torch.all(prediction.grad[weights > 0] != 0)
    expected = ((prediction - target) ** 2)[weights > 0].mean()
    assert torch.isclose(loss, expected)
    # targets outside the mask do not matter at all
    changed = torch.where(weights > 0, target, target + 100)
    assert torch.equal(MaskedMseLoss()(prediction, changed, weights), loss)
    nothing = MaskedMseLoss()(prediction, target, torch.zeros_like(weights))
    assert float(nothing.detach()) == 0.0


def test_batches_hold_the_residual_and_the_labelled_mask_per_channel(tmp_path: Path):
    # a container whose "average" encodes each voxel's position and channel, so a batch
    # shows where it was read: residual + raw must give back exactly that window
    container = write_barcode_container(tmp_path / "coded.zarr")
    root = zarr.open_group(str(container), mode="r+")
    shape = root["labels"].shape
    position = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) / 2**16
    code = np.stack([position + c for c in range(CHANNELS)]).astype(np.float32)
    root["average_barcode"][:] = code
    unlabelled = np.asarray(root["unlabelled"])
    config = small_config(container, augment=False, batch_size=2)
    data = open_channel_data(config, "average_barcode", "target_dataset",
                             [("unlabelled", "mask_dataset")], "test")  # fmt: skip
    pipeline, _ = data_pipeline(config, data, residual=True)
    request = batch_request(config, Coordinate(VOXEL_SIZE), predictions=False)
    with gp.build(pipeline):
        batch = pipeline.request_batch(request)
    raw, target, weights = batch[RAW].data, batch[TARGET].data, batch[WEIGHTS].data
    assert raw.shape == (2, CHANNELS, 24, 24, 24) and target.shape == (2, CHANNELS, 8, 8, 8)
    assert weights.shape == target.shape and raw.min() >= 0 and raw.max() <= 1
    recovered = target + raw[:, :, 8:16, 8:16, 8:16]
    for sample in range(2):
        first = int(round(float(recovered[sample, 0, 0, 0, 0]) * 2**16))
        z, y, x = np.unravel_index(first, shape)
        assert x + 8 <= 20  # inside train_roi (x < 200 nm)
        window = (slice(z, z + 8), slice(y, y + 8), slice(x, x + 8))
        assert np.allclose(recovered[sample], code[(slice(None), *window)], atol=1e-5)
        # the weights: the window's labelled mask, the same for every channel
        assert np.array_equal(weights[sample], np.repeat(unlabelled[window][None], CHANNELS, 0))


def test_a_zero_residual_predicts_raw_itself(container: Path, tmp_path: Path):
    config = small_config(container)
    model = ChannelAgnosticUNet(2, 2, [(2, 2, 2)])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    checkpoint = tmp_path / "model_checkpoint_1"
    torch.save({"model_state_dict": model.state_dict()}, checkpoint)
    roi = Roi((0, 0, 0), (120, 200, 160))
    result = predict_enhanced(checkpoint, config, container, "raw", tmp_path / "out.zarr", roi,
                              device="cpu")  # fmt: skip
    enhanced = open_ds(str(result.path))
    assert enhanced.roi == roi and enhanced.shape == (CHANNELS, 12, 20, 16)
    raw = open_ds(str(container / "raw")).to_ndarray(roi)
    assert np.array_equal(enhanced.to_ndarray(roi), raw)
    with pytest.raises(ConnectoError, match="exists"):
        predict_enhanced(checkpoint, config, container, "raw", tmp_path / "out.zarr", roi,
                         device="cpu")  # fmt: skip


def test_training_through_the_driver_and_connecto_predict(container: Path, tmp_path: Path):
    config = small_config(container, save_every=2, snapshot_every=2, log_every=1)
    setup = write_setup(tmp_path, config)
    assert load_train_config(setup.path / "train_config.toml").task == "barcode-enhancement"
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    assert setup.checkpoints() == [2]
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_2.zarr"), mode="r")
    assert snapshot["prediction"].shape == snapshot["target"].shape == (1, CHANNELS, 8, 8, 8)
    assert snapshot["raw"].shape == (1, CHANNELS, 24, 24, 24)

    predicted = run_connecto("predict", "--split", "validation", cwd=setup.path)
    assert predicted.returncode == 0, predicted.stderr
    out = tmp_path / "prism" / "03_predict" / "barcode-enhancement_t0_validation_2.zarr"
    assert str(out) in predicted.stdout
    enhanced = open_ds(str(out / "enhanced"))
    assert enhanced.roi == Roi((0, 0, 200), (240, 400, 200)) and enhanced.shape[0] == CHANNELS
    assert enhanced.to_ndarray(enhanced.roi).max() > 0
    assert "mean barcode correlation" in predicted.stdout
    scores = zarr.open_array(str(out / "enhanced"), mode="r").attrs["barcode_correlation"]
    assert scores["neurons"] > 0 and -1 <= scores["prediction"] <= 1 and 0 < scores["raw"] <= 1


def test_barcode_correlation_per_neuron_on_a_hand_made_case():
    labels = np.zeros((1, 1, 6), dtype=np.uint64)
    labels[0, 0, 0:2], labels[0, 0, 2:4], labels[0, 0, 4:6] = 1, 2, 3
    values = np.zeros((3, 1, 1, 6), dtype=np.float32)
    values[:, 0, 0, 0:2] = [[0.9], [0.1], [0.8]]  # neuron 1: its barcode, scaled
    values[:, 0, 0, 2:4] = [[0.9], [0.1], [0.1]]  # neuron 2: channel 0 where 1 is on
    barcodes = {"1": [1, 0, 1], "2": [0, 1, 0], "3": [1, 1, 1]}  # 3: all on, no correlation
    scores = barcode_correlation(values, labels, barcodes)
    assert scores.neuron_ids.tolist() == [1, 2]
    assert scores.correlation[0] == pytest.approx(np.corrcoef([0.9, 0.1, 0.8], [1, 0, 1])[0, 1])
    assert scores.correlation[1] == pytest.approx(-0.5)
    assert scores.mean == pytest.approx(scores.correlation.mean())
    as_uint8 = barcode_correlation((values * 255).astype(np.uint8), labels, barcodes)
    assert np.allclose(as_uint8.correlation, scores.correlation, atol=1e-2)
