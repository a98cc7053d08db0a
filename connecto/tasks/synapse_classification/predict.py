"""`connecto predict`: classify every synapse of a split part with a trained checkpoint.

Run from a train setup, it creates (or reuses) one predict setup per checkpoint iteration
and runs each; run from a predict setup, it runs that one. A run reads the synapses of the
split part from MongoDB, crops raw around each from zarr, batches them through the model
(eval mode, no gradients) and writes one document per synapse to
`<data_db>_predictions.<split_name>_<experiment>_t<train_id>_p<predict_number>` (the
predict config's `predict_number`; layout in `connecto.db.predictions`, readable by
synister).

A run that was killed is resumed: only synapses without a prediction are predicted, and
the unique `synapse_id` index makes a duplicate impossible. A collection that synister
pre-created (`{synapse_id, prediction: None}` documents) is filled in place. A complete
collection is left alone unless `overwrite`. N workers (processes) each take a disjoint
share of the missing synapses and report to one progress bar. Every run is tracked in
`predictions` of the tracking database (state, expected and written counts).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymongo.collection import Collection
from pymongo.database import Database
from tqdm import tqdm

from connecto import ConnectoError
from connecto.checkpoints import default_device, read_checkpoint
from connecto.db.client import connect, get_database, resolve_uri, tracking_database
from connecto.db.predictions import (
    collection_owner,
    collection_state,
    missing_synapse_ids,
    prediction_document,
    prediction_target,
    prepare_collection,
    refuse_foreign_collection,
    track_prediction_run,
    write_predictions,
)
from connecto.db.tracking import now
from connecto.experiment import PredictSetup, TrainSetup, find_setup
from connecto.locks import setup_lock
from connecto.processes import die_with_parent, process_record
from connecto.settings import load_settings
from connecto.tasks.synapse_classification.config import SynapsePredictConfig
from connecto.tasks.synapse_classification.setups import prepare_prediction

SPLIT_PARTS = ("validation", "test")


@dataclass(frozen=True)
class PredictionRun:
    """The outcome of one predict setup's run."""

    setup: PredictSetup
    database: str
    collection: str
    iteration: int
    split_part: str
    expected: int
    resumed_from: int  # documents already there when the run started
    written: int  # documents written by this run


# ---------------------------------------------------------------- which setups


def _matching_setup(train: TrainSetup, iteration: int, split_part: str) -> PredictSetup | None:
    for setup in train.predict_setups():
        config = setup.predict_config()
        if config.iteration == iteration and config.split_part == split_part:
            return setup
    return None


def predict_setups_for(
    train: TrainSetup,
    split_part: str,
    iterations: Sequence[int] | None,
    all_checkpoints: bool,
    overwrite: bool = False,
    number_by_iteration: bool = False,
) -> list[PredictSetup]:
    """The predict setups of `train` for these iterations (default: the latest
    checkpoint), reusing existing ones for the same checkpoint and split part. Nothing is
    created when a request is refused (an absent checkpoint, a complete collection)."""
    available = train.checkpoints()
    if all_checkpoints:
        chosen = available
    elif iterations:
        chosen = list(dict.fromkeys(iterations))
    else:
        chosen = available[-1:]
    if not chosen:
        raise ConnectoError(f"{train.path}: no model_checkpoint_<N> yet (run `connecto train`)")
    absent = [it for it in chosen if it not in available]
    if absent:
        raise ConnectoError(
            f"{train.path}: no checkpoint for iteration(s) {absent}; "
            f"available: {available or 'none'}"
        )
    existing = {it: _matching_setup(train, it, split_part) for it in chosen}
    reused = [(s, s.predict_config()) for s in existing.values() if s is not None]
    new = [it for it, setup in existing.items() if setup is None]
    # the new setups are checked with the reused ones, before any of them is created
    created = prepare_prediction(
        train,
        new,
        split_part,
        check=lambda planned: refuse(reused + planned, overwrite),
        number_by_iteration=number_by_iteration,
    )
    made = iter(setup for setup, _ in created)
    return [setup if setup is not None else next(made) for setup in existing.values()]


def predict(
    path: Path,
    split: str | None = None,
    iterations: Sequence[int] | None = None,
    all_checkpoints: bool = False,
    overwrite: bool = False,
    workers: int = 1,
    batch_size: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    number_by_iteration: bool = False,
) -> list[PredictionRun]:
    """`connecto predict` run in `path` (a train or a predict setup); new predict setups
    number their collections by iteration with `number_by_iteration` (see
    `prepare_prediction`)."""
    if split is not None and split not in SPLIT_PARTS:
        raise ConnectoError(f"--split {split!r}: expected validation or test")
    check_run_options(workers, batch_size)
    setup = find_setup(path)
    if isinstance(setup, PredictSetup):
        if iterations or all_checkpoints:
            raise ConnectoError(
                f"{setup.path} is a predict setup for one checkpoint; --iterations and "
                "--all-checkpoints are for train setups"
            )
        part = setup.predict_config().split_part
        if split is not None and split != part:
            raise ConnectoError(f"{setup.path} predicts the {part} part, not --split {split}")
        setups = [setup]
        refuse_complete(setups, overwrite)
    else:
        if split is None:
            raise ConnectoError("give --split validation or --split test")
        setups = predict_setups_for(
            setup, split, iterations, all_checkpoints, overwrite, number_by_iteration
        )
    runs = []
    for predict_setup in setups:
        log(f"predicting with {predict_setup.path}")
        runs.append(run_prediction(predict_setup, overwrite, workers, batch_size, progress))
    return runs


# ---------------------------------------------------------------- one run


def split_synapses(config: SynapsePredictConfig) -> list[dict[str, Any]]:
    """The synapses of the configured split part whose class is one of `synapse_types`,
    each with its class as `label`, in synapse id order."""
    from connecto.db.synapses import synapses_by_class

    grouped = synapses_by_class(
        get_database(config.db_name_data),
        config.split_name,
        config.split_part,
        list(config.synapse_types),
    )
    synapses = [
        {
            "synapse_id": int(s["synapse_id"]),
            "skeleton_id": int(s["skeleton_id"]),
            "z": float(s["z"]),
            "y": float(s["y"]),
            "x": float(s["x"]),
            "label": label,
        }
        for label, members in grouped.items()
        for s in members
    ]
    return sorted(synapses, key=lambda s: s["synapse_id"])


def check_run_options(workers: int, batch_size: int | None) -> None:
    if workers < 1:
        raise ConnectoError(f"--workers {workers}: must be at least 1")
    if batch_size is not None and batch_size < 1:
        raise ConnectoError(f"--batch-size {batch_size}: must be at least 1")


def refuse_complete(setups: Sequence[PredictSetup], overwrite: bool) -> None:
    refuse([(setup, setup.predict_config()) for setup in setups], overwrite)


def refuse(setups: Sequence[tuple[PredictSetup, SynapsePredictConfig]], overwrite: bool) -> None:
    """Before predicting (or creating a predict setup): refuse if a checkpoint is damaged,
    if the database does not answer, if another setup owns a setup's collection, if the
    split part has no synapses, or if a collection is already complete (and neither
    --overwrite nor its config allows replacing it)."""
    complete = []
    for setup, config in setups:
        if Path(config.train_checkpoint).is_file():  # an absent one is named by the caller
            read_checkpoint(config.train_checkpoint)  # damaged: refused before any write
        refuse_foreign_collection(tracking_database(), setup.path, config)
        synapses = required_synapses(config)
        if overwrite or config.overwrite:
            continue
        database, name = prediction_target(config)
        expected = [s["synapse_id"] for s in synapses]
        if collection_state(get_database(database)[name], expected) == "complete":
            complete.append(f"{database}.{name} (iteration {config.iteration})")
    if complete:
        raise ConnectoError(
            f"{', '.join(complete)} already holds predictions for all synapses; "
            "use --overwrite to predict again"
        )


def required_synapses(config: SynapsePredictConfig) -> list[dict[str, Any]]:
    """`split_synapses`, refused when there are none."""
    synapses = split_synapses(config)
    if not synapses:
        raise no_synapses(config)
    return synapses


def no_synapses(config: SynapsePredictConfig) -> ConnectoError:
    return ConnectoError(
        f"split {config.split_name!r} has no {config.split_part} synapses of the classes "
        f"{config.synapse_types} in database {config.db_name_data!r}"
    )


def run_prediction(
    setup: PredictSetup,
    overwrite: bool = False,
    workers: int = 1,
    batch_size: int | None = None,
    progress: bool = True,
) -> PredictionRun:
    """Predict (or finish predicting) the split part of one predict setup; one process
    per setup, so two runs never predict the same synapses."""
    with setup_lock(setup.path, "connecto predict"):
        return _run_prediction(setup, overwrite, workers, batch_size, progress)


@dataclass(frozen=True)
class _Run:
    """One run of a predict setup, its collection prepared: where the predictions go and
    which synapses are still to predict."""

    setup: PredictSetup
    config: SynapsePredictConfig
    tracking: Database
    database: str
    name: str
    collection: Collection
    expected_ids: list[int]  # synapses of the split part
    todo: list[dict[str, Any]]  # those without a prediction yet

    @property
    def expected(self) -> int:
        return len(self.expected_ids)

    @property
    def resumed_from(self) -> int:
        return self.expected - len(self.todo)


def _run_prediction(
    setup: PredictSetup, overwrite: bool, workers: int, batch_size: int | None, progress: bool
) -> PredictionRun:
    check_run_options(workers, batch_size)
    config = setup.predict_config()
    checkpoint = Path(config.train_checkpoint)
    if not checkpoint.is_file():
        raise ConnectoError(f"{setup.path}: checkpoint {checkpoint} does not exist")
    batch = batch_size or config.batch_size
    run = _prepare_run(setup, config, overwrite)
    track_prediction_run(run.tracking, str(setup.path), _started_record(run, workers, batch))
    job = _job_for(run, workers, batch)
    _predict_tracked(run, job, workers, progress)
    return PredictionRun(
        setup, run.database, run.name, config.iteration, config.split_part, run.expected,
        run.resumed_from, len(run.todo),
    )  # fmt: skip


def _prepare_run(setup: PredictSetup, config: SynapsePredictConfig, overwrite: bool) -> _Run:
    """Refuse a foreign collection, then open (or drop, with `overwrite`) this setup's
    collection and find the synapses it still lacks."""
    synapses = required_synapses(config)
    database, name = prediction_target(config)
    tracking = tracking_database()
    refuse_foreign_collection(tracking, setup.path, config)  # before it is touched
    expected = [s["synapse_id"] for s in synapses]
    collection, missing_ids = prepare_collection(
        get_database(database), name, expected, overwrite or config.overwrite
    )
    missing = set(missing_ids)
    todo = [s for s in synapses if s["synapse_id"] in missing]
    return _Run(setup, config, tracking, database, name, collection, expected, todo)


def _started_record(run: _Run, workers: int, batch: int) -> dict[str, Any]:
    """The tracking document of a run that starts now."""
    setup, config = run.setup, run.config
    return {
        "experiment": setup.experiment,
        "base": str(setup.base),
        "train_id": setup.train_id,
        "predict_id": setup.predict_id,
        "iteration": config.iteration,
        "checkpoint": str(Path(config.train_checkpoint)),
        "data_db": config.db_name_data,
        "split_name": config.split_name,
        "split_part": config.split_part,
        "predictions_db": run.database,
        "collection": run.name,
        "owner": collection_owner(setup.path, config),
        "class_names": config.class_names,
        "expected": run.expected,
        "written": run.resumed_from,
        "state": "running",
        "started": now(),
        "workers": workers,
        "batch_size": batch,
        "error": None,
        **process_record(),
    }


def _job_for(run: _Run, workers: int, batch: int) -> _Job:
    return _Job(
        config=run.config.model_dump(mode="json"),
        mongo_uri=resolve_uri(load_settings()),
        timeout_s=load_settings().mongo_timeout_s,
        database=run.database,
        collection=run.name,
        batch_size=batch,
        threads=prediction_threads(run.setup.worker_config().num_cpus, workers),
    )


def _predict_tracked(run: _Run, job: _Job, workers: int, progress: bool) -> None:
    """Predict what is left; however that ends, the tracking document gets the state
    (done, failed or interrupted) and the count of documents actually written."""
    state, error = "done", None
    try:
        _predict_with_progress(run, job, workers, progress)
    except KeyboardInterrupt:
        state, error = "interrupted", "interrupted"
        raise
    except BaseException as failure:
        state, error = "failed", str(failure) or type(failure).__name__
        raise
    finally:
        state, error = _track_finished(run, state, error)
    if state != "done":
        raise ConnectoError(f"{run.setup.path}: {error}")


def _predict_with_progress(run: _Run, job: _Job, workers: int, progress: bool) -> None:
    with tqdm(
        total=run.expected, initial=run.resumed_from, unit="synapse",
        desc=f"predict {run.name}", disable=not progress, dynamic_ncols=True,
    ) as bar:  # fmt: skip
        if workers == 1 or len(run.todo) <= job.batch_size:
            predict_share(job, run.todo, bar.update)
        else:
            _run_workers(job, run.todo, workers, bar.update)


def _track_finished(run: _Run, state: str, error: str | None) -> tuple[str, str | None]:
    """Record how the run ended; a run that ended without error but left synapses without
    a prediction failed. Only the expected synapses' predictions count: a collection
    synister pre-created also holds synapses of other classes, still to do."""
    written = run.expected - len(missing_synapse_ids(run.collection, run.expected_ids))
    if state == "done" and written < run.expected:
        state, error = "failed", f"{run.expected - written} synapses have no prediction"
    track_prediction_run(
        run.tracking, str(run.setup.path),
        {"state": state, "written": written, "finished": now(), "error": error},
    )  # fmt: skip
    return state, error


# ---------------------------------------------------------------- the work itself


@dataclass(frozen=True)
class _Job:
    """Everything a worker needs, picklable: it connects and loads on its own."""

    config: dict[str, Any]
    mongo_uri: str
    timeout_s: float
    database: str
    collection: str
    batch_size: int
    threads: int


def prediction_threads(num_cpus: int, workers: int) -> int:
    """Torch threads per worker: the job's CPUs (at most the machine's) less one for
    reading crops and writing documents, shared by the workers. More threads than free
    cores makes every forward pass several times slower."""
    cpus = min(num_cpus, os.cpu_count() or 1)
    return max(1, (cpus - 1) // workers)


def predict_share(job: _Job, synapses: list[dict[str, Any]], report: Callable[[int], Any]) -> int:
    """Predict `synapses` batch by batch: crops are read and documents written in
    background threads while the model runs. Each batch is one unordered write
    (`write_predictions`), so a kill loses at most the batches in flight. Returns how
    many documents were written."""
    if not synapses:
        return 0
    from connecto.data.volumes import open_raw, read_crop
    from connecto.tasks.synapse_classification.model import load_model_from_checkpoint

    torch.set_num_threads(job.threads)
    config = SynapsePredictConfig.model_validate(job.config)
    device = default_device()
    model = load_model_from_checkpoint(config, config.train_checkpoint, device)
    raw = open_raw(config.raw_container, config.raw_dataset)
    collection = connect(job.mongo_uri, job.timeout_s)[job.database][job.collection]
    shape = config.input_shape

    def read(batch: list[dict[str, Any]]) -> np.ndarray:
        return np.stack([read_crop(raw, (s["z"], s["y"], s["x"]), shape) for s in batch])

    batches = [synapses[i : i + job.batch_size] for i in range(0, len(synapses), job.batch_size)]
    written = 0
    with ThreadPoolExecutor(max_workers=2) as pool, torch.inference_mode():
        crops: Future[np.ndarray] = pool.submit(read, batches[0])
        pending: Future[int] | None = None
        for k, batch in enumerate(batches):
            data = crops.result()
            if k + 1 < len(batches):
                crops = pool.submit(read, batches[k + 1])
            documents = _classify(model, device, data, batch, config)
            if pending is not None:
                written += pending.result()
                report(len(batches[k - 1]))
            pending = pool.submit(write_predictions, collection, documents)
        written += pending.result() if pending is not None else 0
        report(len(batches[-1]))
    return written


def _classify(
    model: torch.nn.Module,
    device: str,
    data: np.ndarray,
    batch: list[dict[str, Any]],
    config: SynapsePredictConfig,
) -> list[dict[str, Any]]:
    """One prediction document per synapse of `batch`, from its crops `data`."""
    logits = model(torch.from_numpy(data).to(device))
    probabilities = torch.softmax(logits, dim=1).cpu().numpy()
    return [
        prediction_document(s, p, config.class_names, config.iteration)
        for s, p in zip(batch, probabilities, strict=True)
    ]


def _worker(job: _Job, synapses: list[dict[str, Any]], messages: mp.Queue) -> None:
    die_with_parent()  # a killed `connecto predict` must not leave its workers predicting
    try:
        predict_share(job, synapses, lambda n: messages.put(("done", n)))
        messages.put(("finished", 0))
    except BaseException as error:  # reported to the parent, which raises it
        detail = str(error) if isinstance(error, ConnectoError) else traceback.format_exc()
        messages.put(("error", detail))


def _run_workers(
    job: _Job, synapses: list[dict[str, Any]], workers: int, report: Callable[[int], Any]
) -> None:
    """N processes, each a disjoint share, one progress bar fed through a queue."""
    context = mp.get_context("spawn")  # fresh interpreters: no forked MongoDB clients
    messages: mp.Queue = context.Queue()
    shares = [synapses[i::workers] for i in range(workers)]
    processes = [
        context.Process(target=_worker, args=(job, share, messages), daemon=True)
        for share in shares
        if share
    ]
    for process in processes:
        process.start()
    finished = 0
    try:
        while finished < len(processes):
            try:
                kind, value = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise ConnectoError(
                        f"a prediction worker died (exit code {dead[0].exitcode})"
                    ) from None
                continue
            if kind == "done":
                report(value)
            elif kind == "finished":
                finished += 1
            else:
                raise ConnectoError(f"a prediction worker failed: {value}")
    finally:
        for process in processes:
            if process.is_alive() and finished < len(processes):
                process.terminate()
            process.join()
