"""`connecto bootstrap run` end to end on a small synthetic volume painted on one section:
every step runs with tiny networks, the lineage is in MongoDB with each step's parent, a
second run redoes nothing, and `--from` redoes a step and those after it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from funlib.persistence import open_ds, prepare_ds
from pymongo import MongoClient

from connecto.bootstrap.chain import Chain, load_bootstrap_config, run_chain
from connecto.tasks import load_train_config
from connecto.tasks.affinities_from_2d.synthetic import random_neurites
from connecto.tasks.segmentation.workflow import threshold_name

VOXEL = (40, 8, 8)
SHAPE = (20, 64, 64)
PAINTED = 9
WORKER = {"worker.num_cache_workers": 1, "worker.num_cpus": 2}


def volume(path: Path) -> np.ndarray:
    """Neurites with dark boundaries and noise, painted on one section."""
    rng = np.random.default_rng(1)
    labels = random_neurites(SHAPE, VOXEL, rng)
    boundary = np.zeros(SHAPE, bool)
    boundary[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    boundary[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    raw = np.where(boundary, 60, 190) + rng.normal(0, 10, SHAPE)
    painting = np.zeros(SHAPE, np.uint64)
    painting[PAINTED] = labels[PAINTED]
    zarr.open_group(str(path), mode="a")  # a container, as `connecto data ingest` makes
    for name, data in (("raw", raw.clip(0, 255).astype(np.uint8)), ("painting", painting)):
        array = prepare_ds(path / name, shape=SHAPE, voxel_size=VOXEL, dtype=data.dtype, mode="w")
        array[array.roi] = data
    return labels


def config_text(experiment: str) -> str:
    def table(values: dict) -> str:
        import json

        return "{" + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in values.items()) + "}"

    small_2d = {
        "input_shape": [44, 44],
        "fmaps": 2,
        "fmap_inc_factor": 2,
        "downsample_factors": [[2, 2]],
        "batch_size": 1,
        "save_every": 2,
        **WORKER,
    }
    small_3d = {"input_shape": [16, 44, 44], "fmaps": 2, "fmap_inc_factor": 2,
                "downsample_factors": [[1, 2, 2]], "save_every": 2, **WORKER}  # fmt: skip
    return f"""
experiment = "{experiment}"
base = "runs"
raw_container = "data.zarr"
raw_dataset = "raw"
labels_dataset = "painting"
# threshold: "painted" (the default): each round's chosen on the painted section
# 2 iterations teach nothing: affinities near 0.5 everywhere, so a low boundary threshold
segment = {table({"num_workers": 1, "block_size": [20, 32, 32], "boundary_threshold": 0.05})}

[model_2d]
iterations = 2
set = {table(small_2d)}

[affinities_from_2d]
iterations = 2
set = {table(small_3d)}

[rounds]
count = 1
source = "painted-agglomeration"
iterations = 2
set = {table({**small_3d, "lsds": False})}
# the untrained round 0 may be a few segments each over several painted objects: keep them
filter = {{min_size = 4, outlier_std = 5.0, drop_painted_merges = false}}
"""


@pytest.fixture
def chain_config(tmp_path: Path, tracking_db: str) -> Path:
    volume(tmp_path / "data.zarr")
    path = tmp_path / "bootstrap.toml"
    path.write_text(config_text(f"tiny{uuid.uuid4().hex[:6]}"))
    return path


def test_the_chain_runs_records_its_lineage_and_resumes(
    chain_config: Path, mongo_client: MongoClient, tracking_db: str, connecto
) -> None:
    lines: list[str] = []
    outcomes = run_chain(chain_config, progress=False, log=lines.append)
    names = [o.name for o in outcomes]
    assert names == [
        "sparse-labels", "train-2d", "predict-2d", "train-3d", "predict-3d", "segment",
        "round-1-pseudo-labels", "round-1-train", "round-1-segment",
    ]  # fmt: skip
    assert not any(o.skipped for o in outcomes)
    first = {o.name: o.record for o in outcomes}
    assert first["sparse-labels"]["painted_sections"] == [PAINTED]
    assert 0 < first["sparse-labels"]["labelled_fraction"] <= 1 / SHAPE[0]

    config = load_bootstrap_config(chain_config)
    chain = Chain(config, mongo_client[tracking_db], progress=False)
    lineage = {d["step"]: d for d in chain.lineage()}
    assert set(lineage) == set(names) and all(d["state"] == "done" for d in lineage.values())
    assert lineage["predict-3d"]["parent"] == "predict-2d"
    assert lineage["round-1-train"]["parent"] == "round-1-pseudo-labels"
    assert lineage["round-1-pseudo-labels"]["parent"] == "segment"
    segmentation = open_ds(Path(lineage["segment"]["outputs"]["segmentation"]))
    for step in ("segment", "round-1-segment"):  # each round's threshold chosen on the painting
        stats = lineage[step]["stats"]
        assert stats["threshold"] in config.candidates
        assert min(stats["painted_voi"].values()) == stats["painted_voi"][f"{stats['threshold']:g}"]
        assert lineage[step]["outputs"]["segmentation"].endswith(threshold_name(stats["threshold"]))
    assert segmentation.shape == SHAPE
    for step in ("segment", "round-1-segment"):  # sections over the raw, per round
        assert Path(lineage[step]["outputs"]["picture"]).stat().st_size > 0
    pseudo = open_ds(Path(lineage["round-1-pseudo-labels"]["outputs"]["labels"]))
    kept = set(np.unique(pseudo.to_ndarray(pseudo.roi)).tolist()) - {0}
    assert len(kept) == lineage["round-1-pseudo-labels"]["stats"]["kept_segments"]
    # (as configured) from round 0's fragments joined again under the painting's
    # constraints (beside its segmentations), up to the threshold round 0 chose
    joined = lineage["round-1-pseudo-labels"]["stats"]["agglomeration"]
    source = Path(lineage["segment"]["outputs"]["segmentation"]).parent / "painted_agglomeration"
    attrs = open_ds(source).attrs["painted_agglomeration"]
    assert attrs["threshold"] == lineage["segment"]["stats"]["threshold"]
    assert joined == {"merged": attrs["merged"], "refused": attrs["refused"]}
    # kept segments are whole: the round trains their rims as boundaries
    round_setup = Path(lineage["round-1-train"]["stats"]["checkpoint"]).parent
    round_config = load_train_config(round_setup / "train_config.toml")
    assert round_config.sparse_labels and round_config.unlabelled_edges == "boundary"

    again = run_chain(chain_config, progress=False, log=lines.append)
    assert all(o.skipped for o in again)  # nothing redone
    # the default source: round 0's segmentation as is, its kept ids its own
    text = chain_config.read_text().replace('source = "painted-agglomeration"\n', "")
    chain_config.write_text(text)
    redo = run_chain(chain_config, start="round-1-pseudo-labels", progress=False,
                     log=lines.append)  # fmt: skip
    assert [o.name for o in redo if not o.skipped] == [
        "round-1-pseudo-labels", "round-1-train", "round-1-segment",
    ]  # fmt: skip
    assert "agglomeration" not in redo[-3].record
    again_kept = np.unique(pseudo.to_ndarray(pseudo.roi))
    assert set(again_kept.tolist()) <= set(np.unique(segmentation.to_ndarray(pseudo.roi)).tolist())

    shown = connecto("bootstrap", "lineage", chain_config)
    assert shown.returncode == 0, shown.stderr
    tree = shown.stdout.splitlines()
    assert tree[0].startswith("sparse-labels: done (labelled_fraction")
    assert "  train-2d: done" in tree[1] and any(t.startswith("train-3d: done") for t in tree)
    depth = {t.strip().split(":")[0]: len(t) - len(t.lstrip()) for t in tree}
    assert depth["round-1-pseudo-labels"] == depth["segment"] + 2  # under its parent
    assert depth["predict-3d"] == depth["predict-2d"] + 2
    bad = connecto("bootstrap", "run", chain_config, "--from", "nope")
    assert bad.returncode == 1 and "--from 'nope': not a step" in bad.stderr
    assert "Traceback" not in bad.stderr

    # the chain's two predictions, as commands of their own, give the same arrays
    stack = Path(lineage["predict-2d"]["outputs"]["stack"])
    out = chain_config.parent / "again.zarr"
    checkpoint_2d = lineage["train-2d"]["stats"]["checkpoint"]
    made = connecto("bootstrap", "predict-2d", checkpoint_2d, config.raw_container, out)
    assert made.returncode == 0, made.stderr
    for name in ("affs_2d", "lsds_2d"):
        assert_same_predictions(open_ds(out / name), open_ds(stack / name))
    checkpoint_3d = lineage["train-3d"]["stats"]["checkpoint"]
    made = connecto("bootstrap", "predict-3d", checkpoint_3d, stack, out)
    assert made.returncode == 0, made.stderr
    chains = open_ds(Path(lineage["predict-3d"]["outputs"]["affs"]))
    assert_same_predictions(open_ds(out / "affs"), chains)


def assert_same_predictions(mine: Any, chains: Any) -> None:
    """Equal uint8 predictions, but for a value on a rounding edge: a process with other
    torch threads sums in another order, and such a value may move by one."""
    difference = mine.to_ndarray(mine.roi).astype(int) - chains.to_ndarray(chains.roi)
    assert np.abs(difference).max() <= 1 and np.count_nonzero(difference) <= 10


def test_the_shipped_cremi_config_loads() -> None:
    example = Path(__file__).parents[2] / "experiments" / "bootstrap" / "cremi.toml"
    config = load_bootstrap_config(example)
    assert config.threshold == "painted" and config.rounds.count == 1
