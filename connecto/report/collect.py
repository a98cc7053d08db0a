"""What `connecto report` shows, gathered from an experiment directory and the tracking
database. Reading only: a part that does not exist yet (no events, no documents, no
database) is an empty list or a note, never an error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pymongo.database import Database
from pymongo.errors import PyMongoError

from connecto import ConnectoError
from connecto.db.predictions import list_prediction_runs
from connecto.db.tracking import JOBS, SCORES, find_score, list_runs
from connecto.experiment import EVALUATE_DIR, PREDICT_DIR, TRAIN_DIR, TrainSetup
from connecto.launch.jobs import refresh_jobs, stale_warnings
from connecto.tasks.synapse_classification.evaluate import BEST_CHECKPOINT, stored_scores

SPLIT_PARTS = ("validation", "test")
SEGMENTATION_KIND = "segmentation"
MANIFEST = "run.json"
_TRAIN_NAME = re.compile(r"^setup_t(\d+)$")
_SNAPSHOT_NAME = re.compile(r"^batch_(\d+)\.zarr$")
# the checkpoint metric `connecto evaluate --select-best` uses by default
DEFAULT_METRIC = "balanced_accuracy"


@dataclass
class CheckpointScores:
    """The scores documents of one split part of a train setup, by iteration, and the
    best checkpoint (`select_best`'s choice when stored, else the highest `metric`)."""

    split_part: str
    documents: list[dict[str, Any]]
    metric: str = DEFAULT_METRIC
    best_iteration: int | None = None
    best_selected: bool = False  # chosen by `connecto evaluate --select-best`


@dataclass
class TrainSection:
    setup: TrainSetup
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    scalars_note: str | None = None  # why there are none, when the events could not be read
    checkpoints: list[int] = field(default_factory=list)
    snapshots: list[tuple[int, Path]] = field(default_factory=list)  # (iteration, path)
    scores: list[CheckpointScores] = field(default_factory=list)
    manifest: dict[str, Any] | None = None


@dataclass
class ExperimentReport:
    """Everything the page shows for `<base>/<experiment>`."""

    base: Path
    name: str
    trains: list[TrainSection] = field(default_factory=list)
    predict_dirs: list[Path] = field(default_factory=list)
    evaluate_pngs: list[Path] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    segmentation: list[dict[str, Any]] = field(default_factory=list)
    database_note: str | None = None  # why nothing tracked is shown
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.base / self.name


# ---------------------------------------------------------------- the directory


def find_experiment_dir(path: Path) -> Path:
    """The experiment directory `path` is or lies in: the nearest one holding 02_train/ or
    03_predict/."""
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise ConnectoError(f"{path}: no such directory")
    for candidate in (path, *path.parents):
        if (candidate / TRAIN_DIR).is_dir() or (candidate / PREDICT_DIR).is_dir():
            return candidate
    raise ConnectoError(
        f"{path} is not an experiment directory (<base>/<experiment> with {TRAIN_DIR}/ or "
        f"{PREDICT_DIR}/) nor inside one; run `connecto prepare-training` first"
    )


def train_setups(experiment_dir: Path) -> list[TrainSetup]:
    found = []
    for path in (experiment_dir / TRAIN_DIR).glob("setup_t*"):
        match = _TRAIN_NAME.match(path.name)
        if match and path.is_dir():
            found.append(TrainSetup(experiment_dir.parent, experiment_dir.name, int(match[1])))
    return sorted(found, key=lambda s: s.train_id)


def read_scalars(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], str | None]:
    """Every scalar tag of the tensorboard events in `log_dir` as (step, value), and a note
    when they could not be read."""
    if not log_dir.is_dir() or not any(log_dir.glob("events.out.tfevents.*")):
        return {}, None
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    try:
        events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})  # 0: keep all
        events.Reload()
        return {
            tag: [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
            for tag in sorted(events.Tags().get(SCALARS, []))
        }, None
    except Exception as error:  # a file being written or damaged: the page still renders
        return {}, f"could not read the tensorboard events in {log_dir}: {error}"


def snapshots(setup: TrainSetup) -> list[tuple[int, Path]]:
    found = []
    for path in setup.snapshot_dir.glob("batch_*.zarr"):
        match = _SNAPSHOT_NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match[1]), path))
    return sorted(found)


def read_manifest(setup: TrainSetup) -> dict[str, Any] | None:
    path = setup.path / MANIFEST
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return {"error": f"{path}: {error}"}
    return value if isinstance(value, dict) else {"value": value}


# ---------------------------------------------------------------- the database


def _under(directory: Path) -> dict[str, str]:
    return {"$regex": f"^{re.escape(str(directory))}/"}


def checkpoint_scores(db: Database, setup: TrainSetup) -> list[CheckpointScores]:
    """Per split part with scores: the scores documents by iteration and the best."""
    found = []
    for part in SPLIT_PARTS:
        documents = stored_scores(db, setup.path, part)
        if not documents:
            continue
        scores = CheckpointScores(part, documents)
        selected = find_score(db, BEST_CHECKPOINT, f"{setup.path}:{part}")
        if selected is not None:
            scores.metric = selected.get("metric", DEFAULT_METRIC)
            scores.best_iteration = selected.get("iteration")
            scores.best_selected = True
        else:
            ranked = [
                (d["synapse"][DEFAULT_METRIC], -d["iteration"], d["iteration"])
                for d in documents
                if (d.get("synapse") or {}).get(DEFAULT_METRIC) is not None
                and d.get("iteration") is not None
            ]
            scores.best_iteration = max(ranked)[2] if ranked else None
        found.append(scores)
    return found


def segmentation_scores(db: Database, experiment_dir: Path) -> list[dict[str, Any]]:
    """The `segmentation` scores documents of output containers inside the experiment
    directory (where segment configs there put them)."""
    query = {"kind": SEGMENTATION_KIND, "container": _under(experiment_dir)}
    return list(db[SCORES].find(query, sort=[("container", 1), ("region", 1), ("threshold", 1)]))


def experiment_jobs(db: Database, experiment_dir: Path) -> list[dict[str, Any]]:
    """The jobs whose setup or working directory lies in the experiment, oldest first,
    their states refreshed from their schedulers."""
    query = {"$or": [{"setup_dir": _under(experiment_dir)}, {"workdir": _under(experiment_dir)},
                     {"workdir": str(experiment_dir)}]}  # fmt: skip
    return refresh_jobs(db, list(db[JOBS].find(query, sort=[("submitted", 1)])))


def _inside(document: dict[str, Any], experiment_dir: Path) -> bool:
    return str(document.get("setup_dir", "")).startswith(f"{experiment_dir}/")


def read_tracking(report: ExperimentReport, db: Database) -> None:
    experiment_dir = report.path
    runs = list_runs(db, experiment=report.name)
    report.runs = [r for r in runs if _inside(r, experiment_dir)]
    predictions = list_prediction_runs(db, experiment=report.name)
    report.predictions = [p for p in predictions if _inside(p, experiment_dir)]
    report.jobs = experiment_jobs(db, experiment_dir)
    report.warnings += stale_warnings(report.jobs)
    report.segmentation = segmentation_scores(db, experiment_dir)
    for section in report.trains:
        section.scores = checkpoint_scores(db, section.setup)


# ---------------------------------------------------------------- all of it


def collect(path: Path, db: Database | None, database_note: str | None = None) -> ExperimentReport:
    """The report of the experiment `path` is or lies in; `db` the tracking database, or
    None (with `database_note` saying why) to show the directory alone."""
    experiment_dir = find_experiment_dir(path)
    report = ExperimentReport(experiment_dir.parent, experiment_dir.name)
    for setup in train_setups(experiment_dir):
        scalars, note = read_scalars(setup.log_dir)
        section = TrainSection(setup, scalars, note, setup.checkpoints(), snapshots(setup))
        section.manifest = read_manifest(setup)
        report.trains.append(section)
    report.predict_dirs = sorted(p for p in (experiment_dir / PREDICT_DIR).glob("setup_t*_p*"))
    report.evaluate_pngs = sorted((experiment_dir / EVALUATE_DIR).glob("*.png"))
    report.database_note = database_note
    if db is not None:
        try:
            read_tracking(report, db)
        except PyMongoError as error:  # the server went away mid-report: show the files
            report.database_note = f"the tracking database stopped answering: {error}"
    return report
