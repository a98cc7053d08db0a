"""Experiment configuration: pydantic models, TOML files, synister INI files.

A setup directory holds `train_config.toml` (or synister's `train_config.ini`),
`worker_config.toml` (`worker_config.ini`) and, for prediction, `predict_config.toml`
(`predict_config.ini`). Every error names the file, the key, the bad value and what was
expected.
"""

from __future__ import annotations

import ast
import configparser
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

import tomli_w
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from connecto import ConnectoError
from connecto.names import check_name

SplitPart = Literal["train", "validation", "test"]
Shape3 = tuple[int, int, int]
PositiveInt = Annotated[int, Field(gt=0)]


SplitName = Annotated[str, AfterValidator(lambda value: check_name("split name", value))]
ExperimentName = Annotated[str, AfterValidator(lambda value: check_name("experiment name", value))]
DatabaseName = Annotated[str, AfterValidator(lambda value: check_name("database name", value))]


class ConfigModel(BaseModel):
    # allow_inf_nan=False: `learning_rate = inf` (or nan) is refused, naming the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    # the one section of synister's INI file for this model (None: not read from INI)
    ini_section: ClassVar[str | None] = None


class TrainingSettings(ConfigModel):
    """What the training driver reads of every task's train config."""

    learning_rate: float = Field(default=1e-4, gt=0)
    save_every: PositiveInt = 1000
    snapshot_every: PositiveInt = 1000
    log_every: PositiveInt = 10
    augment: bool = True
    seed: int | None = None


class WorkerConfig(ConfigModel):
    """Where and how a job runs (synister's `[Worker]`)."""

    ini_section: ClassVar[str | None] = "Worker"

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


ModelT = TypeVar("ModelT", bound=BaseModel)

# synister's INI key names that changed.
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


def parse_ini(path: Path) -> configparser.ConfigParser:
    """The INI file at `path`, parsed; unreadable or malformed is one line naming it."""
    parser = configparser.ConfigParser()
    text = read_text(path)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as error:
        raise ConnectoError(f"{path}: not a valid INI file: {one_line(error)}") from None
    return parser


def read_ini(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    parser = parse_ini(path)
    sections, expected = parser.sections(), getattr(model, "ini_section", None)
    if len(sections) != 1 or (expected and sections[0] != expected):
        wanted = f" [{expected}]" if expected else ""
        found = ", ".join(f"[{s}]" for s in sections) or "none"
        raise ConnectoError(f"{path}: expected exactly one section{wanted}, found {found}")
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
