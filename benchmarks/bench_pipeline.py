"""Synapse training data pipeline throughput at synister's default shape.

synister's net reads 16x160x160 voxels at 40x4x4 nm in batches of 8. On a GPU one train
step of that VGG takes tens of milliseconds, so the data pipeline must deliver tens of
batches per second; on a CPU a step takes seconds and the data never bounds training.
Measured here, on the synthetic benchmark volume:

(a) batches per second of the augmented pipeline alone (no model step), in one process
    (= per cache worker) and with 1, 2 and the default number of cache workers;
(b) the raw read rate of the same crops straight from zarr, without augmentation, which
    bounds the pipeline: the direct read (`read_roi`, shared with prediction's `read_crop`)
    and normalisation into a batch that the pipeline's source does; funlib's dask-backed
    `to_ndarray` for reference;
(c) how many cache workers reach 20 batches per second at the measured per-worker rate.

The rates compared in (a) and (b) are measured in alternating rounds in one process, so
that the load of a shared machine weighs on each alike, and both decode chunks on one
thread, as a cache worker does (`connecto.tasks.parts` turns blosc's threads off).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import gunpowder as gp
import numpy as np
import zarr

from connecto.config import WorkerConfig
from connecto.data.ingest import create_volume
from connecto.data.synthetic import DEFAULT_VOXEL_SIZE, make_volume
from connecto.data.volumes import (
    NETWORK_RANGE,
    crop_roi,
    normalize_raw,
    open_raw,
    read_roi,
    scale_raw,
)
from connecto.tasks.synapse_classification.pipeline import batch_request, data_pipeline

INPUT_SHAPE = (16, 160, 160)
BATCH_SIZE = 8
TARGET_BATCHES_PER_SECOND = 20.0
MEASURE_SECONDS = 10.0
ROUNDS = 3


def _volume(directory: Path) -> tuple[Path, dict[str, list[tuple[float, float, float]]]]:
    raw, synapses = make_volume(400, 3, seed=0)
    container = directory / "bench.zarr"
    array = create_volume(
        zarr.open_group(str(container), mode="w"), "raw", raw.shape, raw.dtype,
        DEFAULT_VOXEL_SIZE, (0, 0, 0),
    )  # fmt: skip
    array[:] = raw
    locations: dict[str, list[tuple[float, float, float]]] = {"0": [], "1": [], "2": []}
    for synapse in synapses:
        position = tuple(
            float(v * s) for v, s in zip(synapse.voxel, DEFAULT_VOXEL_SIZE, strict=True)
        )
        locations[str(synapse.class_index)].append(position)  # type: ignore[arg-type]
    return container, locations


def _rate(fetch: Callable[[], object], seconds: float = MEASURE_SECONDS, warmup: int = 1) -> float:
    for _ in range(warmup):
        fetch()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fetch()
        count += 1
    return count / (time.perf_counter() - start)


def _alternating_rates(fetches: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Batches per second of each fetch over MEASURE_SECONDS, in ROUNDS alternating rounds."""
    counts = dict.fromkeys(fetches, 0)
    elapsed = dict.fromkeys(fetches, 0.0)
    for fetch in fetches.values():
        fetch()  # warm up
    for _ in range(ROUNDS):
        for name, fetch in fetches.items():
            start = time.perf_counter()
            while time.perf_counter() - start < MEASURE_SECONDS / ROUNDS:
                fetch()
                counts[name] += 1
            elapsed[name] += time.perf_counter() - start
    return {name: counts[name] / elapsed[name] for name in fetches}


def raw_reads(
    container: Path, locations: dict[str, list]
) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """Batches of plain crops (read + normalise), no augmentation: straight from zarr
    into the batch, and through funlib's `to_ndarray` (dask)."""
    array = open_raw(container, "raw")
    every = [p for points in locations.values() for p in points]
    rng = np.random.default_rng(0)

    def direct() -> np.ndarray:
        batch = np.empty((BATCH_SIZE, *INPUT_SHAPE), dtype=np.float32)
        for sample, i in zip(batch, rng.integers(0, len(every), BATCH_SIZE), strict=True):
            roi = crop_roi(array, every[i], INPUT_SHAPE)
            scale_raw(read_roi(array, roi), NETWORK_RANGE, out=sample)
        return batch

    def funlib() -> np.ndarray:
        picks = rng.integers(0, len(every), BATCH_SIZE)
        return np.stack([
            normalize_raw(array.to_ndarray(crop_roi(array, every[i], INPUT_SHAPE), fill_value=0))
            for i in picks
        ])  # fmt: skip

    return direct, funlib


def pipeline_fetch(
    stack: ExitStack, container: Path, locations: dict[str, list], augment: bool, workers: int
) -> Callable[[], gp.Batch]:
    """Requests batches from a pipeline built for as long as `stack` is open."""
    array = open_raw(container, "raw")
    pipeline = data_pipeline(array, locations, list(locations), BATCH_SIZE, augment, workers)
    request = batch_request(INPUT_SHAPE, DEFAULT_VOXEL_SIZE)
    stack.enter_context(gp.build(pipeline))
    return lambda: pipeline.request_batch(request)


def pipeline_rate(
    container: Path, locations: dict[str, list], augment: bool, workers: int
) -> float:
    with ExitStack() as stack:
        fetch = pipeline_fetch(stack, container, locations, augment, workers)
        # workers fill their cache first: measure the steady state
        return _rate(fetch, warmup=max(2, 2 * workers))


def main() -> None:
    cpus = os.cpu_count() or 1
    default_workers = WorkerConfig().num_cache_workers
    print(f"synapse pipeline: input {INPUT_SHAPE} voxels at {DEFAULT_VOXEL_SIZE} nm, "
          f"batch {BATCH_SIZE}, {cpus} CPU cores, no GPU on this machine")  # fmt: skip
    with tempfile.TemporaryDirectory() as directory:
        container, locations = _volume(Path(directory))
        scaling = {
            workers: pipeline_rate(container, locations, augment=True, workers=workers)
            for workers in sorted({1, 2, default_workers})
        }
        direct, funlib = raw_reads(container, locations)
        with ExitStack() as stack:
            rates = _alternating_rates({
                "raw": direct,
                "funlib": funlib,
                "plain": pipeline_fetch(stack, container, locations, False, 0),
                "augmented": pipeline_fetch(stack, container, locations, True, 0),
            })  # fmt: skip
        raw, plain, augmented = rates["raw"], rates["plain"], rates["augmented"]
        print(f"(b) raw zarr read rate (no augmentation):   {raw:7.2f} batches/s")
        print(f"    the same through funlib/dask to_ndarray:  {rates['funlib']:7.2f} batches/s")
        print(f"    pipeline without augmentation, 1 process: {plain:7.2f} batches/s "
              f"({plain / raw:.2f} of raw)")  # fmt: skip
        print(f"(a) augmented pipeline, 1 process (per worker): {augmented:7.2f} batches/s "
              f"({augmented / raw:.2f} of raw; goal >= 0.5)")  # fmt: skip
        for workers, rate in scaling.items():
            print(f"    augmented pipeline, {workers} cache workers: {rate:7.2f} batches/s "
                  f"({rate / augmented:.2f}x one process)")  # fmt: skip
        needed = math.ceil(TARGET_BATCHES_PER_SECOND / augmented)
        print(f"(c) {TARGET_BATCHES_PER_SECOND:.0f} batches/s needs about {needed} cache workers "
              f"(one core each) at {augmented:.2f} batches/s per worker")  # fmt: skip


if __name__ == "__main__":
    main()
