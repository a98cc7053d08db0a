"""`connecto report`: one HTML page per experiment, with its PNGs beside it in
`<base>/<experiment>/05_report/` (or `--out`): the folder is self-contained (evaluation
PNGs are copied in) and opens in any browser without a server."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo.database import Database

from connecto import ConnectoError
from connecto.experiment import EVALUATE_DIR
from connecto.report import page
from connecto.report.collect import (
    CheckpointScores,
    ExperimentReport,
    TrainSection,
    collect,
    find_experiment_dir,
)
from connecto.report.plots import (
    Thumbnail,
    file_name,
    plot_checkpoint_scores,
    plot_scalars,
    plot_segmentation_scores,
    snapshot_thumbnails,
)

REPORT_DIR = "05_report"
PAGE = "index.html"
# the names of the PNGs a report writes: those no longer shown are removed
PICTURE_PREFIXES = ("training_", "snapshot_", "checkpoints_", "segmentation_", "evaluate_")
SECTIONS = {
    "training": "Training curves",
    "snapshots": "Snapshots",
    "checkpoints": "Scores per checkpoint",
    "confusion": "Confusion matrices",
    "segmentation": "Segmentation scores per threshold",
    "runs": "Training runs",
    "predictions": "Predictions",
    "jobs": "Jobs",
    "volumes": "Volumes in neuroglancer",
}


@dataclass
class WrittenReport:
    page: Path
    pictures: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # titles of the sections with none yet

    @property
    def url(self) -> str:
        return self.page.as_uri()


def open_tracking() -> tuple[Database | None, str | None]:
    """The tracking database, or None and why (the page then shows the directory alone)."""
    from pymongo.errors import PyMongoError

    from connecto.db.client import tracking_database

    try:
        db = tracking_database()
        db.command("ping")
        return db, None
    except (ConnectoError, PyMongoError) as error:
        return None, f"tracking database not reachable: {error}"


def write_report(
    path: Path, out_dir: Path | None = None, db: Database | None = None, use_database: bool = True
) -> WrittenReport:
    """Write the report of the experiment `path` is or lies in; `db` the tracking database
    (default: the configured one; with `use_database` False none is asked)."""
    experiment_dir = find_experiment_dir(path)  # the one-line error before any connection
    note = None
    if db is None and use_database:
        db, note = open_tracking()
    elif not use_database:
        note = "tracking database not asked (--no-db)"
    report = collect(experiment_dir, db, note)
    out = (out_dir or experiment_dir / REPORT_DIR).resolve()
    out.mkdir(parents=True, exist_ok=True)
    written = WrittenReport(out / PAGE)
    bodies = {
        "training": _training(report, out, written),
        "snapshots": _snapshots(report, out, written),
        "checkpoints": _checkpoints(report, out, written),
        "confusion": _confusion(report, out, written),
        "segmentation": _segmentation(report, out, written),
        "runs": _runs(report),
        "predictions": _predictions(report),
        "jobs": _jobs(report),
        "volumes": _volumes(report),
    }
    written.missing = [SECTIONS[k] for k, body in bodies.items() if body.strip() == page.NONE_YET]
    title = f"connecto report: {report.name}"
    document = page.page(title, _header(report), [(k, SECTIONS[k], b) for k, b in bodies.items()])
    temporary = written.page.with_suffix(".page.tmp")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(written.page)  # a browser open on the old page never sees half of one
    _remove_old_pictures(out, written.pictures)
    return written


def _remove_old_pictures(out: Path, kept: list[Path]) -> None:
    """The PNGs an earlier report wrote that this one does not show (older snapshots)."""
    for path in out.glob("*.png"):
        if path.name.startswith(PICTURE_PREFIXES) and path not in kept:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- sections


def _header(report: ExperimentReport) -> str:
    lines = [
        f'<p class="meta">experiment directory <code>{page.esc(report.path)}</code> · '
        f"written {page.esc(datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC'))}</p>"
    ]
    if report.database_note:
        lines.append(f'<p class="note">{page.esc(report.database_note)}</p>')
    lines += [f'<p class="note">{page.esc(w)}</p>' for w in report.warnings]
    return "\n".join(lines)


def _setup_title(section: TrainSection) -> str:
    return f"<h3>{page.esc(section.setup.path.name)}</h3>"


def _training(report: ExperimentReport, out: Path, written: WrittenReport) -> str:
    parts = []
    for section in report.trains:
        parts.append(_setup_title(section))
        checkpoints = ", ".join(str(i) for i in section.checkpoints) or "none yet"
        parts.append(f'<p class="meta">checkpoints: {page.esc(checkpoints)}</p>')
        if section.manifest:
            parts.append(page.table(["run.json", "value"], sorted(
                (k, v if isinstance(v, str | int | float) or v is None else repr(v))
                for k, v in section.manifest.items()
            )))  # fmt: skip
        if section.scalars_note:
            parts.append(f'<p class="note">{page.esc(section.scalars_note)}</p>')
        if not section.scalars:
            parts.append(page.NONE_YET)
            continue
        png = plot_scalars(section.scalars, f"{report.name} {section.setup.path.name}",
                           out / f"training_{section.setup.path.name}.png")  # fmt: skip
        written.pictures.append(png)
        parts.append(page.image(png, f"training curves of {section.setup.path.name}"))
    return "\n".join(parts) if any(s.scalars for s in report.trains) else page.NONE_YET


def _thumbnail(thumbnail: Thumbnail) -> str:
    caption = (f"<b>{page.esc(thumbnail.name)}</b> {page.esc(list(thumbnail.shape))} "
               f"{page.esc(thumbnail.dtype)}<br>{page.esc(thumbnail.caption)}")  # fmt: skip
    if thumbnail.png is not None:
        shown = page.image(thumbnail.png, f"snapshot {thumbnail.name}", css="thumb")
    else:
        shown = page.table(["element", "value"], thumbnail.rows)
    return f"<figure>{shown}<figcaption>{caption}</figcaption></figure>"


def _snapshots(report: ExperimentReport, out: Path, written: WrittenReport) -> str:
    parts = []
    for section in report.trains:
        if not section.snapshots:
            continue
        parts.append(_setup_title(section))
        shown = [section.snapshots[0], section.snapshots[-1]][: len(section.snapshots)]
        for iteration, path in dict(shown).items():
            parts.append(f'<p class="meta">iteration {iteration}: <code>{page.esc(path)}</code> '
                         f"({len(section.snapshots)} snapshots in all)</p>")  # fmt: skip
            prefix = f"snapshot_{section.setup.path.name}_{iteration}"
            try:
                thumbnails = snapshot_thumbnails(path, out, prefix)
            except (OSError, ValueError, KeyError) as error:  # a snapshot being written
                parts.append(f'<p class="note">could not read {page.esc(path)}: '
                             f"{page.esc(error)}</p>")  # fmt: skip
                continue
            written.pictures += [t.png for t in thumbnails if t.png is not None]
            parts.append('<div class="thumbs">' + "".join(map(_thumbnail, thumbnails)) + "</div>")
    return "\n".join(parts) or page.NONE_YET


def _pct(value: Any) -> Any:
    return None if value is None else f"{100 * value:.1f}%"


def _checkpoint_table(scores: CheckpointScores) -> str:
    rows, best = [], []
    for doc in sorted(scores.documents, key=lambda d: d.get("iteration") or 0):
        synapse, skeleton = doc.get("synapse") or {}, doc.get("skeleton") or {}
        is_best = doc.get("iteration") == scores.best_iteration
        rows.append([
            doc.get("iteration"), ("★ best" if is_best else ""), synapse.get("count"),
            _pct(synapse.get("accuracy")), _pct(synapse.get("balanced_accuracy")),
            _pct(skeleton.get("accuracy")), _pct(skeleton.get("balanced_accuracy")),
            doc.get("complete"), doc.get("collection"),
        ])  # fmt: skip
        best.append(is_best)
    how = ("chosen by `connecto evaluate --select-best`" if scores.best_selected
           else "highest; `connecto evaluate --select-best` not run yet")  # fmt: skip
    headers = ["iteration", "", "synapses", "accuracy", "balanced accuracy",
               "skeleton accuracy", "skeleton balanced", "complete", "collection"]  # fmt: skip
    return (f'<p class="meta">best by {page.esc(scores.metric)}: iteration '
            f"{page.esc(scores.best_iteration)} ({page.esc(how)})</p>"
            + page.table(headers, rows, best))  # fmt: skip


def _checkpoints(report: ExperimentReport, out: Path, written: WrittenReport) -> str:
    parts = []
    for section in report.trains:
        for scores in section.scores:
            name = f"{section.setup.path.name} on the {scores.split_part} part"
            parts.append(f"<h3>{page.esc(name)}</h3>")
            png = plot_checkpoint_scores(
                scores.documents, scores.best_iteration, f"{report.name} {name}",
                out / f"checkpoints_{section.setup.path.name}_{scores.split_part}.png",
            )  # fmt: skip
            written.pictures.append(png)
            parts.append(page.image(png, f"scores per checkpoint, {name}"))
            parts.append(_checkpoint_table(scores))
    return "\n".join(parts) or page.NONE_YET


def _matrix(level: dict[str, Any]) -> str:
    names = [str(n) for n in level.get("class_names") or []]
    matrix = level.get("confusion_matrix") or []
    if not names or len(matrix) != len(names):
        return page.NONE_YET
    recall = level.get("recall") or {}
    rows = [[name, *row, _pct(recall.get(name))] for name, row in zip(names, matrix, strict=True)]
    precision = level.get("precision") or {}
    rows.append(["precision", *(_pct(precision.get(n)) for n in names), ""])
    return page.table(["true \\ predicted", *names, "recall"], rows)


def _confusion(report: ExperimentReport, out: Path, written: WrittenReport) -> str:
    parts = []
    for section in report.trains:
        for scores in section.scores:
            for doc in sorted(scores.documents, key=lambda d: d.get("iteration") or 0):
                mark = " ★ best" if doc.get("iteration") == scores.best_iteration else ""
                parts.append(f"<h3>{page.esc(doc.get('collection') or doc.get('key'))}"
                             f"{page.esc(mark)}</h3>")  # fmt: skip
                parts.append(f'<p class="meta">{page.esc(section.setup.path.name)}, iteration '
                             f"{page.esc(doc.get('iteration'))}, {page.esc(scores.split_part)} "
                             "part</p>")  # fmt: skip
                for level in ("synapse", "skeleton"):
                    parts.append(f"<p>per {level}:</p>" + _matrix(doc.get(level) or {}))
    if report.evaluate_pngs:
        parts.append(f"<h3>plots in {EVALUATE_DIR}</h3>")
        figures = []
        for source in report.evaluate_pngs:
            copy = out / f"evaluate_{file_name(source.name)}"
            shutil.copyfile(source, copy)  # the report folder stands on its own
            written.pictures.append(copy)
            shown = page.image(copy, source.name, css="thumb")
            caption = f"<figcaption>{page.esc(source.name)}</figcaption>"
            figures.append(f'<figure class="wide">{shown}{caption}</figure>')
        parts.append(f'<div class="thumbs">{"".join(figures)}</div>')
    return "\n".join(parts) or page.NONE_YET


def _segmentation(report: ExperimentReport, out: Path, written: WrittenReport) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for doc in report.segmentation:
        if doc.get("threshold") is not None:
            key = (str(doc.get("container")), str(doc.get("region", "roi")))
            groups.setdefault(key, []).append(doc)
    parts = []
    for number, ((container, region), docs) in enumerate(sorted(groups.items())):
        docs.sort(key=lambda d: d["threshold"])
        name = f"{Path(container).name} ({region})"
        parts.append(f"<h3>{page.esc(name)}</h3>")
        chosen = next((d for d in docs if d.get("best")), None)
        if chosen is not None:
            parts.append(f'<p class="meta">chosen threshold {page.esc(chosen["threshold"])} '
                         f"(lowest VOI, selected on {page.esc(chosen.get('selected_on'))}); "
                         f"<code>{page.esc(container)}</code></p>")  # fmt: skip
        png = out / f"segmentation_{number}_{file_name(region)}.png"
        plot_segmentation_scores(docs, f"{report.name} {name}", png)
        written.pictures.append(png)
        parts.append(page.image(png, f"segmentation scores of {name}"))
        rows = [
            [d["threshold"], "★ best" if d.get("best") else ""]
            + [d.get(k) for k in ("voi_split", "voi_merge", "voi", "arand", "erl")]
            + [d.get("n_mergers"), d.get("n_splits"), d.get("dataset")]
            for d in docs
        ]
        headers = ["threshold", "", "VOI split", "VOI merge", "VOI", "ARAND", "ERL (nm)",
                   "mergers", "splits", "dataset"]  # fmt: skip
        parts.append(page.table(headers, rows, [bool(d.get("best")) for d in docs]))
    return "\n".join(parts) or page.NONE_YET


# ---------------------------------------------------------------- what MongoDB tracks


def _duration(start: Any, end: Any) -> str | None:
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        return None
    if (start.tzinfo is None) != (end.tzinfo is None):
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _run_end(doc: dict[str, Any]) -> Any:
    """When a run ended (its last update once it is no longer running); None if running."""
    if doc.get("state") in ("running", "prepared", "pending"):
        return None
    return doc.get("finished") or doc.get("updated")


def _short(commit: Any) -> Any:
    return commit[:10] if isinstance(commit, str) else commit


def _short_digest(digest: Any) -> Any:
    """`sha256:` and 12 hex digits, as `docker images` shows it."""
    if isinstance(digest, str) and digest.startswith("sha256:"):
        return digest[: len("sha256:") + 12]
    return digest


def _tracked(report: ExperimentReport, rows: list[list[Any]], headers: list[str]) -> str:
    if report.database_note and not rows:
        return f'<p class="none">none ({page.esc(report.database_note)})</p>'
    return page.table(headers, rows)


def _runs(report: ExperimentReport) -> str:
    rows = [[
        Path(str(d.get("setup_dir"))).name, d.get("task"), d.get("state"),
        f"{d.get('iteration')} / {d.get('target_iterations', '–')}", d.get("last_loss"),
        d.get("device"), d.get("host"), d.get("started"),
        _duration(d.get("started"), _run_end(d)), _short(d.get("git_commit")), d.get("error"),
    ] for d in report.runs]  # fmt: skip
    headers = ["setup", "task", "state", "iteration / target", "last loss", "device", "host",
               "started (UTC)", "duration", "git commit", "error"]  # fmt: skip
    return _tracked(report, rows, headers)


def _predictions(report: ExperimentReport) -> str:
    rows = [[
        Path(str(d.get("setup_dir"))).name, d.get("split_part"), d.get("iteration"),
        d.get("state"), f"{d.get('written')} / {d.get('expected')}",
        f"{d.get('predictions_db')}.{d.get('collection')}", d.get("host"), d.get("started"),
        _duration(d.get("started"), _run_end(d)), _short(d.get("git_commit")), d.get("error"),
    ] for d in report.predictions]  # fmt: skip
    headers = ["setup", "split part", "checkpoint", "state", "written / expected", "collection",
               "host", "started (UTC)", "duration", "git commit", "error"]  # fmt: skip
    return _tracked(report, rows, headers)


def _jobs(report: ExperimentReport) -> str:
    from connecto.launch.jobs import STALE

    rows = [[
        d.get("_id"), d.get("name"), d.get("kind"), d.get("scheduler"), d.get("job_id"),
        d.get("launcher"), f"{d.get('state')} (unknown now)" if d.get(STALE) else d.get("state"),
        d.get("exit_code"), d.get("submitted"),
        _duration(d.get("started") or d.get("submitted"), d.get("finished")),
        d.get("image"), _short_digest(d.get("image_digest")), d.get("reason"), d.get("log_path"),
    ] for d in report.jobs]  # fmt: skip
    headers = ["id", "name", "kind", "scheduler", "job id", "launcher", "state", "exit code",
               "submitted (UTC)", "duration", "image", "image digest", "reason", "log"]  # fmt: skip
    return _tracked(report, rows, headers)


# ---------------------------------------------------------------- volumes


def _containers(report: ExperimentReport) -> list[Path]:
    """The zarr/N5 containers an experiment reads and writes: the train configs' raw and
    labels, the latest snapshot of each setup, the segmentation outputs."""
    found: list[Path] = []
    for section in report.trains:
        try:
            config = section.setup.train_config()
        except ConnectoError:
            config = None
        for key in ("raw_container", "labels_container"):
            value = getattr(config, key, None)
            if value:  # relative: to the setup, as the training reads it
                found.append(section.setup.path / Path(value).expanduser())
        if section.snapshots:
            found.append(section.snapshots[-1][1])
    found += [Path(str(d["container"])) for d in report.segmentation if d.get("container")]
    unique = []
    for path in found:
        if path not in unique and path.exists():
            unique.append(path)
    return unique


def _volumes(report: ExperimentReport) -> str:
    # deferred: funlib.persistence takes seconds to import, a wrong directory none
    from connecto.data.viewer import plan_layers

    rows = []
    for container in _containers(report):
        try:
            layers, _ = plan_layers(container)
        except (ConnectoError, OSError, KeyError, ValueError):
            continue  # no volumes in it (or not a container): nothing to view
        command = f"connecto view {shlex.quote(str(container))}"
        described = ", ".join(f"{layer.name} ({layer.kind})" for layer in layers)
        rows.append([f"<code>{page.esc(command)}</code>", described])
    return page.table(["command (prints the neuroglancer link)", "layers"], rows, raw=[0])
