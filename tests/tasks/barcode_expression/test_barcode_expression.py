"""Barcode expression: the masked focal loss, per-neuron barcode calls and their scores,
a short training through the real driver and a prediction in the train setup (the
`connecto predict` path), which scores the calls against the container's barcodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Roi
from funlib.persistence import open_ds
from torch.nn import functional

from connecto import ConnectoError
from connecto.tasks.barcode_expression.config import BarcodeExpressionTrainConfig
from connecto.tasks.barcode_expression.evaluate import barcode_calls, evaluate_prediction
from connecto.tasks.barcode_expression.model import MaskedFocalLoss
from connecto.tasks.barcode_expression.predict import predict_in_setup
from tests.conftest import run_connecto
from tests.tasks.barcode_enhancement.test_barcode_enhancement import SMALL, write_setup
from tests.tasks.prism_fixtures import CHANNELS, write_barcode_container


def test_the_focal_loss_has_no_gradient_outside_the_mask_and_is_bce_without_focus():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6, generator=generator, requires_grad=True)
    target = (torch.rand(2, 3, 4, 5, 6, generator=generator) > 0.7).float()
    weights = (torch.rand(2, 3, 4, 5, 6, generator=generator) > 0.5).float()
    loss = MaskedFocalLoss()(logits, target, weights)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[weights == 0] == 0)
    assert torch.all(logits.grad[weights > 0] != 0)
    # gamma 0, alpha 1/2: half the masked binary cross-entropy
    plain = MaskedFocalLoss(alpha=0.5, gamma=0.0)(logits, target, weights)
    bce = functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.isclose(plain, 0.5 * bce[weights > 0].mean())
    # confident right answers count less than under cross-entropy
    easy = torch.full((1, 1, 2, 2, 2), 4.0)
    ones = torch.ones_like(easy)
    assert MaskedFocalLoss(0.5, 2.0)(easy, ones, ones) < 0.01 * MaskedFocalLoss(0.5, 0.0)(
        easy, ones, ones
    )


def test_barcode_calls_on_a_hand_made_case():
    labels = np.zeros((1, 2, 6), dtype=np.uint64)
    labels[0, :, 0:2] = 1
    labels[0, :, 2:4] = 2
    labels[0, :, 4:6] = 7
    prediction = np.zeros((3, 1, 2, 6), dtype=np.float32)
    # neuron 1: channels 0 and 2 on; neuron 2: channel 1 on, channel 2 at 0.4 (off);
    # neuron 7: channel 0 mean 0.6 (on) though one voxel is low
    prediction[0, 0, :, 0:2] = 0.9
    prediction[2, 0, :, 0:2] = 0.8
    prediction[1, 0, :, 2:4] = 0.7
    prediction[2, 0, :, 2:4] = 0.4
    prediction[0, 0, :, 4:6] = [[0.9, 0.9], [0.6, 0.0]]
    truth = {"1": [1, 0, 1], "2": [0, 1, 1], "7": [1, 0, 0], "9": [1, 1, 1]}
    calls = barcode_calls(prediction, labels, truth, threshold=0.5)
    assert calls.neuron_ids.tolist() == [1, 2, 7] and calls.sizes.tolist() == [4, 4, 4]
    assert calls.calls.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert np.allclose(calls.mean_probability[2], [0.6, 0, 0])
    assert calls.bit_accuracy == pytest.approx(8 / 9)  # neuron 2's channel 2 missed
    assert calls.exact_accuracy == pytest.approx(2 / 3)
    assert calls.summary() == {"neurons": 3, "scored_neurons": 3,
                               "bit_accuracy": pytest.approx(8 / 9),
                               "exact_accuracy": pytest.approx(2 / 3)}  # fmt: skip
    # uint8 predictions (probability * 255) give the same calls; no truth: no scores
    as_uint8 = barcode_calls((prediction * 255).round().astype(np.uint8), labels)
    assert as_uint8.calls.tolist() == calls.calls.tolist() and as_uint8.bit_accuracy is None
    with pytest.raises(ConnectoError, match="3 channels"):
        barcode_calls(prediction, labels, {"1": [1, 0]})
    with pytest.raises(ConnectoError, match="same region"):
        barcode_calls(prediction, labels[:, :1])


def test_true_expression_as_prediction_calls_every_barcode_right(tmp_path: Path):
    container = write_barcode_container(tmp_path / "b.zarr")
    root = zarr.open_group(str(container), mode="r+")
    # written as predictions are: probability * 255
    root["as_prediction"] = np.asarray(root["expression"]) * np.uint8(255)
    root["as_prediction"].attrs.update(root["expression"].attrs.asdict())
    calls = evaluate_prediction(container / "as_prediction", container)
    assert calls.bit_accuracy == 1.0 and calls.exact_accuracy == 1.0
    assert calls.summary()["scored_neurons"] == len(calls.neuron_ids) > 5


def test_training_through_the_driver_and_predicting_in_the_setup(tmp_path: Path):
    container = write_barcode_container(tmp_path / "barcodes.zarr")
    config = BarcodeExpressionTrainConfig(
        container=str(container), train_roi=[[0, 0, 0], [240, 400, 200]],
        validation_roi=[[0, 0, 200], [240, 400, 200]], save_every=2, log_every=1, seed=0,
        **SMALL,
    )  # fmt: skip
    setup = write_setup(tmp_path, config)
    done = run_connecto("train", "2", cwd=setup.path)
    assert done.returncode == 0, done.stderr
    assert setup.checkpoints() == [2]
    # what `connecto predict --split validation` runs in this setup
    lines = predict_in_setup(setup.path, "validation", [], False, False)
    out = tmp_path / "prism" / "03_predict" / "barcode-expression_t0_validation_2.zarr"
    assert len(lines) == 1 and str(out) in lines[0] and "per-bit accuracy" in lines[0]
    probabilities = open_ds(str(out / "predicted_expression"))
    assert probabilities.roi == Roi((0, 0, 200), (240, 400, 200))
    assert probabilities.shape[0] == CHANNELS and probabilities.dtype == np.uint8
    scores = zarr.open_array(str(out / "predicted_expression"), mode="r").attrs["barcode_calls"]
    assert 0 <= scores["bit_accuracy"] <= 1 and scores["scored_neurons"] > 0
    with pytest.raises(ConnectoError, match="--split"):
        predict_in_setup(setup.path, "train", [], False, True)
    with pytest.raises(ConnectoError, match="no checkpoint for iteration"):
        predict_in_setup(setup.path, "validation", [5], False, True)
