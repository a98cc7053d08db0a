"""Experiment directories (synister's layout):

<base>/<experiment>/02_train/setup_t<train_id>/
<base>/<experiment>/03_predict/setup_t<train_id>_p<predict_id>/
<base>/<experiment>/04_evaluate/
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pymongo.database import Database

from connecto import ConnectoError
from connecto.config import (
    WorkerConfig,
    find_config,
    load_config,
    parse_cli_value,
    read_toml,
    validate,
    write_config,
)
from connecto.db.tracking import register_train_setup
from connecto.names import check_name
from connecto.resources import resource_dir
from connecto.tasks import DEFAULT_TASK, load_train_config, train_config_model
from connecto.tasks.synapse_classification.config import SynapsePredictConfig

TRAIN_DIR = "02_train"
PREDICT_DIR = "03_predict"
EVALUATE_DIR = "04_evaluate"
CHECKPOINT_PREFIX = "model_checkpoint_"

_TRAIN_NAME = re.compile(r"^setup_t(\d+)$")
PREDICT_NAME = re.compile(r"^setup_t(\d+)_p(\d+)$")


@dataclass(frozen=True)
class TrainSetup:
    base: Path
    experiment: str
    train_id: int

    def __post_init__(self) -> None:
        # The experiment is a directory under base and part of collection names.
        check_name("experiment name", self.experiment)

    @property
    def path(self) -> Path:
        return self.base / self.experiment / TRAIN_DIR / f"setup_t{self.train_id}"

    @property
    def log_dir(self) -> Path:
        return self.path / "log"

    @property
    def snapshot_dir(self) -> Path:
        return self.path / "snapshots"

    @property
    def evaluate_dir(self) -> Path:
        return self.base / self.experiment / EVALUATE_DIR

    def checkpoint(self, iteration: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{iteration}"

    def checkpoints(self) -> list[int]:
        """Iterations with a checkpoint, ascending."""
        found = []
        for path in self.path.glob(f"{CHECKPOINT_PREFIX}*"):
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if suffix.isdigit():
                found.append(int(suffix))
        return sorted(found)

    def train_config(self) -> Any:
        return load_train_config(find_config(self.path, "train_config"))

    def worker_config(self) -> WorkerConfig:
        return load_config(find_config(self.path, "worker_config"), WorkerConfig)

    def predict_setup(self, predict_id: int) -> PredictSetup:
        return PredictSetup(self.base, self.experiment, self.train_id, predict_id)

    def predict_setups(self) -> list[PredictSetup]:
        root = self.base / self.experiment / PREDICT_DIR
        found = []
        for path in root.glob(f"setup_t{self.train_id}_p*"):
            match = PREDICT_NAME.match(path.name)
            if match and int(match.group(1)) == self.train_id:
                found.append(self.predict_setup(int(match.group(2))))
        return sorted(found, key=lambda s: s.predict_id)


@dataclass(frozen=True)
class PredictSetup:
    base: Path
    experiment: str
    train_id: int
    predict_id: int

    def __post_init__(self) -> None:
        check_name("experiment name", self.experiment)

    @property
    def path(self) -> Path:
        name = f"setup_t{self.train_id}_p{self.predict_id}"
        return self.base / self.experiment / PREDICT_DIR / name

    @property
    def train_setup(self) -> TrainSetup:
        return TrainSetup(self.base, self.experiment, self.train_id)

    def predict_config(self) -> SynapsePredictConfig:
        return load_config(find_config(self.path, "predict_config"), SynapsePredictConfig)

    def worker_config(self) -> WorkerConfig:
        return load_config(find_config(self.path, "worker_config"), WorkerConfig)


def find_setup(path: Path) -> TrainSetup | PredictSetup:
    """The train or predict setup that `path` is (or lies inside)."""
    path = path.resolve()
    for candidate in (path, *path.parents):
        train = _TRAIN_NAME.match(candidate.name)
        if train and candidate.parent.name == TRAIN_DIR:
            return TrainSetup(candidate.parents[2], candidate.parents[1].name, int(train.group(1)))
        predict = PREDICT_NAME.match(candidate.name)
        if predict and candidate.parent.name == PREDICT_DIR:
            return PredictSetup(
                candidate.parents[2],
                candidate.parents[1].name,
                int(predict.group(1)),
                int(predict.group(2)),
            )
    raise ConnectoError(
        f"{path} is not inside a setup directory "
        f"(<base>/<experiment>/{TRAIN_DIR}/setup_t<ID> or {PREDICT_DIR}/setup_t<ID>_p<N>); "
        "run from one or pass -d/-e/-t"
    )


def resolve_train_setup(
    base: Path | None, experiment: str | None, train_id: int | None, cwd: Path | None = None
) -> TrainSetup:
    if base is not None or experiment is not None or train_id is not None:
        if base is None or experiment is None or train_id is None:
            raise ConnectoError("give all of -d BASE, -e EXPERIMENT and -t TRAIN_ID, or none")
        setup = TrainSetup(base.resolve(), experiment, train_id)
    else:
        found = find_setup(cwd or Path.cwd())
        setup = found if isinstance(found, TrainSetup) else found.train_setup
    if not setup.path.is_dir():
        raise ConnectoError(f"{setup.path}: no such train setup (run `connecto prepare-training`)")
    return setup


# ---------------------------------------------------------------- templates


def checkpoint_config(checkpoint: Path, model: type[BaseModel], task: str) -> Any:
    """The train config of the setup `checkpoint` lies in, refused unless of `model`
    (the task `task`): what a prediction from a checkpoint alone needs."""
    if not checkpoint.is_file():
        raise ConnectoError(f"checkpoint {checkpoint}: no such file")
    setup = find_setup(checkpoint.parent)
    if not isinstance(setup, TrainSetup):
        raise ConnectoError(f"checkpoint {checkpoint} is not in a train setup")
    config = setup.train_config()
    if not isinstance(config, model):
        raise ConnectoError(f"{setup.path}: task {config.task!r} is not {task}")
    return config


def template_names() -> list[str]:
    """Train setup templates (`experiments/bootstrap/` holds a chain config, not one)."""
    root = resource_dir("experiments")
    return sorted(p.name for p in root.iterdir() if (p / "train_config.toml").is_file())


def _apply_overrides(train: dict[str, Any], worker: dict[str, Any], overrides: list[str]) -> None:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConnectoError(
                f"--set {item!r}: expected key=value (worker.key=value for workers)"
            )
        key = key.strip()
        target, key = (worker, key[len("worker.") :]) if key.startswith("worker.") else (train, key)
        # table.key reaches a key of a table (e.g. channel_augment.shuffle=false)
        *tables, key = key.split(".")
        for table in tables:
            target = target.setdefault(table, {})
            if not isinstance(target, dict):
                raise ConnectoError(f"--set {item!r}: {table!r} is a value, not a table")
        target[key] = parse_cli_value(text)


def prepare_training(
    base: Path,
    experiment: str,
    train_id: int,
    task: str | None = None,
    template: str | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    tracking: Callable[[], Database] | None = None,
    init_from: Path | None = None,
) -> tuple[TrainSetup, BaseModel, WorkerConfig]:
    """Create a train setup from a template; returns (setup, train config, worker config).

    With `tracking` (how to reach the tracking database), the setup is registered there as
    a `prepared` run. Every check, the database's included, comes before anything is
    written, and a failed write or registration takes back what was written: a refusal
    leaves no setup directory, and --force keeps the old configs.

    `init_from` (a synapse-contrastive checkpoint) starts a synapse classifier from the
    pretrained encoder: `init_from`, `network = "ResNet18"` and the encoder's width go into
    the train config (before `overrides`)."""
    setup = TrainSetup(base.resolve(), experiment, train_id)
    if setup.path.exists() and any(setup.path.iterdir()) and not force:
        raise ConnectoError(f"{setup.path} already exists; use --force to overwrite its configs")
    name = template or task or DEFAULT_TASK  # each task ships a template of its name
    template_dir = resource_dir("experiments") / name
    if not (template_dir / "train_config.toml").is_file():
        raise ConnectoError(f"no template {name!r}; available: {', '.join(template_names())}")
    train_values = read_toml(template_dir / "train_config.toml")
    worker_values = read_toml(template_dir / "worker_config.toml")
    if task and train_values.get("task", "synapse-classification") != task:
        raise ConnectoError(
            f"template {name!r} is for task {train_values.get('task')!r}, not {task!r}"
        )
    if init_from is not None:
        train_values.update(_init_from_values(init_from, train_values))
    _apply_overrides(train_values, worker_values, overrides or [])
    source = f"template {name} with --set"
    train = validate(train_config_model(train_values, source), train_values, source)
    worker = validate(WorkerConfig, worker_values, f"{source} (worker)")
    database = tracking() if tracking is not None else None  # reachable, or nothing written
    with _undo_on_failure(setup.path, ["train_config.toml", "worker_config.toml"]):
        write_config(setup.path / "train_config.toml", train)
        write_config(setup.path / "worker_config.toml", worker)
        if database is not None:
            register_train_setup(
                database, str(setup.path), str(setup.base), experiment, train_id,
                train.model_dump(mode="json"), worker.model_dump(mode="json"),
            )  # fmt: skip
    return setup, train, worker


def _init_from_values(checkpoint: Path, train_values: dict[str, Any]) -> dict[str, Any]:
    """The train config keys that start a synapse classifier from a synapse-contrastive
    checkpoint's encoder; the checkpoint's setup is checked here, its weights by training."""
    from connecto.tasks.synapse_contrastive.config import NAME, ContrastiveTrainConfig

    task = train_values.get("task", DEFAULT_TASK)
    if task != "synapse-classification":
        raise ConnectoError(f"--init-from: only for synapse-classification, not task {task!r}")
    checkpoint = checkpoint.resolve()
    try:
        contrastive = checkpoint_config(checkpoint, ContrastiveTrainConfig, NAME)
    except ConnectoError as error:
        raise ConnectoError(f"--init-from {checkpoint}: {error}") from None
    return {"init_from": str(checkpoint), "network": "ResNet18", "resnet_width": contrastive.width}


class _undo_on_failure:
    """Create `directory` (and its missing parents) for writing `files` in it; if the
    block fails, put back the files as they were and remove the directories it created."""

    def __init__(self, directory: Path, files: Sequence[str]) -> None:
        self.directory = directory
        self.files = [directory / name for name in files]

    def __enter__(self) -> None:
        self.created = missing_directories(self.directory)
        self.saved = {p: p.read_bytes() if p.is_file() else None for p in self.files}
        self.directory.mkdir(parents=True, exist_ok=True)

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            return
        for path, content in self.saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        remove_created(self.created)


def missing_directories(directory: Path) -> list[Path]:
    """`directory` and those of its parents that do not exist, deepest first."""
    return [p for p in (directory, *directory.parents) if not p.exists()]


def remove_created(directories: list[Path]) -> None:
    """Remove directories made here, deepest first, while nothing else came into them."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            break


def tree(path: Path, max_depth: int = 4) -> list[str]:
    """An indented listing of a directory, for the demo and `prepare-*` output."""
    lines = [f"{path}/"]

    def walk(directory: Path, depth: int) -> None:
        if depth > max_depth:
            return
        for child in sorted(directory.iterdir()):
            lines.append("  " * depth + child.name + ("/" if child.is_dir() else ""))
            if child.is_dir():
                walk(child, depth + 1)

    walk(path, 1)
    return lines
