"""`connecto data synthesize-barcodes`: PRISM-like barcoded channels from real labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds
from scipy import ndimage
from typer.testing import CliRunner

from cli.main import app
from connecto import ConnectoError
from connecto.data.barcodes import (
    NEURONS,
    BarcodeParameters,
    average_barcode,
    border_mask,
    load_labels,
    parse_crop,
    resample_labels,
    synthesize_barcodes,
)
from connecto.db.synapses import synapse_stats
from tests.conftest import NEUROPROOF, needs_neuroproof

# imaging switched off: what a neuron expresses is all there is in a channel
CLEAN = {
    "patchiness": 0.0,
    "psf_sigma_nm": (0, 0, 0),
    "photons": 0,
    "gain_range": (1, 1),
    "background": 0,
    "background_spread": 0,
}


def cells(shape: tuple[int, int, int] = (16, 32, 32), n: int = 14, seed: int = 3) -> np.ndarray:
    """Dense labels: Voronoi cells of random seeds (ids sparse, not 1..n), a background slab."""
    rng = np.random.default_rng(seed)
    marker = np.zeros(shape, dtype=np.int32)
    points = rng.integers(0, shape, size=(n, 3))
    marker[tuple(points.T)] = np.arange(1, n + 1)
    _, index = ndimage.distance_transform_edt(marker == 0, return_indices=True)
    labels = (marker[tuple(index)].astype(np.uint64) * 7 + 100).astype(np.uint64)
    labels[:, :, :2] = 0  # background (0) must stay background everywhere
    return labels


def per_object_means(raw: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, C) mean of each channel over each object's voxels, computed independently."""
    return np.stack(
        [ndimage.mean(raw[c].astype(np.float64), labels, ids) for c in range(raw.shape[0])], 1
    )


def test_noise_free_render_gives_back_every_barcode(tmp_path: Path) -> None:
    labels = cells()
    params = BarcodeParameters(channels=8, min_channels_on=2, max_channels_on=4, seed=5, **CLEAN)
    report = synthesize_barcodes(labels, (10, 10, 10), params, tmp_path / "p.zarr")
    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    barcodes = root.attrs["barcodes"]
    ids = np.array(sorted(int(k) for k in barcodes), dtype=np.uint64)
    assert report.neurons == len(ids) == len(np.unique(labels)) - 1
    truth = np.array([barcodes[str(i)] for i in ids])
    assert all(2 <= row.sum() <= 4 for row in truth)

    raw = root["raw"][:]
    assert raw.dtype == np.uint8 and raw.shape == (8, *labels.shape)
    means = per_object_means(raw, labels, ids)
    np.testing.assert_array_equal((means > 0.5).astype(int), truth)  # exactly recovered
    assert np.all(raw[:, labels == 0] == 0)

    # average_barcode: the per-object mean of raw/255, 0 in background
    average = root["average_barcode"][:]
    assert average.dtype == np.float32
    for row, neuron in enumerate(ids):
        inside = labels == neuron
        np.testing.assert_allclose(
            average[:, inside].mean(1, dtype=np.float64), means[row] / 255, atol=1e-6
        )
        assert np.ptp(average[:, inside], axis=1).max() < 1e-6  # constant per object
    assert np.all(average[:, labels == 0] == 0)
    np.testing.assert_allclose(average_barcode(raw, labels), average)

    # expression: the true barcode painted into each neuron
    expression = root["expression"][:]
    for row, neuron in enumerate(ids):
        inside = labels == neuron
        np.testing.assert_array_equal(expression[:, inside].min(1), truth[row])
        np.testing.assert_array_equal(expression[:, inside].max(1), truth[row])
    assert np.all(expression[:, labels == 0] == 0)
    np.testing.assert_array_equal(root["unlabelled"][:], (labels > 0).astype(np.uint8))
    np.testing.assert_array_equal(root["labels"][:], labels)


def test_arrays_open_with_funlib_and_masks_follow_borders(tmp_path: Path) -> None:
    labels = cells()
    synthesize_barcodes(labels, (40, 8, 8), BarcodeParameters(channels=5, max_channels_on=3),
                        tmp_path / "p.zarr", offset=(80, 16, 16))  # fmt: skip
    raw = open_ds(tmp_path / "p.zarr" / "raw")
    assert raw.axis_names == ["c^", "z", "y", "x"]
    assert tuple(raw.voxel_size) == (40, 8, 8) and tuple(raw.offset) == (80, 16, 16)
    mask = open_ds(tmp_path / "p.zarr" / "border_mask")
    assert tuple(mask.voxel_size) == (40, 8, 8) and mask.dtype == np.uint8
    border = mask.to_ndarray(mask.roi)
    # a voxel next to another label along x is masked out, both sides of the border
    z, y, x = np.argwhere(labels[:, :, 1:] != labels[:, :, :-1])[0]
    assert border[z, y, x] == 0 and border[z, y, x + 1] == 0
    interior = ndimage.binary_erosion(labels == labels[8, 16, 16], iterations=2)
    assert border[interior].all()
    wide = border_mask(labels, 2)
    assert wide.sum() < border.sum() and np.all(wide <= border)


def test_sharing_weak_expression_and_seeds(tmp_path: Path) -> None:
    labels = cells(n=40)
    params = BarcodeParameters(
        channels=6, min_channels_on=2, max_channels_on=3, shared_fraction=0.25,
        weak_fraction=0.25, weak_scale=0.2, expression_range=(0.8, 1.0), **CLEAN,
    )  # fmt: skip
    synthesize_barcodes(labels, (10, 10, 10), params, tmp_path / "a.zarr")
    synthesize_barcodes(labels, (10, 10, 10), params, tmp_path / "b.zarr")
    a = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert a.attrs["barcodes"] == b.attrs["barcodes"]  # seeded
    np.testing.assert_array_equal(a["raw"][:], b["raw"][:])
    barcodes = {int(k): tuple(v) for k, v in a.attrs["barcodes"].items()}
    n = len(barcodes)  # 40 seeds, fewer cells where seeds coincide
    assert n > 30
    # a quarter copy another neuron's barcode, all others are pairwise distinct
    assert len(set(barcodes.values())) == n - round(0.25 * n)
    assert a.attrs["barcode_parameters"]["shared_fraction"] == 0.25
    # weak neurons: a quarter, with levels scaled by 0.2 (on channels under 0.2 * 255 * 0.7)
    ids = np.array(sorted(barcodes), dtype=np.uint64)
    means = per_object_means(a["raw"][:], labels, ids)
    on = np.array([barcodes[int(i)] for i in ids]) == 1
    brightest_on = np.where(on, means, np.inf).min(1)
    assert (brightest_on < 0.2 * 255 * 0.7 + 1).sum() == round(0.25 * n)
    other = BarcodeParameters(**{**params.model_dump(), "seed": 1})
    synthesize_barcodes(labels, (10, 10, 10), other, tmp_path / "c.zarr")
    assert zarr.open_group(str(tmp_path / "c.zarr"), mode="r").attrs["barcodes"] != barcodes


def test_neurons_in_mongodb_once_per_neuron(tmp_path: Path, mongo_client, db_name: str) -> None:
    db = mongo_client[db_name]
    labels = cells()
    out = tmp_path / "p.zarr"
    params = BarcodeParameters(channels=7, max_channels_on=4)
    synthesize_barcodes(labels, (10, 10, 10), params, out, db=db)
    volume = str(out.resolve())
    docs = list(db[NEURONS].find({"volume": volume}, {"_id": 0}))
    ids = np.unique(labels[labels > 0])
    assert sorted(d["neuron_id"] for d in docs) == ids.tolist()
    barcodes = zarr.open_group(str(out), mode="r").attrs["barcodes"]
    for doc in docs:
        assert doc["barcode"] == barcodes[str(doc["neuron_id"])]
        assert doc["size_voxels"] == int((labels == doc["neuron_id"]).sum())
        levels = np.array(doc["expression_level"])
        assert len(levels) == 7 and np.all((levels > 0) == np.array(doc["barcode"], bool))
    index = db[NEURONS].index_information()["volume_neuron_id"]
    assert index["unique"] and index["key"] == [("volume", 1), ("neuron_id", 1)]

    # a rerun is refused without overwrite, and changes nothing
    with pytest.raises(ConnectoError, match="already holds.*--overwrite"):
        synthesize_barcodes(labels, (10, 10, 10), params, out, db=db)
    shutil.rmtree(out)  # the container is gone, the documents are not: still refused
    with pytest.raises(ConnectoError, match=f"database '{db_name}' already holds neurons"):
        synthesize_barcodes(labels, (10, 10, 10), params, out, db=db)
    # with overwrite: replaced, still one document per neuron
    other = BarcodeParameters(channels=7, max_channels_on=4, seed=9)
    synthesize_barcodes(labels, (10, 10, 10), other, out, db=db, overwrite=True)
    docs = list(db[NEURONS].find({"volume": volume}))
    assert len(docs) == len(ids)
    assert {d["neuron_id"]: d["barcode"] for d in docs} == {
        int(k): v for k, v in zarr.open_group(str(out), mode="r").attrs["barcodes"].items()
    }


def test_synapse_markers_at_contacts(tmp_path: Path, mongo_client, db_name: str) -> None:
    db = mongo_client[db_name]
    labels = cells((16, 48, 48), n=20)
    params = BarcodeParameters(
        channels=4,
        min_channels_on=1,
        max_channels_on=2,
        synapses=6,
        synapse_min_distance_nm=80,
        **CLEAN,
    )
    out = tmp_path / "s.zarr"
    report = synthesize_barcodes(labels, (10, 10, 10), params, out, db=db)
    assert report.synapses == 6
    root = zarr.open_group(str(out), mode="r")
    raw = root["raw"][:]
    assert raw.shape[0] == 6 and root["average_barcode"].shape[0] == 4
    assert root.attrs["marker_channels"] == {"pre": 4, "post": 5, "names": ["synapsin", "psd95"]}
    assert root["raw"].attrs["channel_names"][4:] == ["synapsin", "psd95"]
    docs = list(db["synapses"].find({}, {"_id": 0}))
    assert len(docs) == 12  # a pre and a post document per synapse
    by_site: dict[int, dict[str, dict]] = {}
    for doc in docs:
        by_site.setdefault(doc["synapse_site"], {})[doc["prepost"]] = doc
    for site in by_site.values():
        pre, post = site["pre"], site["post"]
        assert pre["skeleton_id"] == post["partner_skeleton_id"] != post["skeleton_id"]
        for doc, channel in ((pre, 4), (post, 5)):
            voxel = tuple(int(doc[a] / 10) for a in "zyx")
            assert labels[voxel] == doc["skeleton_id"]  # the punctum lies in its neuron
            assert raw[channel][voxel] > 100  # and is bright there
        gap = np.linalg.norm([pre[a] - post[a] for a in "zyx"])
        assert gap <= 2 * params.marker_offset_nm + 10  # the two sides face each other
    assert raw[4].mean() < 10  # punctate: dark away from synapses
    # connecto's synapse tools read them: every side a synapse of its neuron
    stats = synapse_stats(db)
    assert stats["synapses"] == 12
    assert db["skeletons"].count_documents({}) == len({d["skeleton_id"] for d in docs})
    # overwrite replaces the volume's synapses rather than adding more
    synthesize_barcodes(labels, (10, 10, 10), params, out, db=db, overwrite=True)
    assert db["synapses"].count_documents({}) == 12


def test_crop_and_anisotropic_resampling() -> None:
    labels = cells((16, 32, 32))
    coarse, size, offset = resample_labels(labels, (10, 10, 10), (40, 0, 0), (4, 2, 1))
    assert coarse.shape == (4, 16, 32) and size == (40, 20, 10) and offset == (40, 0, 0)
    np.testing.assert_array_equal(coarse, labels[2::4, 1::2, :])
    assert parse_crop("0:8, 4:,:16") == (slice(0, 8), slice(4, None), slice(None, 16))
    for bad in ("0:64,0:128", "a:b,0:1,0:1", "5:2,0:1,0:1", "0-64,0:128,0:128"):
        with pytest.raises(ConnectoError, match="--crop"):
            parse_crop(bad)
    with pytest.raises(ConnectoError, match="--downsample"):
        resample_labels(labels, (10, 10, 10), (0, 0, 0), (0, 1, 1))


@needs_neuroproof
def test_cli_renders_a_neuroproof_crop(tmp_path: Path, connecto, mongo_client, db_name) -> None:
    labels, voxel_size, offset = load_labels(NEUROPROOF, crop=parse_crop("8:40,0:64,64:128"))
    assert voxel_size == (10, 10, 10) and offset == (80, 0, 640)
    out = tmp_path / "prism.zarr"
    args = ("data", "synthesize-barcodes", out, "--db", db_name, "--crop", "8:40,0:64,64:128",
            "--channels", "6", "--seed", "1", "--set", "max_channels_on=3",
            "--synapses", "3")  # fmt: skip
    done = connecto(*args)
    assert done.returncode == 0, done.stderr
    neurons = len(np.unique(labels[labels > 0]))
    assert f"6 barcode channels over [32, 64, 64] voxels at [10, 10, 10] nm; {neurons} neurons" in (
        done.stdout
    )
    raw = open_ds(out / "raw")
    assert raw.shape == (8, 32, 64, 64) and tuple(raw.offset) == (80, 0, 640)
    np.testing.assert_array_equal(zarr.open(str(out / "labels"), mode="r")[:], labels)
    assert mongo_client[db_name][NEURONS].count_documents({}) == neurons
    assert mongo_client[db_name]["synapses"].count_documents({}) == 6

    # in process from here: a crop outside the labels, and a rerun without --overwrite
    outside = CliRunner().invoke(app, [*map(str, args[:5]), "--crop", "0:64,0:128,0:999"])
    assert "leaves the labels (shape [250, 250, 250])" in str(outside.exception)
    again = CliRunner().invoke(app, list(map(str, args)))
    assert isinstance(again.exception, ConnectoError) and "--overwrite" in str(again.exception)
    assert mongo_client[db_name][NEURONS].count_documents({}) == neurons


def test_cli_bad_input_is_one_line(tmp_path: Path, connecto, db_name: str) -> None:
    out = tmp_path / "never.zarr"
    # the real command: a bad crop is one line on stderr, exit code 1
    done = connecto("data", "synthesize-barcodes", out, "--db", db_name, "--crop", "0:64,0:128")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "connecto: error: --crop '0:64,0:128': expected three ranges z0:z1,y0:y1,x0:x1 in "
        "voxels, e.g. 0:64,0:128,0:128"
    ]
    # more bad input, in process (the same ConnectoError the command prints as one line)
    for extra, expected in (
        (("--crop", "0:64,0-128,0:128"), "expected three ranges"),
        (("--downsample", "4,1"), "--downsample"),
        (("--set", "patchiness=-1"), "key 'patchiness' = -1"),
        (("--set", "patchiness"), "--set 'patchiness': expected KEY=VALUE"),
        (("--set", "max_channels_on=30"), "max_channels_on = 30 is above channels = 18"),
        (("--labels", str(tmp_path / "none.h5")), "no such file"),
    ):
        args = ["data", "synthesize-barcodes", str(out), "--db", db_name, *extra]
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, ConnectoError), result.output
        assert expected in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()
