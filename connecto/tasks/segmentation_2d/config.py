"""The train config of 2D segmentation (`task = "segmentation-2d"`).

Shapes are in-plane (y, x) voxels; the z axis is sections: the network reads the sections
z - context_sections .. z + context_sections as channels and predicts section z.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from connecto import ConnectoError
from connecto.config import PositiveInt, Shape3, TrainingSettings
from connecto.tasks.section_contrast import check_percentiles

NAME = "segmentation-2d"
Shape2 = tuple[int, int]

# In-plane offsets (z, y, x): nearest neighbours, then two long ranges, as bootstrapper's
# 2D models (the sparsity paper's continuation) use 1, 9 and 27 voxels. Positive, as the
# segmentation task's, so the stacked predictions read like its 3D affinities.
DEFAULT_NEIGHBORHOOD: list[Shape3] = [
    (0, 1, 0), (0, 0, 1), (0, 9, 0), (0, 0, 9), (0, 27, 0), (0, 0, 27),
]  # fmt: skip


class Segmentation2dTrainConfig(TrainingSettings):
    """In-plane affinities + 2D LSDs of single sections, from a stack of sections."""

    task: Literal["segmentation-2d"] = "segmentation-2d"
    raw_container: str
    raw_dataset: str = "volumes/raw"
    labels_container: str | None = Field(
        default=None, description="zarr/N5 with the labels; None: raw_container"
    )
    labels_dataset: str = "volumes/labels/neuron_ids"
    voxel_size: Shape3 | None = Field(
        default=None, description="[z, y, x] nm, checked against the data; None: the raw's"
    )
    train_roi: list[list[int]] | None = Field(
        default=None, description="[[z, y, x] offset nm, [z, y, x] shape nm]; None: labels"
    )
    sparse_labels: bool = Field(
        default=True,
        description="label 0 is unlabelled (train only where painted, only on sections with "
        "labels); false: 0 is background and every section of train_roi is labelled",
    )
    min_labelled_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.05, description="batches whose output has fewer labelled voxels are redrawn"
    )
    section_percentiles: tuple[float, float] | None = Field(
        default=None,
        description="[low, high]: every raw section is stretched to [0, 1] between these "
        "percentiles of the whole section, in training and prediction (for sections that "
        "differ in contrast); none: raw as it is",
    )
    context_sections: Annotated[int, Field(ge=0)] = Field(
        default=1, description="k: sections z-k..z+k are the input channels"
    )
    neighborhood: list[Shape3] = Field(
        default_factory=lambda: list(DEFAULT_NEIGHBORHOOD), min_length=1
    )
    lsds: bool = True
    lsd_sigma: float = Field(default=80.0, gt=0, description="2D LSD gaussian sigma in nm")
    lsd_downsample: PositiveInt = Field(
        default=2, description="LSD statistics on labels downsampled by this (speed)"
    )
    input_shape: Shape2 = (196, 196)
    output_shape: Shape2 | None = Field(
        default=None, description="None: computed from input_shape (valid convolutions)"
    )
    fmaps: PositiveInt = 12
    fmap_inc_factor: PositiveInt = 5
    downsample_factors: list[Shape2] = Field(default_factory=lambda: [(2, 2), (2, 2)])
    grow_boundary: Annotated[int, Field(ge=0)] = 1
    batch_size: PositiveInt = 4

    @model_validator(mode="after")
    def _check(self) -> Segmentation2dTrainConfig:
        from connecto.tasks.segmentation.model import check_output_shape
        from connecto.tasks.segmentation_2d.model import output_shape_2d

        try:
            output_shape_2d(self.input_shape, self.downsample_factors)  # (y, x) pairs
        except ConnectoError as error:
            raise ValueError(str(error)) from None
        check_output_shape(self.input_shape, self.downsample_factors, self.output_shape)
        for offset in self.neighborhood:
            if offset[0] != 0 or offset == (0, 0, 0):
                raise ValueError(
                    f"neighborhood offset {list(offset)}: a 2D model predicts in-plane "
                    "affinities only, [0, y, x] with y or x not 0"
                )
        check_percentiles(self.section_percentiles)
        roi = self.train_roi
        if roi is not None and (len(roi) != 2 or any(len(part) != 3 for part in roi)):
            raise ValueError("train_roi must be [[z, y, x] offset, [z, y, x] shape] in nm")
        return self

    @property
    def labels_source(self) -> str:
        return self.labels_container or self.raw_container

    @property
    def in_channels(self) -> int:
        return 2 * self.context_sections + 1

    @property
    def network_output_shape(self) -> Shape2:
        from connecto.tasks.segmentation_2d.model import output_shape_2d

        return output_shape_2d(self.input_shape, self.downsample_factors)


TrainConfig = Segmentation2dTrainConfig
