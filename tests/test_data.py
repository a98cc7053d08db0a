"""Volumes: ingest HDF5/TIFF into zarr, open zarr/N5 with metadata, crops, the viewer."""

from __future__ import annotations

import json
from pathlib import Path

import gunpowder as gp
import h5py
import numpy as np
import pytest
import tifffile
import zarr
from funlib.geometry import Coordinate, Roi

from connecto import ConnectoError
from connecto.data.ingest import DONE_ATTR, ingest
from connecto.data.synthetic import class_properties, make_volume
from connecto.data.viewer import plan_layers
from connecto.data.volumes import (
    list_datasets,
    normalize_raw,
    open_raw,
    prepare_channels,
    read_crop,
)
from tests.conftest import NEUROPROOF, SHARED_DATA, require_shared_data

GALA = SHARED_DATA / "gala_fib_crop"


@pytest.fixture
def small_h5(tmp_path: Path) -> Path:
    path = tmp_path / "small.h5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        raw = f.create_dataset("volumes/raw", data=rng.integers(0, 255, (20, 30, 40), np.uint8))
        raw.attrs["resolution"] = (40, 4, 4)
        raw.attrs["offset"] = (80, 8, 4)
        labels = f.create_dataset("volumes/labels", data=rng.integers(0, 9, raw.shape, np.uint64))
        labels.attrs.update(resolution=(40, 4, 4), offset=(80, 8, 4))
        f.create_dataset("meta/table", data=np.zeros((5, 2)))  # 2D: not a volume
    return path


def test_ingest_real_hdf5_through_the_cli(tmp_path: Path, connecto) -> None:
    require_shared_data(NEUROPROOF)
    out = tmp_path / "np.zarr"
    result = connecto("data", "ingest", NEUROPROOF, out, "--dataset", "volumes/raw")
    assert result.returncode == 0, result.stderr
    assert "voxel size [10, 10, 10]" in result.stdout
    assert json.loads((out / ".zgroup").read_text())["zarr_format"] == 2
    array = open_raw(out, "volumes/raw")
    assert tuple(array.voxel_size) == (10, 10, 10) and tuple(array.roi.offset) == (0, 0, 0)
    stored = zarr.open(str(out / "volumes/raw"))
    assert stored.attrs["resolution"] == [10, 10, 10]  # gunpowder's ZarrSource reads this
    assert stored.compressor is not None and stored.chunks[0] < stored.shape[0]
    with h5py.File(NEUROPROOF, "r") as f:
        expected = f["volumes/raw"][100:140, 50:90, 60:120]
    np.testing.assert_array_equal(stored[100:140, 50:90, 60:120], expected)
    key = gp.ArrayKey("NP_RAW")
    source = gp.ZarrSource(str(out), {key: "volumes/raw"})
    request = gp.BatchRequest()
    request[key] = gp.ArraySpec(roi=gp.Roi((1000, 500, 600), (400, 400, 600)))
    with gp.build(source):
        batch = source.request_batch(request)
    np.testing.assert_array_equal(batch[key].data, expected)


def test_ingest_defaults_to_all_volumes_and_hdf5_metadata(small_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    results = ingest(small_h5, out, chunks=(8, 16, 16), progress=False)
    assert [r.name for r in results] == ["volumes/labels", "volumes/raw"]
    raw = open_raw(out, "volumes/raw")
    assert tuple(raw.voxel_size) == (40, 4, 4) and tuple(raw.roi.offset) == (80, 8, 4)
    labels = zarr.open(str(out / "volumes/labels"))
    assert labels.dtype == np.uint64 and labels.attrs[DONE_ATTR] == 20
    # a rerun skips finished datasets
    assert all(r.skipped for r in ingest(small_h5, out, progress=False))


def test_ingest_resumes_an_interrupted_copy(small_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    ingest(small_h5, out, ["volumes/raw"], chunks=(8, 16, 16), progress=False)
    stored = zarr.open(str(out / "volumes/raw"))
    stored[8:] = 0  # as if it had stopped after the first slab
    stored.attrs[DONE_ATTR] = 8
    (result,) = ingest(small_h5, out, ["volumes/raw"], chunks=(8, 16, 16), progress=False)
    assert not result.skipped
    with h5py.File(small_h5, "r") as f:
        np.testing.assert_array_equal(stored[:], f["volumes/raw"][:])


@pytest.mark.parametrize("layout", ["directory", "multipage"])
def test_ingest_tiff_stacks(tmp_path: Path, layout: str, connecto) -> None:
    stack = np.random.default_rng(2).integers(0, 60000, (7, 24, 20), dtype=np.uint16)
    if layout == "directory":
        source = tmp_path / "sections"
        source.mkdir()
        for z, section in enumerate(stack):
            tifffile.imwrite(source / f"s{z:03d}.tif", section)
    else:
        source = tmp_path / "stack.tif"
        tifffile.imwrite(source, stack)
    out = tmp_path / "t.zarr"
    if layout == "directory":  # through the command once, in-process otherwise
        result = connecto(
            "data", "ingest", source, out, "--dataset", "em", "--voxel-size", "30,8,8",
            "--offset", "60,0,16", "--chunks", "4,8,8",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    else:
        ingest(source, out, ["em"], (30, 8, 8), (60, 0, 16), (4, 8, 8), progress=False)
    array = open_raw(out, "em")
    assert tuple(array.voxel_size) == (30, 8, 8) and tuple(array.roi.offset) == (60, 0, 16)
    np.testing.assert_array_equal(array[array.roi], stack)


def test_bad_ingest_input_changes_nothing(small_h5: Path, tmp_path: Path, connecto) -> None:
    out = tmp_path / "never.zarr"
    missing = connecto("data", "ingest", small_h5, out, "--dataset", "volumes/nope")
    assert missing.returncode == 1
    assert "no dataset 'volumes/nope'" in missing.stderr and "volumes/raw" in missing.stderr
    assert "Traceback" not in missing.stderr
    tiff = tmp_path / "s.tif"
    tifffile.imwrite(tiff, np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ConnectoError, match="voxel size unknown; pass --voxel-size"):
        ingest(tiff, out, progress=False)
    with pytest.raises(ConnectoError, match="--offset.*multiple of the voxel size"):
        ingest(tiff, out, voxel_size=(40, 4, 4), offset=(1, 0, 0), progress=False)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a volume")
    with pytest.raises(ConnectoError, match="unknown format"):
        ingest(notes, out, progress=False)
    assert not out.exists()


def test_fractional_resolution_is_refused_never_truncated(tmp_path: Path, connecto) -> None:
    """An ssTEM stack at 50 x 4.6 x 4.6 nm: truncating to (50, 4, 4) shifted crops 15-20%."""
    source = tmp_path / "sstem.h5"
    with h5py.File(source, "w") as f:
        raw = f.create_dataset("raw", data=np.zeros((4, 8, 8), np.uint8))
        raw.attrs["resolution"] = (50.0, 4.6, 4.6)
    out = tmp_path / "sstem.zarr"
    refused = connecto("data", "ingest", source, out)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    message = refused.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"{source}:raw" in message and "50,4.6,4.6" in message
    assert "--voxel-size 50,5,5" in message and "--voxel-size 500,46,46" in message
    assert not out.exists()
    # the user's choice is stored exactly: a finer unit (Å) keeps the true grid
    (result,) = ingest(source, out, voxel_size=(500, 46, 46), progress=False)
    assert result.voxel_size == (500, 46, 46)
    assert tuple(open_raw(out, "raw").voxel_size) == (500, 46, 46)
    # whole numbers stored as floats are fine; fractional --voxel-size values are refused
    with h5py.File(source, "a") as f:
        f["raw"].attrs["resolution"] = (50.0, 5.0, 5.0)
    (result,) = ingest(source, tmp_path / "whole.zarr", progress=False)
    assert result.voxel_size == (50, 5, 5)
    with pytest.raises(ConnectoError, match="--voxel-size 50,4.6,4.6: values must be whole"):
        ingest(source, tmp_path / "no.zarr", voxel_size=(50, 4.6, 4.6), progress=False)
    cli = connecto("data", "ingest", source, tmp_path / "no.zarr", "--voxel-size", "50,4.6,4.6")
    assert cli.returncode != 0 and "finer unit" in cli.stderr
    # a container written elsewhere with a fractional voxel size is not opened truncated
    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.create_dataset("raw", data=np.zeros((2, 4, 4), np.uint8)).attrs.update(
        voxel_size=[50, 4.6, 4.6], offset=[0, 0, 0]
    )
    with pytest.raises(ConnectoError, match=r"other.zarr/raw: voxel_size 50,4.6,4.6 is not whole"):
        open_raw(tmp_path / "other.zarr", "raw")


def test_ingest_renames_datasets_and_needs_a_voxel_size_without_attributes(
    tmp_path: Path, connecto
) -> None:
    """The gala FIB-SEM crop: raw and labels in separate HDF5 files, each a dataset `stack`
    with no resolution attribute."""
    image = require_shared_data(GALA / "train-image.h5")
    gt = require_shared_data(GALA / "train-gt.lzf.h5")
    out = tmp_path / "fib.zarr"
    missing = connecto("data", "ingest", image, out, "--dataset", "stack:volumes/raw")
    assert missing.returncode == 1 and not out.exists()
    assert f"{image}:stack: voxel size unknown (the HDF5 dataset has no resolution" in (
        missing.stderr
    )
    assert "pass --voxel-size" in missing.stderr
    for source, name in ((image, "volumes/raw"), (gt, "volumes/labels/neuron_ids")):
        done = connecto(
            "data", "ingest", source, out, "--dataset", f"stack:{name}", "--voxel-size", "10,10,10"
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"{out}/{name}:" in done.stdout
    raw = open_raw(out, "volumes/raw")
    labels = open_raw(out, "volumes/labels/neuron_ids")
    assert tuple(raw.voxel_size) == (10, 10, 10) and raw.shape == (50, 100, 200)
    assert labels.roi == raw.roi and labels.dtype == np.int32
    with h5py.File(gt, "r") as f:
        np.testing.assert_array_equal(labels[labels.roi], f["stack"][:])
    assert "stack" not in zarr.open_group(str(out), mode="r")
    with pytest.raises(ConnectoError, match="no dataset 'nope'"):
        ingest(image, tmp_path / "x.zarr", ["nope:raw"], (10, 10, 10), progress=False)
    with pytest.raises(ConnectoError, match="repeat a destination"):
        ingest(image, tmp_path / "x.zarr", ["stack:raw", "stack:raw"], (10, 10, 10),
               progress=False)  # fmt: skip


def test_open_raw_reads_n5_with_gunpowder_resolution(tmp_path: Path) -> None:
    container = tmp_path / "fafb.n5"
    root = zarr.open_group(zarr.N5FSStore(str(container)), mode="w")
    data = np.arange(4 * 10 * 12, dtype=np.uint8).reshape(4, 10, 12)
    array = root.create_dataset("volumes/raw/s0", data=data, chunks=(2, 5, 6))
    array.attrs["resolution"] = [4, 8, 40]  # N5 metadata is x, y, z
    array.attrs["offset"] = [8, 16, 80]
    raw = open_raw(container, "volumes/raw/s0")
    assert tuple(raw.voxel_size) == (40, 8, 4) and tuple(raw.roi.offset) == (80, 16, 8)
    np.testing.assert_array_equal(raw[raw.roi], data)
    with pytest.raises(ConnectoError, match="no dataset 'volumes/raw/s1'.*volumes/raw/s0"):
        open_raw(container, "volumes/raw/s1")
    with pytest.raises(ConnectoError, match="no such zarr/N5 container"):
        open_raw(tmp_path / "absent.zarr", "raw")


def test_a_prepared_prediction_lies_in_a_container_that_opens(tmp_path: Path) -> None:
    """A prediction written into a new container (nested or not) leaves a container that
    the readers open and list, as a later `segment` step needs."""
    roi = Roi((0, 0, 0), (40, 40, 40))
    for container, dataset in ((tmp_path / "new.zarr", "enhanced"),
                               (tmp_path / "deeper.zarr", "predictions/affs")):  # fmt: skip
        out = prepare_channels(container / dataset, 3, roi, Coordinate(10, 10, 10), (2, 2, 2), {})
        out[roi] = np.full((3, 4, 4, 4), 7, dtype=np.uint8)
        assert list_datasets(container) == [dataset]
        assert open_raw(container, dataset).to_ndarray(roi).min() == 7


def test_read_crop_centres_and_pads_like_training(small_h5: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    ingest(small_h5, out, ["volumes/raw"], progress=False)
    raw = open_raw(out, "volumes/raw")  # voxel size (40, 4, 4), offset (80, 8, 4)
    crop = read_crop(raw, (80 + 40 * 10, 8 + 4 * 15, 4 + 4 * 20), (4, 6, 8))
    with h5py.File(small_h5, "r") as f:
        expected = f["volumes/raw"][8:12, 12:18, 16:24]
    np.testing.assert_allclose(crop, normalize_raw(expected))
    assert crop.dtype == np.float32 and -1 <= crop.min() and crop.max() <= 1
    corner = read_crop(raw, (80, 8, 4), (4, 6, 8))  # half outside: padded with raw 0
    assert np.all(corner[:2] == -1.0) and np.all(corner[:, :3] == -1.0)
    np.testing.assert_allclose(normalize_raw(np.array([0, 255], np.uint8)), [-1.0, 1.0])


def test_viewer_plans_a_layer_per_volume(small_h5: Path, tmp_path: Path, connecto) -> None:
    out = tmp_path / "out.zarr"
    ingest(small_h5, out, progress=False)
    layers, skipped = plan_layers(out)
    assert {(layer.name, layer.kind) for layer in layers} == {
        ("volumes/raw", "image"),
        ("volumes/labels", "segmentation"),
    }
    assert skipped == []
    result = connecto("view", out, "--print-only")
    assert result.returncode == 0, result.stderr
    assert "layer volumes/raw: image" in result.stdout
    assert "layer volumes/labels: segmentation" in result.stdout


def test_synthetic_volume_is_em_like_and_class_dependent() -> None:
    raw, synapses = make_volume(60, 3, seed=3)
    assert raw.dtype == np.uint8 and raw.ndim == 3
    assert 80 < raw.mean() < 200 and raw.std() > 20
    section_means = raw.reshape(raw.shape[0], -1).mean(axis=1)
    assert section_means.std() > 1.0  # section-wise contrast changes
    assert sorted({s.class_index for s in synapses}) == [0, 1, 2]
    assert len({s.voxel for s in synapses}) == 60
    # the synapse neighbourhood is darker than the volume, and classes differ in look
    properties = [class_properties(i, 3) for i in range(3)]
    assert len({p["vesicle_radius"] for p in properties}) == 3
    z, y, x = synapses[0].voxel
    assert raw[z, y - 12 : y + 13, x - 12 : x + 13].mean() < raw.mean()
    again, same = make_volume(60, 3, seed=3)
    np.testing.assert_array_equal(raw, again)
