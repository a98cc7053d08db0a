"""`connecto report`: a real small experiment (a short training, predictions on the
validation part, the best checkpoint selected, segmentation scores and jobs tracked) made
into one HTML page, loaded in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import zarr
from matplotlib.image import imread
from pymongo import MongoClient

from connecto import ConnectoError
from connecto.data.synthetic import synthesize_synapses
from connecto.db.tracking import now, store_score
from connecto.experiment import TrainSetup
from connecto.launch.jobs import record_jobs
from connecto.report.build import REPORT_DIR, write_report
from connecto.splits import make_split
from connecto.tasks.synapse_classification.evaluate import select_best
from connecto.tasks.synapse_classification.predict import predict
from connecto.train import train
from tests.conftest import run_connecto
from tests.test_train import CLASSES, Synthetic, small_setup

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = ("training", "snapshots", "checkpoints", "confusion", "segmentation", "runs",
            "predictions", "jobs", "volumes")  # fmt: skip
HOSTILE = "<script>alert('x')</script>"


@dataclass(frozen=True)
class Experiment:
    setup: TrainSetup
    tracking_db: str


@pytest.fixture(scope="module")
def experiment(
    tmp_path_factory: pytest.TempPathFactory, mongo_client: MongoClient
) -> Iterator[Experiment]:
    """A synapse-classification experiment trained for 10 iterations (checkpoints 5 and
    10, snapshots 5 and 10), both checkpoints predicted on the validation part and scored,
    the best selected; plus segmentation scores per threshold and two tracked jobs."""
    data_db, tracking = f"test_report_{uuid.uuid4().hex[:8]}", f"tracking_{uuid.uuid4().hex[:8]}"
    base = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONNECTO_TRACKING_DB", tracking)
        container = base / "synapses.zarr"
        synthesize_synapses(container, mongo_client[data_db], 60, CLASSES, seed=0, progress=False)
        make_split(mongo_client[data_db], "skeleton", "skel", classes=CLASSES, seed=0)
        setup = small_setup(base, Synthetic(container, data_db), log_every=2, save_every=5,
                            snapshot_every=5, augment=False)  # fmt: skip
        train(setup, 10, progress=False)
        predict(setup.path, "validation", all_checkpoints=True, progress=False, log=lambda _: None)
        select_best(setup.path)
        db = mongo_client[tracking]
        _segmentation(db, base / setup.experiment / "segment.zarr")
        _jobs(db, setup)
        yield Experiment(setup, tracking)
    mongo_client.drop_database(data_db)
    mongo_client.drop_database(tracking)


def _segmentation(db: object, container: Path) -> None:
    """A segmentation output inside the experiment and its scores, as `connecto segment
    evaluate` stores them: lowest VOI at 0.5 (the chosen threshold)."""
    labels = np.zeros((8, 32, 32), dtype=np.uint64)
    labels[:, :, 16:] = 2
    labels[:, :16, :16] = 1
    group = zarr.open_group(str(container), mode="w")
    for threshold in ("0.30", "0.50", "0.70"):
        array = group.create_dataset(f"segmentation_{threshold}", data=labels)
        array.attrs.update({"voxel_size": [8, 8, 8], "offset": [0, 0, 0]})
    for threshold, voi_split, voi_merge in ((0.3, 0.9, 0.1), (0.5, 0.3, 0.2), (0.7, 0.1, 0.8)):
        store_score(db, "segmentation", f"{container}/segmentation_{threshold:.2f}", {
            "container": str(container), "dataset": f"segmentation_{threshold:.2f}",
            "threshold": threshold, "voi_split": voi_split, "voi_merge": voi_merge,
            "voi": voi_split + voi_merge, "arand": voi_merge / 2, "erl": 1000 * threshold,
            "region": "roi", "best": threshold == 0.5, "chosen_threshold": 0.5,
            "selected_on": "evaluated_roi",
        })  # fmt: skip


def _jobs(db: object, setup: TrainSetup) -> None:
    """Two finished jobs of the train setup; one failed with a hostile reason (escaped)."""
    started = now() - timedelta(minutes=3)
    common = {"kind": "train", "setup_dir": str(setup.path), "workdir": str(setup.path),
              "scheduler": "slurm", "launcher": "docker", "image": "connecto:latest",
              "image_digest": "sha256:" + "ab" * 32, "submitted": started, "started": started,
              "finished": started + timedelta(seconds=75),
              "log_path": str(setup.path / "x.log")}  # fmt: skip
    record_jobs(db, [
        {**common, "_id": "job1", "name": "train-ok", "job_id": "101", "state": "completed",
         "exit_code": 0, "reason": None},
        {**common, "_id": "job2", "name": "train-bad", "job_id": "102", "state": "failed",
         "exit_code": 137, "reason": HOSTILE},
    ])  # fmt: skip


@dataclass(frozen=True)
class Written:
    page: Path
    stdout: str


@pytest.fixture(scope="module")
def written(experiment: Experiment) -> Written:
    """`connecto report` run inside the train setup, as a user would, over an earlier
    report's picture of a snapshot that is no longer shown, beside a user's own PNG."""
    out = experiment.setup.base / experiment.setup.experiment / REPORT_DIR
    out.mkdir()
    for name in ("snapshot_setup_t0_1_raw.png", "mine.png"):
        (out / name).write_bytes(b"earlier")
    env = {"CONNECTO_TRACKING_DB": experiment.tracking_db}
    result = run_connecto("report", env=env, cwd=experiment.setup.path)
    assert result.returncode == 0, result.stderr
    return Written(out / "index.html", result.stdout)


def test_report_of_a_trained_experiment(experiment: Experiment, written: Written) -> None:
    """The experiment's page and its PNGs: every section has content, the best checkpoint
    and threshold are marked, tracked runs, predictions and jobs are listed and user text
    is escaped."""
    out, text = written.page.parent, written.page.read_text()
    assert f"report: {written.page}" in written.stdout, written.stdout
    assert "none yet" not in written.stdout + text
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in text
    # every picture the page names exists beside it, and is a real PNG
    pictures = re.findall(r'<img [^>]*src="([^"]+)"', text)
    names = {p.name for p in out.glob("*.png")}
    assert set(pictures) <= names and "training_setup_t0.png" in names
    assert {"checkpoints_setup_t0_validation.png", "snapshot_setup_t0_10_raw.png"} <= names
    assert any(n.startswith("segmentation_0_") for n in names)
    assert any(n.startswith("evaluate_") for n in names)  # 04_evaluate's confusion PNGs
    assert "snapshot_setup_t0_1_raw.png" not in names and "mine.png" in names
    for name in pictures:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the best checkpoint (the one select_best stored) and the chosen threshold marked
    marked = re.findall(r'<tr class="best"><td class="num">([\d.]+)</td>', text)
    assert "0.5" in marked and ({"5", "10"} & set(marked)), marked
    assert "chosen by `connecto evaluate --select-best`" in text
    # tracked: the run, both predictions, both jobs with exit code, duration and digest
    assert text.count("setup_t0_p") >= 2 and "finished" in text
    assert "137" in text and "0:01:15" in text and "sha256:abab" in text
    assert HOSTILE not in text and html.escape(HOSTILE, quote=True) in text
    assert f"connecto view {experiment.setup.snapshot_dir / 'batch_10.zarr'}" in text
    assert "segment.zarr" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_loads_in_a_headless_browser(written: Written, tmp_path: Path) -> None:
    """Chromium renders the page without console errors, its DOM holds every section and
    the screenshot shows the plots (their blue curves)."""
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path)}
    url = written.page.as_uri()
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True,
                         timeout=60, env=env, check=False)  # fmt: skip
    assert dom.returncode == 0, dom.stderr
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in dom.stdout
    assert "<script" not in dom.stdout  # the hostile job reason stayed text
    screenshot = tmp_path / "page.png"
    shot = subprocess.run(
        [*browser, "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
         f"--screenshot={screenshot}", "--window-size=1200,2000", url],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert shot.returncode == 0, shot.stderr
    signs = ("Uncaught", "ERROR:CONSOLE", "Not allowed to load", "net::ERR_FILE_NOT_FOUND")
    errors = [line for line in shot.stderr.splitlines() if any(s in line for s in signs)]
    assert not errors, errors
    pixels = imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 0.05  # not blank
    # matplotlib's first colour (#1f77b4), which only the curves have on the page
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.08
    assert blue.sum() > 500, blue.sum()


def test_missing_parts_show_none_yet(tmp_path: Path, tracking_db: str) -> None:
    """A setup just prepared (no events, no checkpoints, no documents but its run) gives a
    page with "none yet" sections, not an error."""
    from connecto.db.client import tracking_database
    from connecto.experiment import prepare_training

    setup, _, _ = prepare_training(tmp_path, "fresh", 3, tracking=tracking_database)
    (setup.log_dir).mkdir()
    written = write_report(setup.path)
    text = written.page.read_text()
    assert text.count("none yet") >= 6
    assert "Training curves" in written.missing and "Jobs" in written.missing
    assert "prepared" in text  # its run document, registered by prepare-training
    assert list(written.page.parent.glob("*.png")) == []


def test_no_database_still_shows_the_directory(tmp_path: Path) -> None:
    (tmp_path / "exp" / "03_predict").mkdir(parents=True)
    written = write_report(tmp_path / "exp", use_database=False)
    assert "tracking database not asked" in written.page.read_text()


def test_not_an_experiment_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConnectoError, match="no such directory"):
        write_report(tmp_path / "missing")
    result = run_connecto("report", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"connecto: error: {tmp_path} is not an experiment directory (<base>/<experiment> with "
        "02_train/ or 03_predict/) nor inside one; run `connecto prepare-training` first"
    ]


def test_snapshot_sections_of_segmentation_arrays(tmp_path: Path) -> None:
    """The central section of each kind of snapshot array: raw in grey, labels in colour,
    affinities (channels first) as RGB, a 2D task's arrays as they are."""
    from connecto.report.plots import snapshot_thumbnails

    group = zarr.open_group(str(tmp_path / "batch_7.zarr"), mode="w")
    spatial = {"voxel_size": [8, 8, 8], "offset": [0, 0, 0]}
    raw = np.zeros((9, 16, 16), dtype=np.float32)
    raw[4, :, 8:] = 1  # only the central section (z=4) has a bright half
    group.create_dataset("raw", data=raw).attrs.update(spatial)
    labels = np.ones((9, 16, 16), dtype=np.uint64)
    labels[:, 8:] = 7
    group.create_dataset("labels", data=labels).attrs.update(spatial)
    group.create_dataset(
        "pred_affs", data=np.random.default_rng(0).random((3, 9, 16, 16), dtype=np.float32)
    )
    group["pred_affs"].attrs.update(spatial)
    group.create_dataset("raw_2d", data=np.eye(16, dtype=np.uint8)).attrs["voxel_size"] = [4, 4]
    thumbnails = {t.name: t for t in snapshot_thumbnails(tmp_path / "batch_7.zarr", tmp_path, "s")}
    assert set(thumbnails) == {"raw", "labels", "pred_affs", "raw_2d"}
    grey = imread(thumbnails["raw"].png)
    assert "section z=4 of 9" in thumbnails["raw"].caption
    assert grey[:, : grey.shape[1] // 2, 0].max() == 0 and grey[:, -1, 0].min() == 1
    colours = imread(thumbnails["labels"].png)[..., :3]
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 2  # one colour per label
    assert "channels 0-2 of 3 as RGB" in thumbnails["pred_affs"].caption
    assert imread(thumbnails["raw_2d"].png).shape[0] >= 160  # enlarged to be seen
