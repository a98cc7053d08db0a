"""`connecto data sparsify`: simulated sparse labels (disks, every k-th section, a list of
sections) from dense ground truth, checked voxel by voxel against the truth."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from connecto import ConnectoError
from connecto.data.ingest import create_volume
from connecto.data.sparsify import Disks, SparsifyReport, disk_mask, sparsify
from connecto.data.volumes import open_raw
from tests.conftest import NEUROPROOF, require_shared_data

LABELS = "volumes/labels/neuron_ids"
VOXEL_SIZE = (40, 4, 8)  # anisotropic in-plane too: the radius is in nm, not pixels
OFFSET = (80, 8, 16)
SHAPE = (7, 40, 30)


@pytest.fixture
def dense(tmp_path: Path) -> Path:
    """Dense labels (ids 1-29) with a background band of 0, in chunks smaller than the
    volume so that sparsify streams several slabs."""
    rng = np.random.default_rng(3)
    labels = rng.integers(1, 30, SHAPE, dtype=np.uint64)
    labels[:, 10:14] = 0
    path = tmp_path / "dense.zarr"
    root = zarr.open_group(str(path), mode="w")
    array = create_volume(root, LABELS, SHAPE, labels.dtype, VOXEL_SIZE, OFFSET, (2, 16, 16))
    array[:] = labels
    return path


def _read(path: Path, dataset: str = LABELS) -> np.ndarray:
    return zarr.open(str(path / dataset), mode="r")[:]


def _within_disks(report: SparsifyReport, radius_nm: float) -> np.ndarray:
    """Every voxel within `radius_nm` (in-plane, nm) of a disk centre of its section,
    by brute force over all voxels."""
    z, y, x = np.indices(SHAPE)
    inside = np.zeros(SHAPE, dtype=bool)
    for cz, cy, cx in report.centres:
        distance2 = ((y - cy) * VOXEL_SIZE[1]) ** 2 + ((x - cx) * VOXEL_SIZE[2]) ** 2
        inside |= (z == cz) & (distance2 <= radius_nm**2)
    return inside


def test_disks_keep_exactly_the_labels_inside_n_disks_per_section(
    dense: Path, tmp_path: Path
) -> None:
    truth = _read(dense)
    report = sparsify(dense, tmp_path / "sparse.zarr", disks=3, radius_nm=20, seed=5)
    sparse = _read(tmp_path / "sparse.zarr")
    assert report.mode == Disks(3, 20.0, 5)
    # 3 centres in every section, each on a labelled voxel of that section
    assert np.bincount(report.centres[:, 0], minlength=SHAPE[0]).tolist() == [3] * SHAPE[0]
    assert all(truth[tuple(c)] > 0 for c in report.centres)
    inside = _within_disks(report, 20)
    keep = inside & (truth > 0)
    np.testing.assert_array_equal(sparse[keep], truth[keep])  # values unchanged
    assert not sparse[~inside].any()  # 0 everywhere else
    assert report.kept == keep.sum() and report.dense_labelled == (truth > 0).sum()
    assert report.total == truth.size
    assert report.fraction_of_truth == pytest.approx(keep.sum() / (truth > 0).sum())
    assert 0 < report.fraction_of_volume < report.fraction_of_truth < 1


def test_a_disk_is_round_in_nm() -> None:
    """A radius of 20 nm spans 5 pixels of 4 nm in y either side but 2 of 8 nm in x."""
    labels = np.zeros((30, 30), dtype=np.uint32)
    labels[15, 15] = 9  # the only labelled pixel: the only possible centre
    keep, centres = disk_mask(labels, 1, 20.0, (4, 8), np.random.default_rng(0))
    assert centres.tolist() == [[15, 15]]
    y, x = np.indices(labels.shape)
    np.testing.assert_array_equal(keep, ((y - 15) * 4) ** 2 + ((x - 15) * 8) ** 2 <= 400)
    assert keep[15].sum() == 5 and keep[:, 15].sum() == 11


def test_disks_are_reproducible_from_the_seed(dense: Path, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        runs[name] = sparsify(dense, tmp_path / f"{name}.zarr", disks=2, radius_nm=30, seed=seed)
    np.testing.assert_array_equal(runs["a"].centres, runs["b"].centres)
    np.testing.assert_array_equal(_read(tmp_path / "a.zarr"), _read(tmp_path / "b.zarr"))
    assert not np.array_equal(runs["a"].centres, runs["c"].centres)
    assert not np.array_equal(_read(tmp_path / "a.zarr"), _read(tmp_path / "c.zarr"))


@pytest.mark.parametrize(
    ("options", "sections"),
    [({"every": 3}, [0, 3, 6]), ({"sections": [5, 1]}, [1, 5]), ({"every": 1}, list(range(7)))],
)
def test_sections_keep_exactly_those_sections(
    dense: Path, tmp_path: Path, options: dict, sections: list[int]
) -> None:
    truth = _read(dense)
    report = sparsify(dense, tmp_path / "sparse.zarr", **options)
    sparse = _read(tmp_path / "sparse.zarr")
    kept = np.isin(np.arange(SHAPE[0]), sections)
    np.testing.assert_array_equal(sparse[kept], truth[kept])
    assert not sparse[~kept].any()
    assert report.kept == (truth[kept] > 0).sum() and len(report.centres) == 0


def test_output_keeps_the_metadata_and_records_how_it_was_made(dense: Path, tmp_path: Path) -> None:
    # the same container, another dataset: next to the dense truth
    sparsify(dense, dense, LABELS, "volumes/labels/disk_2", disks=2, radius_nm=40)
    stored = zarr.open(str(dense / "volumes/labels/disk_2"), mode="r")
    source = zarr.open(str(dense / LABELS), mode="r")
    assert (stored.dtype, stored.shape, stored.chunks) == (source.dtype, SHAPE, source.chunks)
    array = open_raw(dense, "volumes/labels/disk_2")
    assert tuple(array.voxel_size) == VOXEL_SIZE and tuple(array.roi.offset) == OFFSET
    made = stored.attrs["sparsified"]
    assert made["mode"] == "disks" and made["disks"] == 2 and made["radius_nm"] == 40
    assert made["seed"] == 0 and made["source"].endswith(f"dense.zarr/{LABELS}")
    assert 0 < made["fraction_of_volume"] < made["fraction_of_truth"] < 1


def test_cli_writes_and_reports_the_labelled_fraction(
    dense: Path, tmp_path: Path, connecto
) -> None:
    out = tmp_path / "sparse.zarr"
    done = connecto("data", "sparsify", dense, out, "--sections", "2,4")
    assert done.returncode == 0, done.stderr
    truth = _read(dense)
    of_truth = (truth[[2, 4]] > 0).sum() / (truth > 0).sum()
    assert done.stdout.strip() == (
        f"{out}/{LABELS}: sections 2,4: kept {(truth[[2, 4]] > 0).sum()} of "
        f"{(truth > 0).sum()} labelled voxels ({100 * of_truth:.2f}% of the dense labels, "
        f"{100 * (truth[[2, 4]] > 0).sum() / truth.size:.2f}% of the volume)"
    )
    again = connecto("data", "sparsify", dense, out, "--every", "2", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert not _read(out)[1].any() and _read(out)[2].any()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--disks", "3"], "--disks 3: needs --radius NM (the disk radius in nm)"),
        (["--disks", "0", "--radius", "50"], "--disks 0: expected a positive number of disks"),
        (["--disks", "2", "--radius", "-5"], "--radius -5: expected a positive radius in nm"),
        (["--every", "2", "--sections", "1"], "give exactly one of --disks N --radius NM, "
         "--every K or --sections A,B (got --every and --sections)"),
        ([], "give exactly one of --disks N --radius NM, --every K or --sections A,B (got none)"),
        (["--every", "0"], "--every 0: expected a positive section step"),
        (["--every", "2", "--radius", "9"], "--radius 9: only --disks uses a radius"),
        (["--every", "2", "--seed", "4"], "--seed 4: only --disks draws at random"),
        (["--sections", "1,7"], "--sections 1,7: section 7 is outside the volume "
         "(z voxel indices 0 to 6)"),
        (["--sections", "1,1"], "--sections 1,1: a section is listed twice"),
        (["--sections", "1,b"], "--sections '1,b': expected comma-separated section indices "
         "(z voxel indices), e.g. 3,17"),
        (["--every", "2", "--dataset", "volumes/raw"], "no dataset 'volumes/raw' (--dataset); "
         f"available: {LABELS}"),
    ],
)  # fmt: skip
def test_cli_bad_options_give_one_line(
    dense: Path, tmp_path: Path, connecto, args: list[str], message: str
) -> None:
    out = tmp_path / "sparse.zarr"
    failed = connecto("data", "sparsify", dense, out, *args)
    assert failed.returncode == 1, failed.stdout
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("connecto: error: "), failed.stderr
    assert message in lines[0]
    assert not (out / LABELS).exists()  # nothing half-written


def test_cli_refuses_to_overwrite(dense: Path, tmp_path: Path, connecto) -> None:
    same = connecto("data", "sparsify", dense, dense, "--every", "2")
    assert same.returncode == 1
    assert same.stderr.strip() == (
        f"connecto: error: {dense}/{LABELS}: the output would replace the dense labels it is "
        "made from; give another container or --dataset SOURCE:DESTINATION"
    )
    out = tmp_path / "sparse.zarr"
    assert connecto("data", "sparsify", dense, out, "--every", "2").returncode == 0
    exists = connecto("data", "sparsify", dense, out, "--every", "3")
    assert exists.returncode == 1 and exists.stderr.strip() == (
        f"connecto: error: {out}/{LABELS} exists; use --overwrite to replace it"
    )
    missing = connecto("data", "sparsify", tmp_path / "absent.zarr", out, "--every", "2")
    assert missing.returncode == 1
    assert missing.stderr.strip().endswith("absent.zarr: no such zarr/N5 container")


def test_disks_on_neuroproof(tmp_path: Path, connecto) -> None:
    """The paper's disk_N on real dense labels (a NeuroProof slab, 10 nm): N disks of
    250 nm in every section keep a small part of the labels, all inside the disks."""
    require_shared_data(NEUROPROOF)
    with h5py.File(NEUROPROOF, "r") as f:
        truth = f["volumes/labels/neuron_ids"][:8]
    path = tmp_path / "np.zarr"
    root = zarr.open_group(str(path), mode="w")
    create_volume(root, LABELS, truth.shape, truth.dtype, (10, 10, 10), (0, 0, 0))[:] = truth
    done = connecto("data", "sparsify", path, path, "--dataset", f"{LABELS}:disk_5",
                    "--disks", "5", "--radius", "250", "--seed", "7")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{path}/disk_5: disk_5 (radius 250 nm, seed 7): kept " in done.stdout
    sparse = _read(path, "disk_5")
    # the library with the same seed: the same disks, whose centres it returns
    report = sparsify(path, path, LABELS, "again", disks=5, radius_nm=250, seed=7)
    np.testing.assert_array_equal(_read(path, "again"), sparse)
    assert np.bincount(report.centres[:, 0]).tolist() == [5] * 8
    z, y, x = np.indices(truth.shape)
    inside = np.zeros(truth.shape, dtype=bool)
    for cz, cy, cx in report.centres:
        inside |= (z == cz) & (((y - cy) * 10) ** 2 + ((x - cx) * 10) ** 2 <= 250**2)
    np.testing.assert_array_equal(sparse, np.where(inside, truth, 0))
    # 5 disks of about 1960 pixels in a 250 x 250 section: at most 16% of it
    assert 0.02 < report.fraction_of_truth < 0.16


def test_only_3d_integer_labels(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "bad.zarr"), mode="w")
    root.create_dataset("flat", data=np.ones((4, 4), np.uint32))
    root.create_dataset("float", data=np.ones((2, 4, 4), np.float32))
    for name, what in (("flat", r"uint32 with shape \[4, 4\]"),
                       ("float", r"float32 with shape \[2, 4, 4\]")):  # fmt: skip
        with pytest.raises(ConnectoError, match=rf"bad.zarr/{name}: {what}; expected 3D integer"):
            sparsify(tmp_path / "bad.zarr", tmp_path / "out.zarr", name, every=2)
