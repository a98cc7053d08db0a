"""`connecto bootstrap run`: dense 3D segmentation from a sparse painting, step by step.

The chain (Thiyagarajan et al. 2024; bootstrapper's one-config run):

    sparse-labels -> train-2d -> predict-2d -> predict-3d -> segment
                                 train-3d ----^
    segment -> round-1-pseudo-labels -> round-1-train -> round-1-segment (predict, then
            segment) -> round-2-pseudo-labels -> ...

The 2D model (task `segmentation-2d`, setup t0) learns from the painted sections only;
the 2D->3D model (task `affinities-from-2d`, setup t1, or a trained checkpoint) never sees
annotations; each round r trains a 3D MTLSD (setup t<1+r>) on the previous segmentation's
trusted segments (`pseudo_labels`). Every step is a document in the tracking database's
`lineage` (parent, outputs, figures, state); a step recorded `done` is skipped when the
chain runs again, and training resumes from its latest checkpoint, so a killed chain
continues where it stopped. `--from STEP` redoes that step and those after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from funlib.geometry import Roi
from pydantic import BaseModel, ConfigDict, Field

from connecto import ConnectoError
from connecto.bootstrap.painted import CANDIDATES, PaintedChoice, choose_threshold
from connecto.bootstrap.painted_agglomeration import (
    PaintedAgglomeration,
    write_painted_agglomeration,
)
from connecto.bootstrap.pseudo_labels import SegmentFilter, make_pseudo_labels
from connecto.config import ConfigModel, PositiveInt, load_config, write_config
from connecto.data.volumes import open_raw
from connecto.db.tracking import list_lineage, record_lineage
from connecto.experiment import TrainSetup, checkpoint_config, prepare_training
from connecto.names import check_name
from connecto.tasks.segmentation.overlay import write_overlay

HOME = "05_bootstrap"
STACK_2D = "predictions_2d.zarr"
PSEUDO_LABELS = "pseudo_labels.zarr"
SEGMENT_STEPS = ("fragments", "agglomerate", "extract")


class TrainStep(BaseModel):
    """A model of the chain: trained for `iterations`, or a trained `checkpoint` reused."""

    model_config = ConfigDict(extra="forbid")

    iterations: PositiveInt = 2000
    checkpoint: str | None = Field(default=None, description="use this instead of training")
    set: dict[str, Any] = Field(default_factory=dict, description="train config keys")


class Rounds(TrainStep):
    """The bootstrapped 3D MTLSD rounds and how their pseudo ground truth is filtered."""

    count: int = Field(default=1, ge=0)
    source: Literal["segmentation", "painted-agglomeration"] = Field(
        default="segmentation",
        description='"segmentation": the previous segmentation as is; "painted-agglomeration": '
        "the previous round's fragments joined again up to its threshold, refusing every "
        "union the painting shows to be a merge (connecto.bootstrap.painted_agglomeration)",
    )
    filter: SegmentFilter = Field(default_factory=SegmentFilter)


class BootstrapConfig(ConfigModel):
    """`bootstrap.toml`: the data, the three kinds of model, segmentation and rounds.
    Relative paths are relative to the file's directory."""

    base: str = Field(default=".", description="experiment directories go under it")
    experiment: str
    raw_container: str
    raw_dataset: str = "raw"
    labels_container: str | None = Field(default=None, description="None: raw_container")
    labels_dataset: str = Field(default="labels", description="the painting; 0 = unlabelled")
    roi: list[list[int]] | None = Field(
        default=None, description="[[z, y, x] offset nm, [z, y, x] shape nm]; None: all"
    )
    threshold: Annotated[float, Field(gt=0, lt=1)] | Literal["painted"] = Field(
        default="painted",
        description='agglomeration threshold; "painted": each segmentation\'s own, the '
        "candidate with the lowest VOI over the painted voxels",
    )
    candidates: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=lambda: list(CANDIDATES),
        min_length=1,
        description='the thresholds "painted" chooses from',
    )
    segment: dict[str, Any] = Field(default_factory=dict, description="segment_config keys")
    model_2d: TrainStep = Field(default_factory=TrainStep)
    affinities_from_2d: TrainStep = Field(default_factory=TrainStep)
    rounds: Rounds = Field(default_factory=Rounds)


def load_bootstrap_config(path: Path) -> BootstrapConfig:
    path = path.resolve()
    config = load_config(path, BootstrapConfig)
    check_name("experiment name", config.experiment)
    for key in ("base", "raw_container", "labels_container"):
        value = getattr(config, key)
        if value is not None:
            setattr(config, key, str(path.parent / value))  # absolute values stay
    for step in (config.model_2d, config.affinities_from_2d, config.rounds):
        if step.checkpoint is not None:
            step.checkpoint = str(path.parent / step.checkpoint)
    return config


def _overrides(values: dict[str, Any]) -> list[str]:
    """`--set key=value` items (JSON is TOML for numbers, strings, lists and booleans;
    None has no TOML form: `_train` unsets those keys after)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items() if value is not None]


@dataclass
class Step:
    name: str
    parent: str | None
    run: Callable[[], dict[str, Any]]  # does the work, returns what the lineage records


@dataclass
class StepOutcome:
    name: str
    skipped: bool
    record: dict[str, Any]

    def line(self) -> str:
        shown = {k: v for k, v in self.record.items() if k not in ("outputs", "painted_voi")}
        figures = ", ".join(f"{k} {v}" for k, v in shown.items())
        return f"{self.name}: {'done before' if self.skipped else 'done'}" + (
            f" ({figures})" if figures else ""
        )


class Chain:
    """The steps of one bootstrap config (see the module docstring)."""

    def __init__(self, config: BootstrapConfig, tracking: Any, progress: bool = True) -> None:
        self.config = config
        self.tracking = tracking
        self.progress = progress
        self.base = Path(config.base).resolve()
        self.home = self.base / config.experiment / HOME
        self.raw = open_raw(config.raw_container, config.raw_dataset)
        self.voxel_size = tuple(int(v) for v in self.raw.voxel_size)
        self.roi = Roi(*config.roi) if config.roi else None

    # ------------------------------------------------------------ the plan

    def steps(self) -> list[Step]:
        steps = [
            Step("sparse-labels", None, self.sparse_labels),
            Step("train-2d", "sparse-labels", self.train_2d),
            Step("predict-2d", "train-2d", self.predict_2d),
            Step("train-3d", None, self.train_3d),
            Step("predict-3d", "predict-2d", self.predict_3d),
            Step("segment", "predict-3d", lambda: self.segment(0)),
        ]
        previous = "segment"
        for r in range(1, self.config.rounds.count + 1):
            name = f"round-{r}"
            steps += [
                Step(f"{name}-pseudo-labels", previous, lambda r=r: self.pseudo_labels(r)),
                Step(f"{name}-train", f"{name}-pseudo-labels", lambda r=r: self.train_round(r)),
                Step(f"{name}-segment", f"{name}-train", lambda r=r: self.segment(r)),
            ]
            previous = f"round-{r}-segment"
        return steps

    def run(
        self, start: str | None = None, log: Callable[[str], None] = print
    ) -> list[StepOutcome]:
        steps = self.steps()
        names = [s.name for s in steps]
        if start is not None and start not in names:
            raise ConnectoError(f"--from {start!r}: not a step of this chain ({', '.join(names)})")
        redo = start is not None
        recorded = {d["step"]: d for d in self.lineage()}
        outcomes = []
        forced = False
        for step in steps:
            forced = forced or step.name == start
            done = recorded.get(step.name, {}).get("state") == "done"
            if done and not (redo and forced):
                outcomes.append(StepOutcome(step.name, True, recorded[step.name].get("stats", {})))
                log(outcomes[-1].line())
                continue
            outcomes.append(self._run_step(step))
            log(outcomes[-1].line())
        return outcomes

    def _run_step(self, step: Step) -> StepOutcome:
        key = (str(self.base), self.config.experiment, step.name)
        record_lineage(self.tracking, *key, {"parent": step.parent, "state": "running"})
        try:
            result = step.run()
        except BaseException as error:
            record_lineage(self.tracking, *key, {"state": "failed", "error": str(error)[:500]})
            if isinstance(error, ConnectoError):  # say which step; rerunning resumes there
                raise ConnectoError(f"bootstrap step {step.name}: {error}") from None
            raise
        outputs = result.pop("outputs", {})
        record_lineage(self.tracking, *key, {"state": "done", "stats": result,
                                             "outputs": outputs, "error": None})  # fmt: skip
        return StepOutcome(step.name, False, result)

    def lineage(self) -> list[dict[str, Any]]:
        return list_lineage(self.tracking, str(self.base), self.config.experiment)

    # ------------------------------------------------------------ the steps

    def _painting_source(self) -> tuple[str, str]:
        """(container, dataset) of the painting."""
        container = self.config.labels_container or self.config.raw_container
        return container, self.config.labels_dataset

    def _painting(self) -> tuple[str, Any]:
        container, dataset = self._painting_source()
        return container, open_raw(container, dataset, "labels_dataset")

    def sparse_labels(self) -> dict[str, Any]:
        container, labels = self._painting()
        data = labels.to_ndarray(labels.roi)
        painted = np.flatnonzero((data > 0).any(axis=(1, 2)))
        if not len(painted):
            raise ConnectoError(
                f"{container}/{self.config.labels_dataset}: no labels (every voxel is 0)"
            )
        return {
            "labelled_fraction": round(float((data > 0).mean()), 5),
            "painted_sections": [int(z) for z in painted],
            "objects": int(len(np.unique(data[data > 0]))),
            "outputs": {"labels": f"{container}/{self.config.labels_dataset}"},
        }

    def _train(self, train_id: int, task: str, values: dict[str, Any], step: TrainStep) -> Path:
        """Prepare the setup once (its config then stays), train it to the iterations
        (resuming), return its latest checkpoint."""
        from connecto.db.client import tracking_database
        from connecto.train import train

        setup = TrainSetup(self.base, self.config.experiment, train_id)
        if not (setup.path / "train_config.toml").exists():
            wanted = {**values, **step.set}
            _, config, _ = prepare_training(
                self.base, self.config.experiment, train_id, task=task,
                overrides=_overrides(wanted), tracking=tracking_database,
            )  # fmt: skip
            unset = {key: None for key, value in wanted.items() if value is None}
            if unset:  # e.g. the template's ROIs, which belong to its own data
                write_config(setup.path / "train_config.toml", config.model_copy(update=unset))
        train(setup, step.iterations, progress=self.progress)
        return setup.checkpoint(setup.checkpoints()[-1])

    def _data_keys(self) -> dict[str, Any]:
        return {"raw_container": self.config.raw_container, "raw_dataset": self.config.raw_dataset,
                "voxel_size": list(self.voxel_size)}  # fmt: skip

    def train_2d(self) -> dict[str, Any]:
        step = self.config.model_2d
        if step.checkpoint is not None:
            return {"checkpoint": step.checkpoint}
        labels = {"labels_container": self.config.labels_container or self.config.raw_container,
                  "labels_dataset": self.config.labels_dataset, "sparse_labels": True}  # fmt: skip
        checkpoint = self._train(0, "segmentation-2d", {**self._data_keys(), **labels}, step)
        return {"checkpoint": str(checkpoint), "iterations": step.iterations}

    def _stats_of(self, step_name: str) -> dict[str, Any]:
        """What a done step recorded."""
        record = next((d for d in self.lineage() if d["step"] == step_name), None)
        if record is None or record.get("state") != "done":
            raise ConnectoError(f"step {step_name} has not run yet; run the chain from it")
        return record["stats"]

    def _checkpoint_of(self, step_name: str) -> Path:
        return Path(self._stats_of(step_name)["checkpoint"])

    def predict_2d(self) -> dict[str, Any]:
        from connecto.tasks.segmentation_2d.predict import predict_sections, train_config_of

        checkpoint = self._checkpoint_of("train-2d")
        config = train_config_of(checkpoint)
        result = predict_sections(
            checkpoint, config, self.config.raw_container, self.config.raw_dataset,
            self.home / STACK_2D, self.roi, overwrite=True, progress=self.progress,
        )  # fmt: skip
        return {"sections": getattr(result, "sections", None),
                "outputs": {"stack": str(self.home / STACK_2D)}}  # fmt: skip

    def train_3d(self) -> dict[str, Any]:
        from connecto.tasks.segmentation_2d.predict import train_config_of

        step = self.config.affinities_from_2d
        if step.checkpoint is not None:
            return {"checkpoint": step.checkpoint}
        model_2d = train_config_of(self._checkpoint_of("train-2d"))
        matching = {
            "voxel_size": list(self.voxel_size),
            "input_offsets": [list(o) for o in model_2d.neighborhood],
            "input_lsds": model_2d.lsds,
            "lsd_sigma": model_2d.lsd_sigma,
        }
        checkpoint = self._train(1, "affinities-from-2d", matching, step)
        return {"checkpoint": str(checkpoint), "iterations": step.iterations}

    def _model_3d(self) -> tuple[Path, Any]:
        from connecto.tasks.affinities_from_2d.config import AffinitiesFrom2dTrainConfig

        checkpoint = self._checkpoint_of("train-3d")
        config = checkpoint_config(checkpoint, AffinitiesFrom2dTrainConfig, "affinities-from-2d")
        return checkpoint, config

    def round_dir(self, r: int) -> Path:
        return self.home / f"round_{r}"

    def predict_3d(self) -> dict[str, Any]:
        from connecto.tasks.affinities_from_2d.predict import predict_affinities

        checkpoint, config = self._model_3d()
        out = self.round_dir(0) / "segment.zarr"
        result = predict_affinities(
            checkpoint, config, self.home / STACK_2D, out, self.roi, progress=self.progress
        )
        return {"tiles": result.tiles, "outputs": {"affs": str(result.path)}}

    def _segment_config(
        self, r: int, neighborhood: list[Any], checkpoint: Path | None, thresholds: list[float]
    ) -> Path:  # fmt: skip
        from connecto.tasks.segmentation.config import SegmentConfig

        values: dict[str, Any] = {
            "raw_container": self.config.raw_container,
            "raw_dataset": self.config.raw_dataset,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "neighborhood": [list(o) for o in neighborhood],
            "thresholds": thresholds,
            "graph": f"{self.config.experiment}_round{r}",
            "roi": self.config.roi,
            "fragments_in_xy": self.voxel_size[0] > self.voxel_size[1],
            **self.config.segment,
        }
        path = self.round_dir(r) / "segment_config.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_config(path, SegmentConfig(**values))
        return path

    def segmentation_of(self, r: int, threshold: float | None = None) -> tuple[Path, str]:
        """Round r's segmentation dataset: at `threshold`, else at the one its segment
        step used."""
        from connecto.tasks.segmentation.workflow import threshold_name

        if threshold is None and self.config.threshold != "painted":
            threshold = self.config.threshold
        if threshold is None:
            threshold = self._stats_of("segment" if r == 0 else f"round-{r}-segment")["threshold"]
        return self.round_dir(r) / "segment.zarr", f"segmentation/{threshold_name(threshold)}"

    def segment(self, r: int) -> dict[str, Any]:
        """Fragments and graph of round r's affinities, then the segmentation at the
        configured threshold or at the one the painting chooses."""
        from connecto.tasks.segmentation.config import load_segment_config
        from connecto.tasks.segmentation.workflow import run_steps, segment_counts

        painted = self.config.threshold == "painted"
        thresholds = self.config.candidates if painted else [self.config.threshold]
        if r == 0:
            _, model = self._model_3d()
            checkpoint, steps = None, SEGMENT_STEPS
        else:
            checkpoint = self._checkpoint_of(f"round-{r}-train")
            model = TrainSetup(self.base, self.config.experiment, 1 + r).train_config()
            steps = ("predict", *SEGMENT_STEPS)
        path = self._segment_config(r, model.neighborhood, checkpoint, thresholds)
        figures: dict[str, Any] = {}
        if painted:  # graph first, then one segmentation at the painting's choice
            report = run_steps(path, steps[:-1], overwrite=True)
            choice = self._choose_threshold(path)
            threshold = choice.threshold
            path = self._segment_config(r, model.neighborhood, checkpoint, [threshold])
            extracted = run_steps(path, ("extract",), overwrite=True)
            report.warnings += [w for w in extracted.warnings if w not in report.warnings]
            figures = {
                "painted_scores": {
                    "voi_split": round(choice.chosen.voi_split, 4),
                    "voi_merge": round(choice.chosen.voi_merge, 4),
                    "arand": round(choice.chosen.arand, 4),
                },
                "painted_voi": {f"{t:g}": round(s.voi, 4) for t, s in choice.scores.items()},
            }
        else:
            report = run_steps(path, steps, overwrite=True)
            threshold = self.config.threshold
        config, base = load_segment_config(path)
        counts = segment_counts(config, base)
        container, dataset = self.segmentation_of(r, threshold)
        picture = write_overlay(
            (self.config.raw_container, self.config.raw_dataset), (container, dataset),
            self.round_dir(r) / "segmentation.png", roi=self.roi,
        )  # fmt: skip
        return {
            "threshold": threshold,
            "segments": counts.get(threshold),
            **figures,
            "warnings": report.warnings,
            "outputs": {
                "segmentation": f"{container}/{dataset}",
                "config": str(path),
                "picture": str(picture),
            },  # fmt: skip
        }

    def _choose_threshold(self, segment_config: Path) -> PaintedChoice:
        from connecto.tasks.segmentation.config import load_segment_config

        sections = self._stats_of("sparse-labels")["painted_sections"]
        config, _ = load_segment_config(segment_config)
        _, painting = self._painting()
        return choose_threshold(config, painting, sections, self.config.candidates)

    def pseudo_labels(self, r: int) -> dict[str, Any]:
        out = self.round_dir(r) / PSEUDO_LABELS
        figures: dict[str, Any] = {}
        if self.config.rounds.source == "painted-agglomeration":
            source, joined = self._painted_agglomeration(r - 1)
            figures["agglomeration"] = {"merged": joined.merged, "refused": joined.refused}
        else:
            source = self.segmentation_of(r - 1)
        report = make_pseudo_labels(source, (out, "labels"), self.config.rounds.filter,
                                    self.roi, self._painting_source())  # fmt: skip
        if report.kept_segments == 0:
            raise ConnectoError(
                f"round {r}: no segment of round {r - 1} passed the filter "
                f"({report.summary()}); loosen [rounds.filter]"
            )
        return {"kept_segments": report.kept_segments, "segments": report.segments,
                "kept_fraction": round(report.kept_fraction, 4), "dropped": report.dropped,
                **figures, "outputs": {"labels": f"{out}/labels"}}  # fmt: skip

    def _painted_agglomeration(self, r: int) -> tuple[tuple[Path, str], PaintedAgglomeration]:
        """Round r's fragments joined again under the painting's constraints, up to the
        threshold its segmentation used, written beside its segmentations."""
        from connecto.tasks.segmentation.config import load_segment_config

        config, _ = load_segment_config(self.round_dir(r) / "segment_config.toml")
        output = (self.round_dir(r) / "segment.zarr", "segmentation/painted_agglomeration")
        step = "segment" if r == 0 else f"round-{r}-segment"
        rule = self.config.rounds.filter
        joined = write_painted_agglomeration(
            config, self._painting()[1], self._stats_of(step)["threshold"], output,
            rule.painted_overlap, rule.max_size, self.roi,
        )  # fmt: skip
        return output, joined

    def train_round(self, r: int) -> dict[str, Any]:
        values = {
            **self._data_keys(),
            "labels_container": str(self.round_dir(r) / PSEUDO_LABELS),
            "labels_dataset": "labels",
            "sparse_labels": True,  # dropped segments are unknown, not background
            "unlabelled_edges": "boundary",  # but a kept segment is whole: its rim is real
            "train_roi": self.config.roi,
            "validation_roi": None,
            "test_roi": None,
        }
        checkpoint = self._train(1 + r, "segmentation", values, self.config.rounds)
        return {"checkpoint": str(checkpoint), "iterations": self.config.rounds.iterations}


def run_chain(
    path: Path, start: str | None = None, progress: bool = True, log: Callable[[str], None] = print
) -> list[StepOutcome]:
    """`connecto bootstrap run CONFIG [--from STEP]`."""
    from connecto.db.client import tracking_database

    chain = Chain(load_bootstrap_config(path), tracking_database(), progress)
    return chain.run(start, log)


def lineage(path: Path) -> list[dict[str, Any]]:
    """`connecto bootstrap lineage CONFIG`: the recorded steps, each after its parent."""
    from connecto.db.client import tracking_database

    config = load_bootstrap_config(path)
    base = Path(config.base).resolve()
    return list_lineage(tracking_database(), str(base), config.experiment)
