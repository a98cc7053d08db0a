"""The train config of synapse detection (`task = "synapse-detection"`).

The input is the two synapse marker channels (presynaptic, postsynaptic) of a container in
the format `connecto data synthesize-barcodes --synapses N` writes; the targets are
rendered from the ground-truth synapses in MongoDB (`synapses_db`): a ball of
`synapse_radius_nm` around each synapse's centre (the midpoint of its pre and post side)
and the ball's outline. Shapes are voxels (z, y, x).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from connecto.config import PositiveInt, Shape3, TrainingSettings

NAME = "synapse-detection"
ROI_KEYS = ("train_roi", "validation_roi", "test_roi")


class SynapseDetectionTrainConfig(TrainingSettings):
    """Synapse mask and contour from the pre/post marker channels."""

    task: Literal["synapse-detection"] = "synapse-detection"
    container: str = Field(description="zarr with raw (markers appended) and labels")
    raw_dataset: str = "raw"
    marker_channels: tuple[int, int] | None = Field(
        default=None,
        description="[pre, post] channel indices of raw; None: the container's "
        "`marker_channels` attribute",
    )
    synapses_db: str = Field(description="database whose `synapses` hold the ground truth")
    synapses_volume: str | None = Field(
        default=None,
        description="the `volume` field of the ground-truth synapses; None: the container's "
        "absolute path (what synthesize-barcodes writes)",
    )
    segmentation_container: str | None = Field(
        default=None, description="segmentation that assigns detections to neurons; None: container"
    )
    segmentation_dataset: str = "labels"
    voxel_size: Shape3 | None = Field(
        default=None, description="[z, y, x] nm, checked against the data; None: the raw's"
    )
    train_roi: list[list[int]] | None = Field(
        default=None, description="[[z, y, x] offset nm, [z, y, x] shape nm]; None: all"
    )
    validation_roi: list[list[int]] | None = None
    test_roi: list[list[int]] | None = None
    synapse_radius_nm: float = Field(default=60.0, gt=0, description="radius of a target ball")
    contour_width: PositiveInt = Field(default=1, description="outline thickness in voxels")
    min_synapse_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.001,
        description="batches whose output holds a smaller share of synapse voxels are "
        "redrawn (with reject_probability); 0: keep every batch",
    )
    reject_probability: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.9, description="chance a batch below min_synapse_fraction is redrawn"
    )
    detection_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5,
        description="mask probability above which voxels form the stored detections "
        "(connected components); evaluation sweeps thresholds on the probabilities",
    )
    min_detection_voxels: PositiveInt = Field(default=3, description="smaller components dropped")
    split_by_contour: bool = Field(
        default=False,
        description="split components along the contour output: touching synapses' masks "
        "join, their outlines between them do not",
    )
    contour_threshold: Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5, description="contour probability above which a mask voxel is outline"
    )
    detection_score: Literal["max", "mean"] = "max"
    assign_radius_nm: float = Field(
        default=80.0, gt=0, description="neighbourhood around a detection that picks its neurons"
    )
    detections_db: str | None = Field(
        default=None, description="database of the detections; None: <synapses_db>_predictions"
    )
    input_shape: Shape3 = (84, 84, 84)  # 44^3 out
    output_shape: Shape3 | None = Field(
        default=None, description="None: computed from input_shape (valid convolutions)"
    )
    fmaps: PositiveInt = 12
    fmap_inc_factor: PositiveInt = 5
    downsample_factors: list[Shape3] = Field(default_factory=lambda: [(2, 2, 2), (2, 2, 2)])
    batch_size: PositiveInt = 2
    learning_rate: float = Field(default=5e-5, gt=0)

    @model_validator(mode="after")
    def _check(self) -> SynapseDetectionTrainConfig:
        from connecto.tasks.segmentation.model import check_output_shape

        check_output_shape(self.input_shape, self.downsample_factors, self.output_shape)
        for key in ROI_KEYS:
            value = getattr(self, key)
            if value is not None and (len(value) != 2 or any(len(p) != 3 for p in value)):
                raise ValueError(f"{key} must be [[z, y, x] offset, [z, y, x] shape] in nm")
        if self.marker_channels is not None and (
            min(self.marker_channels) < 0 or self.marker_channels[0] == self.marker_channels[1]
        ):
            raise ValueError("marker_channels must be two different channel indices >= 0")
        return self

    @property
    def network_output_shape(self) -> tuple[int, int, int]:
        from connecto.tasks.segmentation.model import output_shape

        return output_shape(self.input_shape, self.downsample_factors)  # type: ignore[return-value]

    @property
    def detections_database(self) -> str:
        return self.detections_db or f"{self.synapses_db}_predictions"

    @property
    def segmentation_source(self) -> str:
        return self.segmentation_container or self.container


TrainConfig = SynapseDetectionTrainConfig
