"""The training driver: `connecto train ITERATIONS` in a train setup.

Every task trains the same way: gunpowder's torch `Train` node at the end of the task's
pipeline, checkpoints `model_checkpoint_<it>` ({model_state_dict, optimizer_state_dict,
iteration}) every `save_every` and at the end, tensorboard scalars in `log/`, snapshots
every `snapshot_every` in `snapshots/batch_<it>.zarr`, the run tracked in MongoDB
`runs`. A rerun continues from the latest checkpoint, read and checked by the driver
before anything is built (a damaged one is an error naming it); the optimizer keeps the
config's learning rate, so a changed `learning_rate` applies on resuming. SIGINT/SIGTERM
stop after the current iteration with a checkpoint. A loss that becomes NaN or infinite
stops the training with an error and no checkpoint of the broken weights.

Tasks plug in through `connecto.tasks` (the registry): the driver asks it for the
`TaskParts` of the config's task and knows no task by name.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import gunpowder as gp
import numpy as np
import torch
import zarr
from tqdm import tqdm

from connecto import ConnectoError
from connecto.checkpoints import default_device, load_optimizer, load_weights, read_checkpoint
from connecto.db.tracking import git_commit, now, upsert_run
from connecto.experiment import TrainSetup
from connecto.locks import setup_lock
from connecto.processes import children_die_with_parent, process_record
from connecto.tasks import task_parts
from connecto.tasks.parts import TaskParts

CHECKPOINT_BASENAME = "model"  # gunpowder names checkpoints <basename>_checkpoint_<it>
NEVER = 2**62  # gunpowder's own checkpointing is off: the driver writes checkpoints


@dataclass(frozen=True)
class TrainResult:
    start_iteration: int
    iteration: int
    state: str  # finished | interrupted
    last_loss: float | None


def cpu_threads(worker: Any) -> int:
    """Threads for a CPU train step: the job's CPUs less those of the cache workers
    (more threads than free cores makes every step several times slower)."""
    return max(1, worker.num_cpus - worker.num_cache_workers)


# ---------------------------------------------------------------- checkpoints


class Diverged(ConnectoError):
    """The loss or the weights became NaN or infinite."""


def finite_weights(model: torch.nn.Module) -> bool:
    return all(
        bool(torch.isfinite(tensor).all())
        for tensor in model.state_dict().values()
        if tensor.is_floating_point()
    )


def resume_state(setup: TrainSetup, iteration: int) -> dict[str, Any]:
    """The checkpoint of `iteration`, checked (see `connecto.checkpoints`); the error
    says which earlier checkpoint deleting it would resume from."""
    earlier = [it for it in setup.checkpoints() if it < iteration]
    advice = (
        f"delete it to resume from {setup.checkpoint(earlier[-1]).name}"
        if earlier
        else "delete it to train from scratch"
    )
    return read_checkpoint(setup.checkpoint(iteration), "cpu", advice, optimizer=True)


def resume(setup: TrainSetup, iteration: int, parts: TaskParts) -> None:
    """Load the checkpoint of `iteration` into the task's model and optimizer (on the
    CPU; `ResumedTrain.start` moves the optimizer state along with the model)."""
    path = setup.checkpoint(iteration)
    state = resume_state(setup, iteration)
    advice = "restore the train_config it was trained with, or move the checkpoints away"
    load_weights(parts.model, state, path, "the model settings of train_config", advice)
    load_optimizer(parts.optimizer, state, path, advice)


class ResumedTrain(gp.torch.Train):
    """gunpowder's torch `Train` node, starting at the iteration the driver resumed
    from: gunpowder would load the latest `<checkpoint_basename>_checkpoint_*` itself,
    unchecked, and with the learning rate saved in it rather than the config's."""

    def __init__(self, *args: Any, iteration: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_iteration = iteration

    def _get_latest_checkpoint(self, basename: str) -> tuple[None, int]:
        return None, self.resume_iteration

    def start(self) -> None:
        super().start()  # moves the model to the device
        # the optimizer state loaded on the CPU follows its parameters to the device
        self.optimizer.load_state_dict(self.optimizer.state_dict())


def save_checkpoint(
    setup: TrainSetup, iteration: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Path:
    """Written to a hidden temporary file first, so a crash never leaves a truncated
    `model_checkpoint_<it>` for the next run to resume from."""
    path = setup.checkpoint(iteration)
    temporary = path.with_name(f".{path.name}.partial")
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "iteration": iteration,
        },
        temporary,
    )
    os.replace(temporary, path)
    return path


def write_snapshot(
    setup: TrainSetup, iteration: int, arrays: dict[str, tuple[np.ndarray, dict]]
) -> Path:
    path = setup.snapshot_dir / f"batch_{iteration}.zarr"
    root = zarr.open_group(str(path), mode="w")
    for name, (data, attrs) in arrays.items():
        array = root.create_dataset(name, data=np.asarray(data), overwrite=True)
        array.attrs.update({**attrs, "iteration": iteration})
        if "voxel_size" in attrs:
            array.attrs["resolution"] = attrs["voxel_size"]
        if attrs.get("png"):  # a 2D uint8 image the task wants viewable as it is
            import matplotlib.pyplot as plt

            png = setup.snapshot_dir / f"batch_{iteration}_{name}.png"
            plt.imsave(png, np.asarray(data), cmap="gray", vmin=0, vmax=255)
    return path


# ---------------------------------------------------------------- stopping


class StopRequest:
    """SIGINT/SIGTERM ask the training loop to stop after the current iteration (a
    second SIGINT interrupts at once). Worker processes forked from here ignore SIGINT
    (the terminal sends it to all of them) and die on SIGTERM as usual, so gunpowder
    can still stop them."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.owner = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.owner:
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


# ---------------------------------------------------------------- logging


@dataclass
class Window:
    """Running sums between two log points."""

    started: float = field(default_factory=time.monotonic)
    count: int = 0
    sums: dict[str, float] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        self.count += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        means = {k: v / max(self.count, 1) for k, v in self.sums.items()}
        return {**means, "iterations_per_second": self.count / elapsed}


def _seed(seed: int | None, iteration: int) -> None:
    if seed is None:
        return
    import random

    # offset by the iteration so a resumed run does not replay the same random stream
    random.seed(seed + iteration)
    np.random.seed((seed + iteration) % 2**32)
    torch.manual_seed(seed + iteration)


# ---------------------------------------------------------------- driver


def train(
    setup: TrainSetup, iterations: int, progress: bool = True, device: str | None = None
) -> TrainResult:
    """Train the setup until `iterations` in total, resuming from its latest checkpoint;
    one process per setup, so two runs never overwrite each other's checkpoints."""
    with setup_lock(setup.path, "connecto train"):
        return _train(setup, iterations, progress, device)


def _train(setup: TrainSetup, iterations: int, progress: bool, device: str | None) -> TrainResult:
    if iterations < 1:
        raise ConnectoError(f"ITERATIONS {iterations}: must be at least 1")
    config = setup.train_config()
    worker = setup.worker_config()
    done = (setup.checkpoints() or [0])[-1]
    if done >= iterations:
        return TrainResult(done, done, "finished", None)
    _seed(config.seed, done)
    # all checks, before anything is written
    parts = task_parts(config, worker, str(setup.path / "train_config"))
    if done:
        resume(setup, done, parts)
    logging.getLogger("gunpowder").setLevel(logging.WARNING)  # per-iteration INFO lines
    device = device or default_device()
    if device == "cpu":
        torch.set_num_threads(cpu_threads(worker))
    return TrainingRun(setup, config, parts, done, iterations, device).run(progress)


class TrainingRun:
    """One `connecto train` from `done` to `iterations`: gunpowder's Train node at the end
    of the task's pipeline, checkpoints, tensorboard, snapshots and the run document."""

    def __init__(
        self, setup: TrainSetup, config: Any, parts: TaskParts, done: int, iterations: int,
        device: str,
    ) -> None:  # fmt: skip
        from connecto.db.client import tracking_database

        self.setup, self.config, self.parts = setup, config, parts
        self.done, self.iterations = done, iterations
        self.iteration = self.saved = done
        self.last_loss: float | None = None
        self.stop = StopRequest()
        self.db = tracking_database()
        self.record({
            "experiment": setup.experiment, "base": str(setup.base), "train_id": setup.train_id,
            "task": config.task, "config": config.model_dump(mode="json"), "state": "running",
            "iteration": done, "target_iterations": iterations, "device": device,
            "git_commit": git_commit(), "started": now(), "error": None, **process_record(),
        })  # fmt: skip
        self.node = ResumedTrain(
            iteration=done, model=parts.model, loss=parts.loss, optimizer=parts.optimizer,
            inputs=parts.inputs, outputs=parts.outputs, loss_inputs=parts.loss_inputs,
            array_specs=parts.array_specs,
            checkpoint_basename=str(setup.path / CHECKPOINT_BASENAME),
            save_every=NEVER, device=device,
        )  # fmt: skip
        self.pipeline = parts.pipeline + self.node

    def record(self, fields: dict[str, Any]) -> None:
        upsert_run(self.db, str(self.setup.path), fields)

    @property
    def learning_rate(self) -> float:
        return self.node.optimizer.param_groups[0]["lr"]

    def run(self, progress: bool) -> TrainResult:
        from torch.utils.tensorboard import SummaryWriter

        self.setup.log_dir.mkdir(exist_ok=True)
        writer = SummaryWriter(str(self.setup.log_dir))
        bar = tqdm(
            total=self.iterations, initial=self.done, desc="train", unit="it",
            disable=not progress, dynamic_ncols=True,
        )  # fmt: skip
        try:
            with self.stop.installed(), children_die_with_parent(), gp.build(self.pipeline):
                self.iteration = self.saved = self.node.iteration  # = done: resumed here
                self._loop(bar, writer)
                bar.close()
                self.checkpoint()
        except BaseException as error:
            self._record_failure(error)
            raise
        finally:
            bar.close()  # its last line ends before an error message
            writer.close()
        state = "finished" if self.iteration >= self.iterations else "interrupted"
        self.record({
            "state": state, "iteration": self.iteration, "last_loss": self.last_loss,
            "stopped_by": self.stop.requested,
        })  # fmt: skip
        return TrainResult(self.done, self.iteration, state, self.last_loss)

    def _loop(self, bar: tqdm, writer: Any) -> None:
        window = Window()
        while self.iteration < self.iterations and not self.stop.requested:
            try:
                batch = self.pipeline.request_batch(self.parts.request)
            except Exception:
                if self.stop.requested:  # workers stopped by the same signal
                    break
                raise
            self.iteration = batch.iteration
            self.last_loss = float(batch.loss)
            if not math.isfinite(self.last_loss):
                raise self._diverged(f"the loss is {self.last_loss}")
            metrics = self.parts.metrics(batch) if self.parts.metrics else {}
            window.add({"loss": self.last_loss, **metrics})
            bar.update(1)
            bar.set_postfix(loss=f"{self.last_loss:.4f}")
            if self.iteration % self.config.save_every == 0:
                self.checkpoint()
            if self.parts.snapshot and self.iteration % self.config.snapshot_every == 0:
                write_snapshot(self.setup, self.iteration, self.parts.snapshot(batch))
            if self.iteration % self.config.log_every == 0 or self.iteration == self.iterations:
                self._log(window.means(), writer)
                window = Window()

    def _log(self, means: dict[str, float], writer: Any) -> None:
        means["learning_rate"] = self.learning_rate
        for key, value in means.items():
            writer.add_scalar(key, value, self.iteration)
        writer.flush()
        self.record({
            "iteration": self.iteration, "last_loss": self.last_loss,
            "metrics": {k: float(v) for k, v in means.items()},
        })  # fmt: skip

    def _diverged(self, what: str) -> Diverged:
        previous = self.setup.checkpoint(self.saved).name if self.saved else "scratch"
        return Diverged(
            f"training diverged: {what} at iteration {self.iteration} (no checkpoint of these "
            f"weights written); lower learning_rate (now {self.learning_rate:g}) in the train "
            f"config and rerun to resume from {previous}"
        )

    def checkpoint(self) -> None:
        if self.iteration > self.saved:
            if not finite_weights(self.node.model):
                raise self._diverged("the weights became NaN or infinite")
            save_checkpoint(self.setup, self.iteration, self.node.model, self.node.optimizer)
            self.saved = self.iteration

    def _record_failure(self, error: BaseException) -> None:
        checkpoint_error = None
        try:
            if not isinstance(error, Diverged):  # the weights are broken: keep the last
                self.checkpoint()
        except Exception as failure:  # keep the original error
            checkpoint_error = str(failure)
        interrupted = isinstance(error, KeyboardInterrupt)
        self.record({
            "state": "interrupted" if interrupted else "failed", "iteration": self.saved,
            "last_loss": self.last_loss, "error": None if interrupted else _describe(error),
            "checkpoint_error": checkpoint_error,
        })  # fmt: skip


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectoError):  # a message for the user, as the CLI prints it
        return str(error)
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()
