"""Blockwise MTLSD prediction with daisy: affinities (and LSDs) as uint8 into zarr.

Each block reads the network's full input around its output (the U-Net's valid context;
raw outside the volume reads as zero, as in training) and writes the part of its output
inside the ROI. Finished blocks are recorded in the segment graph's `blocks` collection,
so a rerun skips them; workers load the model once each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import daisy
import numpy as np
import torch
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds

from connecto import ConnectoError
from connecto.checkpoints import default_device
from connecto.data.volumes import normalize_raw, open_raw, prepare_channels
from connecto.experiment import checkpoint_config
from connecto.postprocess.blockwise import MongoBlockBookkeeping, run_daisy_task, worker_group
from connecto.tasks.segmentation.config import SegmentationTrainConfig, SegmentConfig
from connecto.tasks.segmentation.model import LSD_CHANNELS, check_raw_channels
from connecto.tasks.segmentation.steps import StepResult, dataset_path, graph_config, logs_in

MODEL_KEYS = (
    "input_shape, fmaps, fmap_inc_factor, downsample_factors, lsds, neighborhood, in_channels"
)


def load_mtlsd(train: SegmentationTrainConfig, checkpoint: Path, device: str) -> torch.nn.Module:
    from connecto.checkpoints import load_weights, read_checkpoint
    from connecto.tasks.segmentation.model import build_mtlsd

    model = build_mtlsd(train)
    load_weights(model, read_checkpoint(checkpoint, device), checkpoint, MODEL_KEYS)
    return model.to(device).eval()


def train_config_of(checkpoint: Path) -> SegmentationTrainConfig:
    config = checkpoint_config(checkpoint, SegmentationTrainConfig, "segmentation")
    load_mtlsd(config, checkpoint, "cpu")  # a bad checkpoint: one error here, not per block
    return config


@dataclass
class PredictBlock:
    """The block function, picklable for daisy's worker processes; the model and the
    arrays are opened on first use in each process."""

    train: SegmentationTrainConfig
    checkpoint: Path
    raw: tuple[str, str]
    affs_path: Path
    lsds_path: Path | None
    roi: Roi
    bookkeeping: Any
    _state: dict[str, Any] = field(default_factory=dict, repr=False)

    def _open(self) -> dict[str, Any]:
        if not self._state:
            device = default_device()
            self._state.update(
                device=device,
                model=load_mtlsd(self.train, self.checkpoint, device),
                raw=open_raw(*self.raw),
                affs=open_ds(self.affs_path, mode="r+"),
                lsds=open_ds(self.lsds_path, mode="r+") if self.lsds_path else None,
                done=self.bookkeeping.mark_block_done_func(),
            )
        return self._state

    def __call__(self, block: daisy.Block) -> None:
        state = self._open()
        raw = normalize_raw(state["raw"].to_ndarray(block.read_roi, fill_value=0))
        with torch.no_grad():
            tensor = torch.from_numpy(raw)[None].to(state["device"])
            lsds, affs = state["model"](tensor)
        write_roi = block.write_roi.intersect(self.roi)
        outputs = [(state["affs"], affs)] + ([(state["lsds"], lsds)] if self.lsds_path else [])
        for array, prediction in outputs:
            data = (prediction[0].cpu().numpy() * 255).round().astype(np.uint8)
            voxels = (write_roi - block.write_roi.offset) / array.voxel_size
            array[write_roi] = data[(slice(None), *voxels.to_slices())]
        state["done"](block)


class _PredictBookkeeping(MongoBlockBookkeeping):
    def __init__(self, config: SegmentConfig, task_name: str) -> None:
        self.db = graph_config(config)
        self.task_name = task_name


def predict_blockwise(config: SegmentConfig, base: Path, overwrite: bool = False) -> StepResult:
    assert config.checkpoint is not None
    checkpoint = Path(config.checkpoint)
    train = train_config_of(checkpoint)
    raw_container = config.raw_container or train.raw_container
    raw = open_raw(raw_container, config.raw_dataset)
    check_raw_channels(raw, train.in_channels, f"{checkpoint} (its train config)")
    voxel_size = Coordinate(raw.voxel_size)
    roi = config.total_roi or raw.roi
    if roi != roi.snap_to_grid(voxel_size):
        raise ConnectoError(f"roi {config.roi} is not on the {tuple(voxel_size)} nm voxel grid")
    if tuple(train.neighborhood) != tuple(config.neighborhood):
        raise ConnectoError(
            f"neighborhood {config.neighborhood} differs from the model's {train.neighborhood}"
        )
    out_shape = Coordinate(train.network_output_shape)
    context = (Coordinate(train.input_shape) - out_shape) * voxel_size / 2
    write = out_shape * voxel_size
    affs_path = dataset_path(config, config.affs_dataset)
    lsds_path = dataset_path(config, config.lsds_dataset) if train.lsds else None
    neighborhood = {"neighborhood": [list(o) for o in config.neighborhood]}
    channels = len(config.neighborhood)
    prepare_channels(affs_path, channels, roi, voxel_size, out_shape, neighborhood, overwrite)
    if lsds_path is not None:
        prepare_channels(
            lsds_path, LSD_CHANNELS, roi, voxel_size, out_shape, {"lsds": True}, overwrite
        )

    graph_db = graph_config(config)
    graph_db.init()
    task_name = f"predict-{config.affs_dataset}"
    bookkeeping = _PredictBookkeeping(config, task_name)
    if overwrite:
        graph_db.open("r+").reset_blocks(task_name)
    process = PredictBlock(
        train, checkpoint, (raw_container, config.raw_dataset), affs_path, lsds_path, roi,
        bookkeeping,
    )  # fmt: skip
    task = daisy.Task(
        task_name,
        total_roi=roi.grow(context, context),
        read_roi=Roi((0, 0, 0), write).grow(context, context),
        write_roi=Roi((0, 0, 0), write),
        process_function=process,
        check_function=bookkeeping.check_block_func(),
        read_write_conflict=False,
        fit="overhang",
        max_workers=config.num_workers,
        max_retries=2,
    )
    with logs_in(base / "logs"):  # workers where worker_config.toml beside it says
        run_daisy_task(task, "predict", config.num_workers > 1, worker_group())
    done = graph_db.open("r").blocks_done(task_name)
    return StepResult("predict", False, f"{affs_path}: {done} blocks done")
