"""What a task gives the training driver: `TaskParts`.

A task's `pipeline.task_parts(config, worker_config, source)` checks everything that can
fail before training starts (raising `ConnectoError` naming the config key) and returns
the model, loss, optimizer, the gunpowder pipeline up to the `Train` node, the request,
the `Train` node's array mappings, what a snapshot holds and the metrics of a batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import gunpowder as gp
import numpy as np
import torch
from numcodecs import blosc

# funlib reads arrays through dask. Its thread pool costs more than a small crop's read, and
# a pool started before gunpowder's PreCache forks its workers deadlocks them (the child
# inherits a locked queue), so every pipeline reads synchronously.
dask.config.set(scheduler="synchronous")
# Cache workers (processes) are the pipelines' parallelism: blosc's own decoding threads,
# min(8, cores) in every process, would only oversubscribe the cores the workers share.
blosc.use_threads = False


@dataclass
class TaskParts:
    """What a task gives the driver (see the module docstring)."""

    model: torch.nn.Module
    loss: torch.nn.Module
    optimizer: torch.optim.Optimizer
    pipeline: gp.Pipeline
    request: gp.BatchRequest
    inputs: dict[str | int, gp.ArrayKey]
    outputs: dict[str | int, gp.ArrayKey]
    loss_inputs: dict[str | int, gp.ArrayKey]
    array_specs: dict[gp.ArrayKey, gp.ArraySpec] = field(default_factory=dict)
    # batch -> {dataset name: (data, zarr attributes)}
    snapshot: Callable[[gp.Batch], dict[str, tuple[np.ndarray, dict]]] | None = None
    # batch -> {metric name: value}, logged to tensorboard and the run document
    metrics: Callable[[gp.Batch], dict[str, float]] | None = None


CACHE_SIZE_PER_WORKER = 4


def stacked(pipeline: gp.Pipeline, batch_size: int, cache_workers: int) -> gp.Pipeline:
    """`pipeline` in batches of `batch_size`, made by `cache_workers` processes (none: in
    the training process)."""
    pipeline += gp.Stack(batch_size)
    if cache_workers > 0:
        pipeline += gp.PreCache(
            cache_size=CACHE_SIZE_PER_WORKER * cache_workers, num_workers=cache_workers
        )
    return pipeline
