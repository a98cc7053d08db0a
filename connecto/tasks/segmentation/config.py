"""The configs of neuron segmentation: `train_config.toml` (`SegmentationTrainConfig`,
MTLSD training) and `segment_config.toml` (`SegmentConfig`, what `connecto segment`
reads; relative paths are relative to the config file's directory, which also holds the
logs and lookup tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from funlib.geometry import Roi
from pydantic import Field, model_validator

from connecto.config import ConfigModel, PositiveInt, Shape3, TrainingSettings, load_config
from connecto.postprocess.agglomerate import MERGE_FUNCTIONS

NonNegativeInt = Annotated[int, Field(ge=0)]
MergeFunction = Literal[tuple(MERGE_FUNCTIONS)]  # type: ignore[valid-type]

NAME = "segmentation"
STEPS = ("predict", "fragments", "agglomerate", "extract", "evaluate")
CONFIG_NAME = "segment_config.toml"


class SegmentationTrainConfig(TrainingSettings):
    """Affinities + LSDs (MTLSD) training; the segmentation pipeline reads it."""

    task: Literal["segmentation"] = "segmentation"
    raw_container: str
    raw_dataset: str = "volumes/raw"
    labels_container: str | None = Field(
        default=None, description="zarr/N5 with the labels; None: raw_container"
    )
    labels_dataset: str = "volumes/labels/neuron_ids"
    unlabelled_container: str | None = Field(
        default=None, description="zarr/N5 with the unlabelled mask; None: labels_container"
    )
    unlabelled_dataset: str | None = None
    sparse_labels: bool = Field(
        default=False,
        description="0 in the labels is unlabelled, not background: train only where "
        "labels > 0 (affinities only between two labelled voxels); excludes unlabelled_dataset",
    )
    unlabelled_edges: Literal["ignored", "boundary"] = Field(
        default="ignored",
        description="with sparse_labels, a pair from a labelled to an unlabelled voxel: "
        "'ignored' (a labelled object may go on unlabelled, as in painted disks) or 'boundary' "
        "(every labelled object is whole, as segments kept for pseudo ground truth are: its "
        "rim trains as a boundary, as in the sparsity paper's pipelines)",
    )
    min_labelled_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="reject and resample batches whose output region has a smaller labelled "
        "fraction (needs sparse_labels or unlabelled_dataset); 0: keep every batch",
    )
    in_channels: PositiveInt = Field(
        default=1,
        description="raw channels: 1 for (z, y, x) EM; C for a (C, z, y, x) multi-channel "
        "raw (e.g. barcoded light microscopy, raw or enhanced); each channel is normalised by "
        "its dtype as single-channel raw is, and intensity-augmented on its own",
    )
    voxel_size: Shape3 = (10, 10, 10)
    train_roi: list[list[int]] | None = Field(
        default=None, description="[[z, y, x] offset nm, [z, y, x] shape nm]"
    )
    validation_roi: list[list[int]] | None = None
    test_roi: list[list[int]] | None = None
    neighborhood: list[Shape3] = Field(default_factory=lambda: [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    lsds: bool = True
    lsd_sigma: float = Field(default=80.0, gt=0, description="LSD gaussian sigma in nm")
    input_shape: Shape3 = (76, 76, 76)
    output_shape: Shape3 | None = Field(
        default=None, description="None: computed from input_shape (valid convolutions)"
    )
    fmaps: PositiveInt = 12
    fmap_inc_factor: PositiveInt = 5
    downsample_factors: list[Shape3] = Field(default_factory=lambda: [(2, 2, 2), (2, 2, 2)])
    grow_boundary: Annotated[int, Field(ge=0)] = 1
    batch_size: PositiveInt = 1
    learning_rate: float = Field(default=5e-5, gt=0)
    channel_augment: dict[str, Any] | None = Field(
        default=None,
        description="multi-channel raw: the channel augmentations (shuffle, zero, duplicate, "
        "intensity, blur, defects) run when augment = true, as a `[channel_augment]` table "
        "of connecto.tasks.channel_augment.ChannelAugmentConfig's keys (empty: its "
        "defaults); None: off",
    )

    @model_validator(mode="after")
    def _check_channel_augment(self) -> SegmentationTrainConfig:
        if self.channel_augment is not None:
            # checked here, imported late: the augment nodes load gunpowder, and this
            # module is read by the CLI at startup
            from pydantic import ValidationError

            from connecto.tasks.channel_augment import ChannelAugmentConfig

            try:
                ChannelAugmentConfig.model_validate(self.channel_augment)
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"channel_augment.{where}: {first['msg']}") from None
        return self

    @model_validator(mode="after")
    def _check_shapes(self) -> SegmentationTrainConfig:
        from connecto.tasks.segmentation.model import check_output_shape

        check_output_shape(self.input_shape, self.downsample_factors, self.output_shape)
        rois = {k: getattr(self, k) for k in ("train_roi", "validation_roi", "test_roi")}
        given = {k: v for k, v in rois.items() if v is not None}
        for key, value in given.items():
            if len(value) != 2 or any(len(part) != 3 for part in value):
                raise ValueError(f"{key} must be [[z, y, x] offset, [z, y, x] shape] in nm")
        names = list(given)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                (a0, ashape), (b0, bshape) = given[first], given[second]
                if all(a < b + bs and b < a + as_ for a, as_, b, bs in
                       zip(a0, ashape, b0, bshape, strict=True)):  # fmt: skip
                    raise ValueError(f"{first} and {second} overlap: they must be disjoint")
        return self

    @model_validator(mode="after")
    def _check_sparse(self) -> SegmentationTrainConfig:
        # two masks would need a rule for combining them; one source of truth is clearer
        if self.sparse_labels and self.unlabelled_dataset:
            raise ValueError(
                "sparse_labels = true derives the unlabelled mask from labels > 0; "
                f"unset unlabelled_dataset ({self.unlabelled_dataset!r}) or sparse_labels"
            )
        if self.min_labelled_fraction > 0 and not self.has_mask:
            raise ValueError(
                f"min_labelled_fraction = {self.min_labelled_fraction:g} needs a mask: set "
                "sparse_labels = true (0 in the labels is unlabelled) or unlabelled_dataset"
            )
        return self

    @property
    def has_mask(self) -> bool:
        """Whether training masks unlabelled voxels (derived or read)."""
        return self.sparse_labels or self.unlabelled_dataset is not None

    @property
    def labels_source(self) -> str:
        return self.labels_container or self.raw_container

    @property
    def unlabelled_source(self) -> str:
        return self.unlabelled_container or self.labels_source

    @property
    def network_output_shape(self) -> tuple[int, int, int]:
        from connecto.tasks.segmentation.model import output_shape

        return output_shape(self.input_shape, self.downsample_factors)  # type: ignore[return-value]


TrainConfig = SegmentationTrainConfig


class SegmentConfig(ConfigModel):
    """Blockwise prediction, fragments, agglomeration, extraction and evaluation."""

    # inputs
    raw_container: str | None = Field(default=None, description="zarr/N5 with raw (predict)")
    raw_dataset: str = "volumes/raw"
    labels_container: str | None = Field(
        default=None, description="ground truth (zarr, N5 or HDF5) for evaluate/gt-affinities"
    )
    labels_dataset: str = "volumes/labels/neuron_ids"
    checkpoint: str | None = Field(default=None, description="model_checkpoint_<it> (predict)")
    # outputs
    output_container: str = "segment.zarr"
    affs_dataset: str = "affs"
    lsds_dataset: str = "lsds"
    fragments_dataset: str = "fragments"
    segmentation_dataset: str = "segmentation"
    roi: list[list[int]] | None = Field(
        default=None,
        description="[[z, y, x] offset nm, [z, y, x] shape nm]; None: all. The region "
        "evaluate reports (the test region)",
    )
    validation_roi: list[list[int]] | None = Field(
        default=None,
        description="[[z, y, x] offset nm, [z, y, x] shape nm], disjoint from roi: evaluate "
        "chooses the threshold here (lowest VOI) and reports roi at that threshold",
    )
    # blockwise processing
    neighborhood: list[Shape3] = Field(default_factory=lambda: [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
    block_size: Shape3 = (64, 64, 64)
    context: Shape3 = (8, 8, 8)
    num_workers: PositiveInt = 2
    # fragments: the LSD pipeline's watershed on the boundary distance (see
    # connecto.postprocess.fragments), or mutex watershed on affinities + bias
    fragments_method: Literal["watershed", "mutex_watershed"] = "watershed"
    min_seed_distance: PositiveInt = Field(
        default=4, description="voxels between watershed seeds (maxima of the boundary distance)"
    )
    boundary_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5, description="mean nearest-neighbour affinity above which a voxel is inside"
    )
    fragments_in_xy: bool = Field(
        default=False, description="2D fragments per section (anisotropic data)"
    )
    watershed_boundary_weight: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.9,
        description="share of the boundary map (1 - mean nearest affinity) in the height "
        "map the watershed floods, the rest being the negated boundary distance: 0 is the "
        "LSD pipeline (basins meet halfway between seeds), higher lets them meet on the "
        "membranes (0.9 measured better on degraded and predicted affinities)",
    )
    epsilon_agglomerate: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0, description="merge fragments inside each block below this score first"
    )
    min_fragment_size: NonNegativeInt = Field(
        default=0, description="voxels; smaller fragments join their nearest neighbour"
    )
    # mutex watershed: bias added to the affinities (negative: prefer splitting)
    fragments_bias: Annotated[float, Field(ge=-1, le=0)] = -0.5
    long_range_bias: Annotated[float, Field(ge=-1, le=0)] = Field(
        default=-0.8, description="bias of the long-range channels (offsets beyond one voxel)"
    )
    # the segment graph
    db_name: str = "connecto_segments"
    graph: str = Field(default="segment", description="collection prefix: one graph per volume")
    merge_function: MergeFunction = Field(
        default="mean",
        description="mean: hierarchical agglomeration by mean boundary affinity over the "
        "whole graph (exact); hist_quant_<q>: waterz per block with context (LSD)",
    )
    agglomeration: Literal["connected_components", "mutex_watershed"] = Field(
        default="connected_components",
        description="merge below the threshold (components), or mutex watershed on "
        "threshold - merge_score (edges above the threshold keep segments apart)",
    )
    thresholds: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)], min_length=1
    )
    # feature-aware agglomeration (barcodes, embeddings): see connecto.postprocess.features
    features_container: str | None = Field(
        default=None,
        description="zarr/N5 with a (C, z, y, x) feature volume (e.g. enhanced barcodes) on "
        "the fragments' voxel grid: the agglomerate step stores each fragment's mean on its "
        "graph node and extract scores edges by affinity and feature distance; None: "
        "affinities only",
    )
    features_dataset: str = "enhanced"
    feature_distance: Literal["cosine", "euclidean"] = Field(
        default="cosine", description="distance of two regions' mean features"
    )
    affinity_weight: Annotated[float, Field(ge=0)] = Field(
        default=0.5, description="edge score = affinity_weight * (1 - affinity) + ..."
    )
    feature_weight: Annotated[float, Field(ge=0)] = Field(
        default=0.5, description="... + feature_weight * feature distance + feature_bias"
    )
    feature_bias: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        if self.features_container is not None and self.affinity_weight + self.feature_weight == 0:
            raise ValueError("affinity_weight and feature_weight are both 0: nothing scores edges")
        for key in ("roi", "validation_roi"):
            value = getattr(self, key)
            if value is not None and (len(value) != 2 or any(len(r) != 3 for r in value)):
                raise ValueError(f"{key} must be [[z, y, x] offset, [z, y, x] shape] in nm")
        if self.validation_roi is not None:
            if self.roi is None:
                raise ValueError(
                    "validation_roi needs roi (the test region, disjoint from it): "
                    "without roi the whole volume, validation included, is evaluated"
                )
            if self.test_region.intersects(self.validation_region):  # type: ignore[union-attr]
                raise ValueError(
                    f"roi {self.roi} and validation_roi {self.validation_roi} overlap: "
                    "they must be disjoint"
                )
        if len(set(self.thresholds)) != len(self.thresholds):
            raise ValueError(f"thresholds {self.thresholds} has duplicates")
        return self

    @property
    def test_region(self) -> Roi | None:
        """`roi`: the region evaluate reports (None: all of the segmentation)."""
        return None if self.roi is None else Roi(self.roi[0], self.roi[1])

    @property
    def validation_region(self) -> Roi | None:
        if self.validation_roi is None:
            return None
        return Roi(self.validation_roi[0], self.validation_roi[1])

    @property
    def total_roi(self) -> Roi | None:
        """The region every step processes: `roi`, with `validation_roi` the box around
        both (one segmentation, thresholds chosen on one part and reported on the other)."""
        test, validation = self.test_region, self.validation_region
        if test is None or validation is None:
            return test
        return test.union(validation)

    @property
    def prefix(self) -> str:
        return f"{self.graph}_"


def load_segment_config(path: Path) -> tuple[SegmentConfig, Path]:
    """The config with its relative paths made absolute, and its directory."""
    path = path.resolve()
    config = load_config(path, SegmentConfig)
    base = path.parent
    for key in ("raw_container", "labels_container", "checkpoint", "output_container",
                "features_container"):  # fmt: skip
        value = getattr(config, key)
        if value is not None:
            setattr(config, key, str(base / value))  # an absolute value stays as it is
    return config, base
