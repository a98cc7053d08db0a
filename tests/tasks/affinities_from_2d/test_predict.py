"""3D affinities from a stack of 2D predictions: tiles join seamlessly, the output has
the form `connecto segment` reads, and a stack of another 2D model is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from funlib.geometry import Roi
from funlib.persistence import open_ds, prepare_ds

from connecto import ConnectoError
from connecto.tasks.affinities_from_2d.config import AffinitiesFrom2dTrainConfig
from connecto.tasks.affinities_from_2d.model import build_model
from connecto.tasks.affinities_from_2d.predict import predict_affinities

VOXEL = (40, 8, 8)


def tiny_config(**changes: object) -> AffinitiesFrom2dTrainConfig:
    values: dict[str, object] = {
        "voxel_size": VOXEL, "input_offsets": [(0, 1, 0), (0, 0, 1)], "input_lsds": True,
        "input_shape": (16, 44, 44), "fmaps": 2, "fmap_inc_factor": 2,
        "downsample_factors": [(1, 2, 2)],
    }  # fmt: skip
    return AffinitiesFrom2dTrainConfig(**(values | changes))


def stack(tmp_path: Path, shape: tuple[int, int, int] = (10, 60, 60)) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "stack.zarr"
    for name, channels in (("affs_2d", 2), ("lsds_2d", 6)):
        array = prepare_ds(
            path / name, shape=(channels, *shape), offset=(80, 16, 16), voxel_size=VOXEL,
            axis_names=["c^", "z", "y", "x"], dtype=np.uint8, mode="w",
        )  # fmt: skip
        array[array.roi] = rng.integers(0, 256, (channels, *shape), dtype=np.uint8)
        if name == "affs_2d":
            array._source_data.attrs["neighborhood"] = [[0, 1, 0], [0, 0, 1]]
    return path


def checkpoint(tmp_path: Path, config: AffinitiesFrom2dTrainConfig) -> Path:
    torch.manual_seed(3)
    path = tmp_path / "model_checkpoint_10"
    torch.save({"model_state_dict": build_model(config).state_dict(), "iteration": 10}, path)
    return path


def test_tiles_join_seamlessly_into_segment_readable_affinities(tmp_path: Path) -> None:
    config = tiny_config()
    ckpt, source = checkpoint(tmp_path, config), stack(tmp_path)
    whole = predict_affinities(ckpt, config, source, tmp_path / "out.zarr", device="cpu")
    assert whole.tiles > 1  # the output shape is smaller than the volume: several tiles
    out = open_ds(whole.path)
    assert out.roi == open_ds(source / "affs_2d").roi and out.shape[0] == 3
    assert out._source_data.attrs["neighborhood"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    # a part predicted on its own (other tiling) agrees where both cover the volume
    part = Roi((80 + 40 * 3, 16 + 8 * 7, 16 + 8 * 5), (40 * 5, 8 * 30, 8 * 33))
    alone = predict_affinities(ckpt, config, source, tmp_path / "part.zarr", part, device="cpu")
    got = open_ds(alone.path).to_ndarray(part)
    np.testing.assert_allclose(got, out.to_ndarray(part), atol=1)  # uint8 rounding


def test_a_stack_of_another_2d_model_is_refused(tmp_path: Path) -> None:
    source = stack(tmp_path)
    other = tiny_config(input_offsets=[(0, 3, 0), (0, 0, 3)])
    with pytest.raises(ConnectoError, match="in-plane offsets .* differ"):
        predict_affinities(checkpoint(tmp_path, other), other, source, tmp_path / "o.zarr")
    no_lsds = tiny_config(input_lsds=False, voxel_size=(40, 4, 4))
    with pytest.raises(ConnectoError, match="voxel size"):
        predict_affinities(checkpoint(tmp_path, no_lsds), no_lsds, source, tmp_path / "o.zarr")
