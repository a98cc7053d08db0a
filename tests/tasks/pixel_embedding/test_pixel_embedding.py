"""Pixel embedding: PRISM's contrastive loss (its optimum, its mask), the batches' labels,
a short training through the real driver with a prediction through `connecto predict`
(unit-norm embeddings), and a tiny `connecto segment` run whose embeddings keep two
touching objects apart."""

from __future__ import annotations

from pathlib import Path

import gunpowder as gp
import numpy as np
import pytest
import torch
import zarr
from funlib.geometry import Coordinate, Roi
from funlib.persistence import open_ds, prepare_ds

from connecto import ConnectoError
from connecto.config import WorkerConfig, write_config
from connecto.data.barcodes import BarcodeParameters, synthesize_barcodes
from connecto.data.ingest import create_volume
from connecto.experiment import TrainSetup
from connecto.postprocess.blockwise import apply_lut
from connecto.tasks import load_train_config
from connecto.tasks.pixel_embedding.config import PixelEmbeddingTrainConfig
from connecto.tasks.pixel_embedding.model import ContrastiveEmbeddingLoss
from connecto.tasks.pixel_embedding.pipeline import (
    LABELLED,
    LABELS,
    RAW,
    batch_request,
    data_pipeline,
    open_embedding_data,
)
from connecto.tasks.pixel_embedding.segment import (
    embedding_affinities,
    make_embedding_affinities,
    segment_from_embeddings,
)
from connecto.tasks.segmentation.config import load_segment_config
from connecto.tasks.segmentation.steps import open_graph, open_volume
from connecto.tasks.segmentation.workflow import lookup_table, read_edge_scores
from connecto.train import train
from tests.conftest import run_connecto
from tests.tasks.prism_fixtures import neuron_labels

VOXEL_SIZE = (10, 10, 10)
CHANNELS = 4
SMALL = {"input_shape": (24, 24, 24), "downsample_factors": [(2, 2, 2)], "fmaps": 2,
         "fmap_inc_factor": 2, "embedding_dims": 6, "head_fmaps": 8, "head_layers": 1,
         "in_channels": CHANNELS}  # fmt: skip  # 8^3 out


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barcoded container from the generator, over Voronoi neurons; the truth of the
    first 50 nm in x is marked unknown."""
    labels = neuron_labels((24, 40, 40), 12, np.random.default_rng(0))
    path = tmp_path_factory.mktemp("embedding") / "barcodes.zarr"
    params = BarcodeParameters(channels=CHANNELS, min_channels_on=1, max_channels_on=2, synapses=0)
    synthesize_barcodes(labels, VOXEL_SIZE, params, path)
    unlabelled = zarr.open_array(str(path / "unlabelled"), mode="r+")
    unlabelled[:, :, :5] = 0
    return path


def small_config(container: Path, **values: object) -> PixelEmbeddingTrainConfig:
    defaults = {
        "container": str(container), "train_roi": [[0, 0, 0], [240, 400, 200]],
        "validation_roi": [[0, 0, 200], [240, 400, 200]], "seed": 0, **SMALL,
    }  # fmt: skip
    return PixelEmbeddingTrainConfig(**{**defaults, **values})


# ---------------------------------------------------------------- the loss


def four_objects() -> torch.Tensor:
    """Labels (2, 4, 6, 8): four objects in two samples, background in between."""
    labels = torch.zeros(2, 4, 6, 8, dtype=torch.int64)
    labels[0, :, :, :3], labels[0, :, :, 5:] = 1, 2
    labels[1, :, :, :3], labels[1, :, :, 5:] = 3, 4
    return labels


def test_separated_unit_embeddings_score_lower_than_random_ones():
    labels = four_objects()
    generator = torch.Generator().manual_seed(0)
    loss = ContrastiveEmbeddingLoss(temperature=2.0)
    random = torch.nn.functional.normalize(torch.randn(2, 8, 4, 6, 8, generator=generator), dim=1)
    separated = random.clone()  # background keeps its random vectors: it does not count
    vectors = separated.movedim(1, -1)  # a view: (b, z, y, x, D)
    for label in range(1, 5):  # one axis per object: identical inside, orthogonal means
        vectors[labels == label] = torch.eye(8)[label]
    collapsed = torch.zeros_like(random)
    collapsed[:, 0] = 1  # every voxel the same vector: intra perfect, uniformity worst
    terms = loss.terms(separated, labels)
    assert terms["intra"].item() == pytest.approx(1.0)
    assert terms["uniformity"].item() == pytest.approx(0.0, abs=1e-6)  # orthogonal means
    assert terms["norm"].item() == pytest.approx(0.0, abs=1e-12)
    assert int(terms["objects"]) == 4
    assert loss(separated, labels) < loss(random, labels)
    assert loss(separated, labels) < loss(collapsed, labels)
    assert loss.terms(collapsed, labels)["uniformity"].item() == pytest.approx(1.0)
    # the regulariser, a mean over voxels and dimensions: twice the length, same directions
    assert loss.terms(2 * separated, labels)["norm"].item() == pytest.approx(1 / 8)


def test_gradients_flow_only_from_labelled_voxels():
    labels = four_objects()
    mask = torch.ones_like(labels)
    mask[1, :2] = 0  # truth unknown in part of object 3 and 4
    generator = torch.Generator().manual_seed(1)
    embedding = torch.randn(2, 8, 4, 6, 8, generator=generator, requires_grad=True)
    loss = ContrastiveEmbeddingLoss()
    value = loss(embedding, labels, mask)
    value.backward()
    ignored = ((labels == 0) | (mask == 0)).unsqueeze(1).expand_as(embedding)
    assert embedding.grad is not None
    assert torch.all(embedding.grad[ignored] == 0)
    assert torch.all(embedding.grad.abs().sum(dim=1)[~ignored[:, 0]] > 0)
    # numerically too: any change at ignored voxels leaves the loss as it is
    changed = embedding.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum()), generator=generator) * 10
    assert torch.equal(loss(changed, labels, mask), value.detach())
    # a batch without objects: loss 0, and still a graph to step through
    nothing = loss(embedding, torch.zeros_like(labels))
    assert nothing.item() == 0 and nothing.requires_grad


# ---------------------------------------------------------------- training, prediction


def test_batches_hold_labels_only_where_the_truth_is_known(container: Path):
    # a training region of the output's size: one place to draw from
    config = small_config(container, augment=False, train_roi=[[0, 0, 0], [80, 80, 80]])
    pipeline = data_pipeline(config, open_embedding_data(config, "test"))
    request = batch_request(config, Coordinate(VOXEL_SIZE), predictions=False)
    expected = open_ds(str(container / "labels")).to_ndarray(Roi((0, 0, 0), (80, 80, 80)))
    expected = expected.astype(np.int64)
    expected[:, :, :5] = 0  # the truth is unknown at x < 5 voxels
    with gp.build(pipeline):
        batch = pipeline.request_batch(request)
    labels = batch[LABELS].data[0]
    assert batch[RAW].data.shape == (1, CHANNELS, 24, 24, 24)
    assert labels.dtype == np.int64 and np.array_equal(labels, expected)
    assert np.array_equal(batch[LABELLED].data[0], (expected != 0).astype(np.uint8))
    with pytest.raises(ConnectoError, match="in_channels"):
        open_embedding_data(small_config(container, in_channels=18), "train_config.toml")


def test_training_through_the_driver_and_a_unit_norm_prediction(
    container: Path, tmp_path: Path, tracking_db: object
):
    config = small_config(container, save_every=2, snapshot_every=2, log_every=1)
    setup = TrainSetup(tmp_path, "prism", 0)
    setup.path.mkdir(parents=True)
    write_config(setup.path / "train_config.toml", config)
    write_config(setup.path / "worker_config.toml", WorkerConfig(num_cpus=1, num_cache_workers=1))
    assert load_train_config(setup.path / "train_config.toml").task == "pixel-embedding"
    result = train(setup, 2, progress=False, device="cpu")
    assert result.last_loss is not None and np.isfinite(result.last_loss)
    assert setup.checkpoints() == [2]
    snapshot = zarr.open_group(str(setup.snapshot_dir / "batch_2.zarr"), mode="r")
    assert snapshot["embedding"].shape == (1, 6, 8, 8, 8)
    assert snapshot["labels"].shape == (1, 8, 8, 8)

    predicted = run_connecto("predict", "--split", "validation", cwd=setup.path)
    assert predicted.returncode == 0, predicted.stderr
    out = tmp_path / "prism" / "03_predict" / "pixel-embedding_t0_validation_2.zarr"
    assert str(out) in predicted.stdout
    embedding = open_volume(out, "embedding")  # as `connecto segment` opens features
    assert embedding.roi == Roi((0, 0, 200), (240, 400, 200)) and embedding.shape[0] == 6
    values = embedding.to_ndarray(embedding.roi)
    assert values.dtype == np.float32
    assert np.allclose(np.linalg.norm(values, axis=0), 1.0, atol=1e-4)


# ---------------------------------------------------------------- segmentation

SHAPE = (8, 8, 64)  # four boxes of 16 voxels along x: object A = x < 32, B = x >= 32
BAND = {16: 0.4, 32: 0.7, 48: 0.4}  # affinities across each box boundary


def write_embedding_volumes(directory: Path) -> None:
    """Labels (A, B), affinities with a weak boundary inside each object and a leaky one
    between them (affinities alone merge A and B before they join either's halves), and
    6-dimensional unit embeddings: A's and B's directions orthogonal (what the uniformity
    term drives object means to), with noise."""
    labels = np.ones(SHAPE, dtype=np.uint64)
    labels[..., 32:] = 2
    root = zarr.open_group(str(directory / "data.zarr"), mode="w")
    create_volume(root, "labels", SHAPE, np.uint64, VOXEL_SIZE, (0, 0, 0))[:] = labels
    rng = np.random.default_rng(0)
    directions = np.zeros((3, 6), dtype=np.float32)
    directions[1, 0] = directions[2, 1] = 1
    vectors = directions[labels.astype(np.int64)].transpose(3, 0, 1, 2)
    vectors = vectors + rng.normal(0, 0.05, vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=0)
    embedding = prepare_ds(
        directory / "data.zarr" / "embedding", shape=vectors.shape, offset=(0, 0, 0),
        voxel_size=VOXEL_SIZE, axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        dtype=np.float32, mode="w",
    )  # fmt: skip
    embedding[embedding.roi] = vectors
    affs = np.full((3, *SHAPE), 255, dtype=np.uint8)
    for x, value in BAND.items():
        affs[:, :, :, x - 2 : x + 1] = round(value * 255)
    out = prepare_ds(
        directory / "segment.zarr" / "affs", shape=affs.shape, offset=(0, 0, 0),
        voxel_size=VOXEL_SIZE, axis_names=["c^", "z", "y", "x"], units=["nm"] * 3,
        dtype=np.uint8, mode="w",
    )  # fmt: skip
    out._source_data.attrs["neighborhood"] = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    out[out.roi] = affs


def segment_config(directory: Path, db_name: str, output: str, graph: str) -> Path:
    path = directory / f"{graph}.toml"
    path.write_text(
        f'output_container = "{directory / output}"\nblock_size = [8, 8, 32]\n'
        f'context = [2, 2, 2]\nnum_workers = 1\ndb_name = "{db_name}"\ngraph = "{graph}"\n'
        'boundary_threshold = 0.95\nmin_seed_distance = 4\nmerge_function = "mean"\n'
        f'thresholds = [0.5]\nfeatures_container = "{directory / "data.zarr"}"\n'
        'features_dataset = "embedding"\nfeature_distance = "cosine"\n'
        "affinity_weight = 0.5\nfeature_weight = 0.5\n"
        f'labels_container = "{directory / "data.zarr"}"\nlabels_dataset = "labels"\n'
    )
    return path


def box_segments(segmentation: np.ndarray) -> list[int]:
    """The segment of each box's core (one id over it, else the test fails)."""
    cores = [segmentation[..., x : x + 12] for x in (2, 18, 34, 50)]
    assert all(np.unique(core).size == 1 for core in cores)
    return [int(core.ravel()[0]) for core in cores]


def test_embedding_affinities_are_cosine_similarities_of_neighbours():
    embedding = np.zeros((2, 1, 1, 5), dtype=np.float32)
    embedding[0, ..., :3] = 1  # x 0..2 along axis 0, then x 3..4 along axis 1
    embedding[1, ..., 3:] = 2  # the length does not matter
    affs = embedding_affinities(np.pad(embedding, [(0, 0), (1, 1), (1, 1), (1, 1)]),
                                [(0, 0, 1), (0, 0, -1)], (1, 1, 1))  # fmt: skip
    assert np.allclose(affs[0, 0, 0], [1, 1, 0, 1, 0])  # x+1 of the last voxel: outside
    assert np.allclose(affs[1, 0, 0], [0, 1, 1, 0, 1])


def test_segment_with_embeddings_separates_touching_objects(tmp_path: Path, db_name: str):
    write_embedding_volumes(tmp_path)
    # affinities of a network + fragments' mean embeddings
    config = segment_config(tmp_path, db_name, "segment.zarr", "embeddings")
    report = segment_from_embeddings(config)
    assert any("mean features (6 channels)" in step.detail for step in report.steps)
    result = open_ds(tmp_path / "segment.zarr" / "segmentation" / "threshold_0.5")
    a1, a2, b1, b2 = box_segments(result.to_ndarray(result.roi))
    assert a1 == a2 and b1 == b2 and a1 != b1
    assert report.best is not None and report.best.scores.voi < 0.1
    loaded, _ = load_segment_config(config)
    # the same graph by affinities alone joins the objects across the leaky boundary
    plain = lookup_table(read_edge_scores(open_graph(loaded), "mean"), 0.5)
    fragments = open_ds(tmp_path / "segment.zarr" / "fragments")
    p1, p2, p3, p4 = box_segments(apply_lut(fragments.to_ndarray(fragments.roi), plain))
    assert p2 == p3 and p1 != p2 and p4 != p3

    # no affinity network: affinities from the embeddings themselves
    alone = segment_config(tmp_path, db_name, "alone.zarr", "embeddings_alone")
    report = segment_from_embeddings(alone, affinities_from_embeddings=True)
    assert report.steps[0].step == "embedding-affinities"
    result = open_ds(tmp_path / "alone.zarr" / "segmentation" / "threshold_0.5")
    segmentation = result.to_ndarray(result.roi)
    a1, a2, b1, b2 = box_segments(segmentation)
    assert a1 == a2 and b1 == b2 and a1 != b1
    assert np.unique(segmentation).size == 2
    again = make_embedding_affinities(alone)  # `connecto segment`'s way: kept unless overwrite
    assert again.steps[0].skipped

    without = tmp_path / "without.toml"
    without.write_text(f'output_container = "{tmp_path / "x.zarr"}"\n')
    with pytest.raises(ConnectoError, match="features_container"):
        segment_from_embeddings(without)
