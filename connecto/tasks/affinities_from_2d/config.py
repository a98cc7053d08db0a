"""The train config of the 2D->3D network (`task = "affinities-from-2d"`): what its input
stack holds (it must match the 2D model whose predictions it will read), the 3D
affinities it predicts, the network, and how the synthetic training data look. It reads
no data: every sample is generated (see `connecto.tasks.affinities_from_2d.synthetic`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from connecto.config import PositiveInt, Shape3, TrainingSettings
from connecto.tasks.section_contrast import check_percentiles

NAME = "affinities-from-2d"
LSD_2D_CHANNELS = 6  # lsd's 2D descriptors: mean offset y, x; variance yy, xx; pearson; size

# what segmentation-2d predicts by default: nearest neighbours, then 9 and 27 pixels
DEFAULT_INPUT_OFFSETS: list[Shape3] = [
    (0, 1, 0), (0, 0, 1), (0, 9, 0), (0, 0, 9), (0, 27, 0), (0, 0, 27),
]  # fmt: skip

Rate = Annotated[float, Field(ge=0, le=1)]
NonNegative = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]


class AffinitiesFrom2dTrainConfig(TrainingSettings):
    """Stacked 2D predictions (in-plane affinities, optionally 2D LSDs) -> 3D affinities,
    trained on synthetic labels only."""

    task: Literal["affinities-from-2d"] = NAME
    voxel_size: Shape3 = Field(
        default=(40, 8, 8), description="nm (z, y, x) of the data the network will read"
    )
    # the input: what the 2D model predicts, channel order affinities then LSDs
    input_offsets: list[Shape3] = Field(
        default_factory=lambda: list(DEFAULT_INPUT_OFFSETS),
        min_length=1,
        description="in-plane affinity offsets (z = 0) of the 2D model, in its channel order",
    )
    input_lsds: bool = Field(default=True, description="the 6 2D LSDs follow the affinities")
    lsd_sigma: float = Field(default=80.0, gt=0, description="the 2D model's LSD sigma in nm")
    lsd_downsample: PositiveInt = 2
    section_percentiles: tuple[float, float] | None = Field(
        default=(1.0, 99.0),
        description="[low, high]: every section's input channels are stretched to [0, 1] "
        "between these percentiles, in training and prediction (2D models differ in "
        "calibration); none: inputs as they are",
    )
    # the target
    neighborhood: list[Shape3] = Field(
        default_factory=lambda: [(1, 0, 0), (0, 1, 0), (0, 0, 1)], min_length=1
    )
    grow_boundary: NonNegativeInt = Field(
        default=1, description="voxels of boundary between 3D labels (in-plane if anisotropic)"
    )
    # the network
    input_shape: Shape3 = (32, 92, 92)
    output_shape: Shape3 | None = Field(
        default=None, description="None: computed from input_shape (valid convolutions)"
    )
    fmaps: PositiveInt = 12
    fmap_inc_factor: PositiveInt = 5
    downsample_factors: list[Shape3] = Field(default_factory=lambda: [(1, 2, 2), (1, 2, 2)])
    batch_size: PositiveInt = 1
    learning_rate: float = Field(default=5e-5, gt=0)
    # synthetic labels (lengths in nm)
    neurite_diameter: tuple[Positive, Positive] = Field(
        default=(150.0, 400.0), description="[min, max] nm: each sample draws its neurites' width"
    )
    curvature: NonNegative = Field(default=1.5, description="radians per sqrt(µm) of bending")
    warp: NonNegative = Field(default=40.0, description="sd of the smooth boundary warp, nm")
    warp_spacing: float = Field(default=300.0, gt=0, description="nm between warp control points")
    # how the simulated 2D predictions err, drawn for each section on its own
    split_rate: Rate = Field(default=0.05, description="chance a label of a section is cut")
    merge_rate: Rate = Field(default=0.02, description="chance two touching labels are joined")
    shift_rate: Rate = Field(default=0.1, description="chance a label grows into neighbours")
    shift_max: NonNegativeInt = Field(default=2, description="pixels such a label grows at most")
    boundary_width: tuple[NonNegativeInt, NonNegativeInt] = Field(
        default=(1, 2),
        description="[min, max] pixels zeroed either side of a boundary (the 2D model's "
        "grow_boundary, default 1, and more)",
    )
    blur_sigma: NonNegative = Field(default=1.0, description="most in-plane blur, pixels")
    noise_std: NonNegative = Field(default=0.1, description="most gaussian noise sd")
    blob_strength: NonNegative = Field(
        default=1.0,
        description="most depth of the smooth blobs that lower affinities inside objects "
        "(false boundary evidence a briefly trained 2D model shows), drawn per section",
    )
    blob_size: float = Field(default=120.0, gt=0, description="nm between the blobs' centres")
    contrast: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.2, description="channel contrast factor in [1 - this, 1 + this]"
    )
    brightness: NonNegative = Field(default=0.1, description="channel shift in [-this, this]")
    missing_rate: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.05,
        description="probability that a section is blank in the raw (lost in cutting or "
        "imaging): its simulated 2D predictions are a near-constant field and the 3D "
        "target bridges it from the neighbouring sections",
    )

    @model_validator(mode="after")
    def _check(self) -> AffinitiesFrom2dTrainConfig:
        from connecto.tasks.segmentation.model import check_output_shape

        for offset in self.input_offsets:
            if offset[0] != 0 or offset == (0, 0, 0):
                raise ValueError(
                    f"input_offsets: {list(offset)} is not in-plane: 2D predictions have "
                    "offsets [0, y, x], not [0, 0, 0]"
                )
        if any(offset == (0, 0, 0) for offset in self.neighborhood):
            raise ValueError("neighborhood: [0, 0, 0] is no offset")
        check_percentiles(self.section_percentiles)
        for key in ("neurite_diameter", "boundary_width"):
            low, high = getattr(self, key)
            if low > high:
                raise ValueError(f"{key} [{low}, {high}]: the minimum exceeds the maximum")
        check_output_shape(self.input_shape, self.downsample_factors, self.output_shape)
        return self

    @property
    def network_output_shape(self) -> tuple[int, int, int]:
        from connecto.tasks.segmentation.model import output_shape

        return output_shape(self.input_shape, self.downsample_factors)  # type: ignore[return-value]

    @property
    def in_channels(self) -> int:
        """The input stack's channels: one per in-plane offset, then 6 LSDs."""
        return len(self.input_offsets) + (LSD_2D_CHANNELS if self.input_lsds else 0)

    @property
    def anisotropic(self) -> bool:
        """The network keeps z at every level: boundaries grow in-plane only."""
        return all(factors[0] == 1 for factors in self.downsample_factors)


TrainConfig = AffinitiesFrom2dTrainConfig
