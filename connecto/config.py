"""Experiment configuration: pydantic models, TOML files, synister INI files.

A setup directory holds `train_config.toml` (or synister's `train_config.ini`),
`worker_config.toml` (`worker_config.ini`) and, for prediction, `predict_config.toml`
(`predict_config.ini`). Every error names the file, the key, the bad value and what was
expected.
"""

from __future__ import annotations

import ast
import configparser
import math
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from connecto import ConnectoError
from connecto.names import check_name

Task = Literal["synapse-classification", "segmentation"]
SplitPart = Literal["train", "validation", "test"]
Shape3 = tuple[int, int, int]
PositiveInt = Annotated[int, Field(gt=0)]


def _data_database_name(value: str) -> str:
    """A data database name whose `<name>_predictions` twin is a valid name as well."""
    from connecto.db.predictions import predictions_database_name

    check_name("database name", value)
    check_name("database name", predictions_database_name(value))
    return value


DataDatabaseName = Annotated[str, AfterValidator(_data_database_name)]
SplitName = Annotated[str, AfterValidator(lambda value: check_name("split name", value))]
ExperimentName = Annotated[str, AfterValidator(lambda value: check_name("experiment name", value))]


class ConfigModel(BaseModel):
    # allow_inf_nan=False: `learning_rate = inf` (or nan) is refused, naming the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class WorkerConfig(ConfigModel):
    """Where and how a job runs (synister's `[Worker]`)."""

    launcher: Literal["local", "docker", "apptainer"] | None = Field(
        default=None, description="None: the `launcher` setting"
    )
    scheduler: Literal["none", "slurm", "lsf"] | None = Field(
        default=None, description="None: the `scheduler` setting"
    )
    container: str | None = Field(default=None, description="docker image or apptainer .sif")
    queue: str | None = Field(default=None, description="SLURM partition or LSF queue")
    num_cpus: PositiveInt = 5
    num_gpus: Annotated[int, Field(ge=0)] = 1
    memory_gb: PositiveInt | None = None
    time_limit: str | None = Field(default=None, description="e.g. 48:00:00")
    num_block_workers: PositiveInt = 1
    num_cache_workers: PositiveInt = 5
    mount_dirs: list[str] = Field(default_factory=list)


class SynapseModelConfig(ConfigModel):
    """The VGG and the data it reads: shared by training and prediction."""

    task: Literal["synapse-classification"] = "synapse-classification"
    synapse_types: list[str] = Field(min_length=2)
    neither_class: bool = Field(default=False, description="add a 'neither' output class")
    input_shape: Shape3 = (16, 160, 160)
    fmaps: PositiveInt = 12
    fmap_inc: list[PositiveInt] = Field(default_factory=lambda: [2, 2, 2, 2])
    n_convolutions: list[PositiveInt] = Field(default_factory=lambda: [2, 2, 2, 2])
    downsample_factors: list[Shape3] = Field(
        default_factory=lambda: [(1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]
    )
    classifier_width: PositiveInt = Field(
        default=4096, description="width of the VGG's two hidden fully connected layers"
    )
    network: Literal["VGG"] = "VGG"
    network_appendix: str | None = None
    batch_size: PositiveInt = 8
    db_credentials: str | None = Field(default=None, description="synister credentials INI")
    db_name_data: DataDatabaseName
    split_name: SplitName
    voxel_size: Shape3 = (40, 4, 4)
    raw_container: str
    raw_dataset: str

    @model_validator(mode="after")
    def _check_architecture(self) -> SynapseModelConfig:
        levels = len(self.downsample_factors)
        for key in ("fmap_inc", "n_convolutions"):
            if len(getattr(self, key)) != levels:
                raise ValueError(
                    f"{key} has {len(getattr(self, key))} entries, expected one per "
                    f"downsampling level ({levels}, from downsample_factors)"
                )
        total = [math.prod(f[d] for f in self.downsample_factors) for d in range(3)]
        if any(s % t for s, t in zip(self.input_shape, total, strict=True)):
            raise ValueError(
                f"input_shape {self.input_shape} is not divisible by the total "
                f"downsampling {tuple(total)} of downsample_factors"
            )
        if len(set(self.synapse_types)) != len(self.synapse_types):
            raise ValueError(f"synapse_types {self.synapse_types} has duplicates")
        return self

    @property
    def class_names(self) -> list[str]:
        return [*self.synapse_types, *(["neither"] if self.neither_class else [])]


class SynapseTrainConfig(SynapseModelConfig):
    learning_rate: float = Field(default=1e-4, gt=0)
    save_every: PositiveInt = 1000
    snapshot_every: PositiveInt = 1000
    log_every: PositiveInt = 10
    augment: bool = True
    seed: int | None = None


class SegmentationTrainConfig(ConfigModel):
    """Affinities + LSDs (MTLSD) training; the segmentation pipeline reads it."""

    task: Literal["segmentation"] = "segmentation"
    raw_container: str
    raw_dataset: str = "volumes/raw"
    labels_dataset: str = "volumes/labels/neuron_ids"
    unlabelled_dataset: str | None = None
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
    save_every: PositiveInt = 1000
    snapshot_every: PositiveInt = 1000
    log_every: PositiveInt = 10
    augment: bool = True
    seed: int | None = None

    @model_validator(mode="after")
    def _check_shapes(self) -> SegmentationTrainConfig:
        from connecto.models.unet import output_shape

        try:
            computed = output_shape(self.input_shape, self.downsample_factors)
        except ConnectoError as error:
            raise ValueError(str(error)) from None
        if self.output_shape is not None and tuple(self.output_shape) != computed:
            raise ValueError(
                f"output_shape {tuple(self.output_shape)} differs from the network's "
                f"{computed} for input_shape {tuple(self.input_shape)}"
            )
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

    @property
    def network_output_shape(self) -> tuple[int, int, int]:
        from connecto.models.unet import output_shape

        return output_shape(self.input_shape, self.downsample_factors)  # type: ignore[return-value]


class SynapsePredictConfig(SynapseModelConfig):
    """One prediction run (synister's `[Predict]`): the training's model and data keys
    plus which checkpoint, which split part, and where the results go."""

    train_checkpoint: str
    experiment: ExperimentName
    train_number: Annotated[int, Field(ge=0)]
    predict_number: Annotated[int, Field(ge=0)]
    split_part: SplitPart = "test"
    overwrite: bool = False

    @property
    def iteration(self) -> int:
        return checkpoint_iteration(self.train_checkpoint)


TrainConfig = SynapseTrainConfig | SegmentationTrainConfig
TRAIN_CONFIGS: dict[str, type[BaseModel]] = {
    "synapse-classification": SynapseTrainConfig,
    "segmentation": SegmentationTrainConfig,
}
ModelT = TypeVar("ModelT", bound=BaseModel)

# synister's INI sections and key names that changed.
INI_SECTIONS = {"train": "Training", "worker": "Worker", "predict": "Predict"}
INI_RENAMES = {"singularity_container": "container"}


def checkpoint_iteration(path: str | Path) -> int:
    name = Path(path).name
    prefix = "model_checkpoint_"
    if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
        raise ConnectoError(f"{path}: not a checkpoint name (expected model_checkpoint_<N>)")
    return int(name[len(prefix) :])


# ---------------------------------------------------------------- value parsing


def parse_ini_value(text: str) -> Any:
    """synister's INI values: `None`, `True`, numbers, `a, b, c`, `(1,2,2), (1,2,2)`."""
    text = text.strip()
    if text in ("None", ""):
        return None
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if "," in text:
            return [parse_ini_value(part) for part in text.split(",")]
        return text
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
        return [list(v) for v in value]
    if isinstance(value, tuple):
        return list(value)
    return value


def parse_cli_value(text: str) -> Any:
    """`--set key=value`: a TOML value if it parses as one, else an INI-style value."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return parse_ini_value(text)


def _is_sequence_field(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    if field is None:
        return False
    annotation = field.annotation
    candidates = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    for candidate in (annotation, *candidates):
        if get_origin(candidate) in (list, tuple):
            return True
    return False


def coerce_for_model(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """A one-item INI list (`synapse_types = gaba`) arrives as a scalar: wrap it."""
    out = {}
    for key, value in values.items():
        if value is not None and not isinstance(value, list) and _is_sequence_field(model, key):
            value = [value]
        out[key] = value
    return out


# ---------------------------------------------------------------- validation


def describe_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not key:  # a check across keys: its message names the keys and values
            lines.append(f"{source}: {message}")
        elif item["type"] == "missing":
            lines.append(f"{source}: key '{key}' is missing (required)")
        elif item["type"] == "extra_forbidden":
            lines.append(f"{source}: key '{key}' is not a known setting")
        else:
            got = item.get("input")
            shown = repr(got) if not isinstance(got, dict) else "the settings"
            lines.append(f"{source}: key '{key}' = {shown}: {message}")
    return "\n".join(lines)


def validate(model: type[ModelT], values: dict[str, Any], source: str) -> ModelT:
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ConnectoError(describe_errors(error, source)) from None


# ---------------------------------------------------------------- files


def one_line(error: Exception) -> str:
    """configparser's messages span lines (file, line, text): join them."""
    return " ".join(str(error).split())


def read_text(path: Path) -> str:
    """A config file's text; unreadable or binary files are one-line ConnectoErrors."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConnectoError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); expected TOML or INI"
        ) from None
    except OSError as error:
        raise ConnectoError(f"{path}: cannot be read: {error.strerror}") from None


def read_toml(path: Path) -> dict[str, Any]:
    text = read_text(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConnectoError(f"{path}: not valid TOML: {error}") from None


def _ini_section(model: type[BaseModel]) -> str | None:
    """The synister section a model's INI file must have; None: any one section."""
    kinds = {SynapseTrainConfig: "train", WorkerConfig: "worker", SynapsePredictConfig: "predict"}
    kind = kinds.get(model)  # type: ignore[call-overload]
    return INI_SECTIONS[kind] if kind else None


def read_ini(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    parser = configparser.ConfigParser()
    text = read_text(path)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        raise ConnectoError(f"{path}: not a valid INI file: {one_line(error)}") from None
    sections, expected = parser.sections(), _ini_section(model)
    if len(sections) != 1 or (expected and sections[0] != expected):
        wanted = " or ".join(f"[{s}]" for s in ([expected] if expected else INI_SECTIONS.values()))
        found = ", ".join(f"[{s}]" for s in sections) or "none"
        raise ConnectoError(f"{path}: expected exactly one section {wanted}, found {found}")
    name = sections[0]
    section = parser[name]
    values = {INI_RENAMES.get(k, k): parse_ini_value(v) for k, v in section.items()}
    unknown = [key for key in section if INI_RENAMES.get(key, key) not in model.model_fields]
    if unknown:
        raise ConnectoError(
            f"{path}: [{name}] key '{unknown[0]}' is not a known setting (expected one of "
            f"{', '.join(model.model_fields)})"
        )
    return coerce_for_model(model, values)


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def read_values(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    if path.suffix == ".ini":
        return _drop_none(read_ini(path, model))
    return read_toml(path)


def load_config(path: Path, model: type[ModelT]) -> ModelT:
    return validate(model, read_values(path, model), str(path))


def train_config_model(values: dict[str, Any], source: str) -> type[BaseModel]:
    task = values.get("task", "synapse-classification")
    if task not in TRAIN_CONFIGS:
        raise ConnectoError(
            f"{source}: key 'task' = {task!r}: expected one of {', '.join(TRAIN_CONFIGS)}"
        )
    return TRAIN_CONFIGS[task]


def load_train_config(path: Path) -> TrainConfig:
    raw = read_toml(path) if path.suffix != ".ini" else {}
    model = train_config_model(raw, str(path))
    return load_config(path, model)  # type: ignore[return-value]


def to_toml(config: BaseModel) -> str:
    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))


def write_config(path: Path, config: BaseModel) -> None:
    path.write_text(to_toml(config))


def find_config(directory: Path, stem: str) -> Path:
    """`<stem>.toml`, else synister's `<stem>.ini`."""
    for suffix in (".toml", ".ini"):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise ConnectoError(f"{directory}: no {stem}.toml (or {stem}.ini) here")


def convert_ini(path: Path) -> tuple[BaseModel, str]:
    """Load a synister INI into its model; returns (config, TOML file stem)."""
    parser = configparser.ConfigParser()
    text = read_text(path)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        raise ConnectoError(f"{path}: not a valid INI file: {one_line(error)}") from None
    section_to_kind = {v: k for k, v in INI_SECTIONS.items()}
    kinds = [section_to_kind[s] for s in parser.sections() if s in section_to_kind]
    if len(kinds) != 1:
        raise ConnectoError(
            f"{path}: expected one synister section ([Training], [Worker] or [Predict]), "
            f"found {parser.sections() or 'none'}"
        )
    model: type[BaseModel] = {
        "train": SynapseTrainConfig,
        "worker": WorkerConfig,
        "predict": SynapsePredictConfig,
    }[kinds[0]]
    return load_config(path, model), f"{kinds[0]}_config"
