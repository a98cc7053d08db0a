"""The 2D training pipeline on a synthetic stack with one painted section: the input
channels are the right sections, the targets are the centre section's in-plane
affinities and 2D LSDs, and nothing unlabelled carries weight."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from lsd.train import LsdExtractor
from numpy.lib.stride_tricks import sliding_window_view

from connecto import ConnectoError
from connecto.config import WorkerConfig
from connecto.data.ingest import create_volume
from connecto.data.volumes import open_raw
from connecto.tasks.segmentation_2d.config import Segmentation2dTrainConfig
from connecto.tasks.segmentation_2d.model import SectionModel, output_shape_2d
from connecto.tasks.segmentation_2d.pipeline import (
    AFFS_WEIGHTS,
    GT_AFFS,
    GT_LSDS,
    LABELLED,
    LABELS,
    LSDS_WEIGHTS,
    RAW,
    batch_request,
    data_pipeline,
    labelled_sections,
    task_parts,
)

VOXEL_SIZE = (40, 4, 4)
SHAPE = (9, 64, 64)
PAINTED = 4  # the one section with labels
NEIGHBORHOOD = [(0, 1, 0), (0, 0, 1), (0, 3, 0), (0, 0, 3)]


def synthetic_stack(path: Path, painted: tuple[int, ...] = (PAINTED,)) -> Path:
    """Random raw (every section different) and, on the `painted` sections, random ids
    on 4x4 blocks except for an unpainted band (0) at x >= 40."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    labels = np.zeros(SHAPE, dtype=np.uint64)
    blocks = rng.integers(1, 6, (16, 16)).repeat(4, axis=0).repeat(4, axis=1)
    for z in painted:
        labels[z] = blocks
        labels[z, :, 40:] = 0
    root = zarr.open_group(str(path), mode="w")
    create_volume(root, "volumes/raw", SHAPE, raw.dtype, VOXEL_SIZE, (0, 0, 0))[:] = raw
    create_volume(root, "volumes/labels/neuron_ids", SHAPE, labels.dtype, VOXEL_SIZE,
                  (0, 0, 0))[:] = labels  # fmt: skip
    return path


def small_config(container: Path, **changes: object) -> Segmentation2dTrainConfig:
    values = {
        "raw_container": str(container), "input_shape": (44, 44),
        "downsample_factors": [(2, 2)], "fmaps": 2, "fmap_inc_factor": 2,
        "neighborhood": NEIGHBORHOOD, "lsd_sigma": 16.0, "lsd_downsample": 1,
        "grow_boundary": 0, "augment": False, "batch_size": 1, "min_labelled_fraction": 0.0,
        "section_percentiles": None, **changes,
    }  # fmt: skip
    return Segmentation2dTrainConfig(**values)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_stack(tmp_path_factory.mktemp("s2d") / "stack.zarr")


def _batch(config: Segmentation2dTrainConfig) -> gp.Batch:
    raw = open_raw(config.raw_container, config.raw_dataset)
    labels = open_raw(config.labels_source, config.labels_dataset)
    sections = labelled_sections(labels, labels.roi, config.sparse_labels, (28, 28))
    pipeline = data_pipeline(config, raw, labels, sections.runs)
    with gp.build(pipeline):
        return pipeline.request_batch(batch_request(config, raw.voxel_size, predictions=False))


def _locate(section: np.ndarray, raw: np.ndarray, pad: int = 44) -> tuple[int, int, int]:
    """Where (z, and y, x of its first voxel) `section` lies in the volume `raw`, zero
    beyond it: random raw matches in one place only."""
    padded = np.pad(raw, ((0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(padded, section.shape, axis=(1, 2))
    found = np.argwhere(np.all(windows == section, axis=(-2, -1)))
    assert len(found) == 1, f"the centre section matches {len(found)} places"
    z, y, x = (int(v) for v in found[0])
    return z, y - pad, x - pad


def _sections(batch: gp.Batch) -> np.ndarray:
    """The batch's raw sections back in uint8 (the pipeline maps them to [-1, 1])."""
    return np.rint((batch[RAW].data[0] + 1) / 2 * 255).astype(np.uint8)


def _affinities(labels: np.ndarray, offsets: list[tuple[int, int, int]]) -> np.ndarray:
    """In-plane affinities, written out: 1 where v and v + offset hold the same id > 0."""
    out = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    height, width = labels.shape
    for channel, (_, dy, dx) in enumerate(offsets):
        for y in range(height - dy):
            for x in range(width - dx):
                a, b = labels[y, x], labels[y + dy, x + dx]
                out[channel, y, x] = float(a == b and a > 0)
    return out


def test_a_batch_stacks_the_neighbours_and_targets_the_painted_section(stack: Path):
    config = small_config(stack)
    volume = zarr.open_group(str(stack), mode="r")
    raw, labels = volume["volumes/raw"][:], volume["volumes/labels/neuron_ids"][:]
    batch = _batch(config)
    sections = _sections(batch)
    assert sections.shape == (3, 44, 44)
    z, y, x = _locate(sections[1], raw)
    assert z == PAINTED
    window = np.pad(raw, ((0, 0), (64, 64), (64, 64)))[:, y + 64 : y + 108, x + 64 : x + 108]
    assert np.array_equal(sections, window[PAINTED - 1 : PAINTED + 2])  # z-1, z, z+1
    # the output (28 x 28) sits 8 voxels inside the input
    padded = np.pad(labels[PAINTED], 64)
    y0, x0 = y + 8 + 64, x + 8 + 64
    expected_labels = padded[y0 : y0 + 28, x0 : x0 + 28]
    assert np.array_equal(batch[LABELS].data[0, 0], expected_labels)
    reach = padded[y0 : y0 + 31, x0 : x0 + 31]  # affinities read 3 voxels further
    expected = _affinities(reach, NEIGHBORHOOD)[:, :28, :28]
    assert np.array_equal(batch[GT_AFFS].data[0][:, 0], expected)
    # the weights: only affinities between two labelled voxels train (an unlabelled end
    # says nothing: a painted object's edge may continue unpainted), as in `segmentation`
    labelled = reach > 0
    weights = batch[AFFS_WEIGHTS].data[0][:, 0]
    for channel, (_, dy, dx) in enumerate(NEIGHBORHOOD):
        both_labelled = labelled[:28, :28] & labelled[dy : dy + 28, dx : dx + 28]
        assert np.all(weights[channel][~both_labelled] == 0)
        assert np.all(weights[channel][both_labelled] > 0)
    lsd_weights = batch[LSDS_WEIGHTS].data[0][:, 0]
    assert np.all(lsd_weights[:, expected_labels == 0] == 0)
    assert np.all(lsd_weights[:, expected_labels > 0] == 1)
    assert np.array_equal(batch[LABELLED].data[0, 0], (expected_labels > 0).astype(np.uint8))
    # 2D LSDs of the painted section, as lsd computes them on the whole section
    lsds = LsdExtractor((16.0, 16.0), "gaussian", 1).get_descriptors(
        padded.astype(np.uint64), voxel_size=(4, 4)
    )[:, y0 : y0 + 28, x0 : x0 + 28]
    assert batch[GT_LSDS].data.shape == (1, 6, 1, 28, 28)
    # float32 covariances (E[x^2] - E[x]^2) differ by rounding with the coordinates' origin
    difference = np.abs(batch[GT_LSDS].data[0][:, 0] - lsds)
    assert difference.max() < 1e-3, difference.max(axis=(1, 2))


def _runs(path: Path, sparse: bool = True) -> list[tuple[int, int]]:
    labels = open_raw(path, "volumes/labels/neuron_ids")
    runs = labelled_sections(labels, labels.roi, sparse, (28, 28)).runs
    return [(r.offset[0] // VOXEL_SIZE[0], r.shape[0] // VOXEL_SIZE[0]) for r in runs]


def test_only_painted_sections_are_sampled(stack: Path, tmp_path: Path):
    assert _runs(stack) == [(PAINTED, 1)]
    assert _runs(stack, sparse=False) == [(0, SHAPE[0])]
    labels = open_raw(stack, "volumes/labels/neuron_ids")
    best = labelled_sections(labels, labels.roi, True, (28, 28)).best_fraction
    assert best == 1.0  # a window inside the painted part (x < 40)
    assert labelled_sections(labels, labels.roi, True, (64, 64)).best_fraction == 40 / 64
    two = synthetic_stack(tmp_path / "two.zarr", painted=(1, 2, 6))
    assert _runs(two) == [(1, 2), (6, 1)]
    raw = zarr.open_group(str(two), mode="r")["volumes/raw"][:]
    config = small_config(two, min_labelled_fraction=0.2)
    for _ in range(6):  # every batch from a painted section, with labels in it
        batch = _batch(config)
        assert _locate(_sections(batch)[1], raw)[0] in (1, 2, 6)
        assert batch[LABELS].data.max() > 0


def test_dense_labels_train_every_section_and_background(stack: Path):
    """sparse_labels = false: 0 is background, trained (as boundary) like any label."""
    config = small_config(stack, sparse_labels=False)
    raw = zarr.open_group(str(stack), mode="r")["volumes/raw"][:]
    seen = set()
    for _ in range(12):
        batch = _batch(config)
        seen.add(_locate(_sections(batch)[1], raw)[0])
        inside = batch[LABELLED].data[0, 0] == 1  # inside the volume: known
        assert np.all(batch[AFFS_WEIGHTS].data[0][:, 0][:, inside] > 0)
    assert len(seen) > 2  # not only the painted section


def test_augmentation_keeps_the_sections_aligned(tmp_path: Path):
    """One deformation for all sections: identical sections stay alike (only the
    per-section intensity differs)."""
    path = synthetic_stack(tmp_path / "same.zarr")
    root = zarr.open_group(str(path), mode="r+")
    same = np.repeat(root["volumes/raw"][PAINTED][None], SHAPE[0], axis=0)
    root["volumes/raw"][:] = same
    config = small_config(path, augment=True, seed=3)
    for _ in range(3):
        inputs = _batch(config)[RAW].data[0]
        for channel in (0, 2):
            correlation = np.corrcoef(inputs[1].ravel(), inputs[channel].ravel())[0, 1]
            assert correlation > 0.95


def test_config_and_model_checks(stack: Path, tmp_path: Path):
    assert output_shape_2d((44, 44), [(2, 2)]) == (28, 28)
    assert small_config(stack).network_output_shape == (28, 28)
    lsds, affs = SectionModel(5, 4, 2, 2, [(2, 2)])(torch.zeros(2, 5, 44, 44))
    assert lsds.shape == (2, 6, 1, 28, 28) and affs.shape == (2, 4, 1, 28, 28)
    with pytest.raises(ValueError, match=r"offset \[1, 0, 0\]: a 2D model predicts in-plane"):
        small_config(stack, neighborhood=[(1, 0, 0)])
    with pytest.raises(ValueError, match="does not divide"):
        small_config(stack, input_shape=(45, 44))
    blank = synthetic_stack(tmp_path / "blank.zarr", painted=())
    with pytest.raises(ConnectoError, match="no section of train_roi holds a label"):
        task_parts(small_config(blank), WorkerConfig(num_cache_workers=1), "train_config.toml")
    with pytest.raises(ConnectoError, match=r"key 'min_labelled_fraction' = 0.9: no output"):
        task_parts(small_config(stack, min_labelled_fraction=0.9, input_shape=(64, 64)),
                   WorkerConfig(), "c.toml")  # fmt: skip
    with pytest.raises(ConnectoError, match=r"key 'voxel_size' = \[10, 4, 4\] does not match"):
        task_parts(small_config(stack, voxel_size=(10, 4, 4)), WorkerConfig(), "c.toml")
    with pytest.raises(ConnectoError, match="key 'train_roi' .* not inside the raw volume"):
        task_parts(small_config(stack, train_roi=[[0, 0, 0], [400, 256, 260]]), WorkerConfig(),
                   "c.toml")  # fmt: skip


def test_sections_of_less_contrast_reach_the_network_alike(stack: Path, tmp_path: Path):
    """Each raw section stretched between its whole section's percentiles: a section of
    half the contrast gives the network (nearly) the same input, in training batches and
    in prediction alike (the same function of the same levels)."""
    from funlib.geometry import Roi

    from connecto.data.volumes import read_roi
    from connecto.tasks.section_contrast import volume_section_levels
    from connecto.tasks.segmentation_2d.predict import _network_input

    flat = synthetic_stack(tmp_path / "flat.zarr")
    root = zarr.open_group(str(flat), mode="r+")
    section = root["volumes/raw"][PAINTED - 1].astype(float)
    root["volumes/raw"][PAINTED - 1] = np.rint(64 + section / 2).astype(np.uint8)

    def batch(container: Path, **changes: object) -> np.ndarray:
        config = small_config(container, **changes)
        raw = open_raw(container, config.raw_dataset)
        labels = open_raw(config.labels_source, config.labels_dataset)
        sections = labelled_sections(labels, labels.roi, config.sparse_labels, (28, 28))
        pipeline = data_pipeline(config, raw, labels, sections.runs)
        request = batch_request(config, raw.voxel_size, predictions=False)
        request._random_seed = 7  # the same crop from both volumes
        with gp.build(pipeline):
            return pipeline.request_batch(request)[RAW].data[0]

    stretched = {"section_percentiles": (1.0, 99.0)}
    sharp, flattened = batch(stack, **stretched), batch(flat, **stretched)
    assert np.abs(flattened - sharp).max() < 0.05  # a few levels of uint8 rounding
    assert np.abs(batch(flat)[0] - batch(stack)[0]).max() > 0.3  # unstretched: unlike

    # prediction reads the same: locate the crop by its unstretched centre section
    raw = open_raw(flat, "volumes/raw")
    z, y, x = _locate(
        np.rint((batch(flat)[1] + 1) / 2 * 255).astype(np.uint8), np.asarray(raw.data)
    )
    read = Roi(((z - 1) * 40, y * 4, x * 4), (3 * 40, 44 * 4, 44 * 4))
    levels = volume_section_levels(raw, (1.0, 99.0))
    assert levels.shape == (2, SHAPE[0]) and levels[1, PAINTED - 1] < levels[1, PAINTED]
    predicted = _network_input(read_roi(raw, read), levels, read, raw)
    np.testing.assert_allclose(predicted, flattened, atol=1e-5)
