"""The barcode-expression training pipeline: barcode-enhancement's, with `expression` as
the target (no residual) and the loss weights from `border_mask` (times `unlabelled`)."""

from __future__ import annotations

from connecto.config import WorkerConfig
from connecto.tasks.barcode_enhancement.pipeline import channel_task_parts, open_channel_data
from connecto.tasks.barcode_expression.config import BarcodeExpressionTrainConfig
from connecto.tasks.barcode_expression.model import MaskedFocalLoss
from connecto.tasks.parts import TaskParts


def task_parts(
    config: BarcodeExpressionTrainConfig, worker: WorkerConfig, source: str
) -> TaskParts:  # fmt: skip
    """Everything the training driver needs; every check runs here first."""
    masks = [(config.border_mask_dataset, "border_mask_dataset")]
    if config.unlabelled_dataset:
        masks.append((config.unlabelled_dataset, "unlabelled_dataset"))
    data = open_channel_data(config, config.target_dataset, "target_dataset", masks, source)
    loss = MaskedFocalLoss(config.focal_alpha, config.focal_gamma)
    return channel_task_parts(config, worker, data, False, loss)
