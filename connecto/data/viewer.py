"""`connecto view`: a neuroglancer viewer on the volumes of a zarr/N5 container (an
ingested volume, a synthetic volume or a training snapshot)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import neuroglancer
import numpy as np
import zarr

from connecto import ConnectoError
from connecto.data.volumes import is_n5, list_datasets, metadata_override, open_container

LABEL_DTYPES = ("uint16", "uint32", "uint64", "int32", "int64")


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str  # image | segmentation
    shape: tuple[int, ...]
    voxel_size: tuple[int, ...]


def _voxel_size(array: zarr.Array, n5: bool) -> tuple[int, ...]:
    attrs = array.attrs.asdict()
    if "voxel_size" in attrs:
        return tuple(int(v) for v in attrs["voxel_size"])
    return tuple(metadata_override(attrs, n5).get("voxel_size", (1,) * min(array.ndim, 3)))


def plan_layers(
    container: str | Path, datasets: list[str] | None = None
) -> tuple[list[Layer], list[str]]:
    """One layer per dataset with at least 3 dimensions; also the names left out (class
    labels and predictions of snapshots are not volumes)."""
    group = open_container(container)
    names = datasets or list_datasets(container)
    layers, skipped = [], []
    for name in names:
        if name not in group or not isinstance(group[name], zarr.Array):
            raise ConnectoError(f"{container}: no dataset {name!r}")
        array = group[name]
        if array.ndim < 3:
            skipped.append(name)
            continue
        kind = "segmentation" if str(array.dtype) in LABEL_DTYPES else "image"
        layers.append(Layer(name, kind, tuple(array.shape), _voxel_size(array, is_n5(container))))
    if not layers:
        raise ConnectoError(f"{container}: no volumes (3D datasets) to show")
    return layers, skipped


def _coordinate_space(layer: Layer) -> neuroglancer.CoordinateSpace:
    spatial = len(layer.voxel_size)
    extra = len(layer.shape) - spatial
    names = [f"c{i}^" for i in range(extra)] + ["z", "y", "x"][-spatial:]
    return neuroglancer.CoordinateSpace(
        names=names,
        units=[""] * extra + ["nm"] * spatial,
        scales=[1] * extra + list(layer.voxel_size),
    )


def open_viewer(
    container: str | Path, layers: list[Layer], bind_address: str = "127.0.0.1", port: int = 0
) -> neuroglancer.Viewer:
    """A served viewer showing `layers`; its URL is `viewer.get_viewer_url()`."""
    neuroglancer.set_server_bind_address(bind_address, bind_port=port)
    viewer = neuroglancer.Viewer()
    group = open_container(container)
    with viewer.txn() as state:
        for layer in layers:
            data = group[layer.name]
            offset_nm = data.attrs.get("offset", [0] * len(layer.voxel_size))
            offset = [0] * (data.ndim - len(layer.voxel_size)) + [
                int(o) // int(v) for o, v in zip(offset_nm, layer.voxel_size, strict=True)
            ]
            volume = neuroglancer.LocalVolume(
                data=data if layer.kind == "image" else data.astype(np.uint64),
                dimensions=_coordinate_space(layer),
                voxel_offset=offset,
                volume_type=layer.kind,
            )
            layer_type = (
                neuroglancer.SegmentationLayer
                if layer.kind == "segmentation"
                else neuroglancer.ImageLayer
            )
            state.layers[layer.name] = layer_type(source=volume)
    return viewer
