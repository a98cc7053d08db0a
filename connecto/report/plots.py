"""The report's pictures: training curves, checkpoint scores, segmentation scores per
threshold (matplotlib, Agg) and snapshot thumbnails (a central section of each volume)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the report is written, not shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import zarr  # noqa: E402

BEST_COLOUR = "#d62728"  # matplotlib's red: the best mark alone uses it
SERIES_COLOURS = ("C0", "C1", "C2", "C4", "C5")
THUMBNAIL_MIN_PX = 160  # small snapshot sections are enlarged to at least this
THUMBNAIL_MAX_PX = 512  # and large ones thinned to at most this
TABLE_ROWS = 8  # batch elements listed for a non-volume array


def file_name(text: str) -> str:
    """`text` made safe as part of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _order(tag: str) -> tuple[int, str]:
    """Losses first, then the other metrics, learning rate and speed last."""
    if "loss" in tag:
        return 0, tag
    if tag in ("learning_rate", "iterations_per_second"):
        return 2, tag
    return 1, tag


def plot_scalars(scalars: dict[str, list[tuple[int, float]]], title: str, path: Path) -> Path:
    """One panel per tensorboard tag, against the iteration."""
    tags = sorted(scalars, key=_order)
    columns = 2 if len(tags) > 1 else 1
    rows = (len(tags) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 2.8 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags, strict=False):
        steps, values = zip(*scalars[tag], strict=True) if scalars[tag] else ((), ())
        ax.plot(steps, values, color="C0", marker="." if len(steps) < 30 else None)
        ax.set_title(tag, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(tags) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_checkpoint_scores(
    documents: list[dict[str, Any]], best_iteration: int | None, title: str, path: Path
) -> Path:
    """Accuracy, balanced accuracy (per synapse and per skeleton) by checkpoint, the best
    checkpoint marked."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    series = [("synapse", "accuracy"), ("synapse", "balanced_accuracy"),
              ("skeleton", "accuracy"), ("skeleton", "balanced_accuracy")]  # fmt: skip
    for colour, (level, metric) in zip(SERIES_COLOURS, series, strict=False):
        points = sorted(
            (d["iteration"], d[level][metric])
            for d in documents
            if d.get("iteration") is not None and (d.get(level) or {}).get(metric) is not None
        )
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=colour, label=f"{metric} ({level})")
    if best_iteration is not None:
        ax.axvline(best_iteration, color=BEST_COLOUR, linestyle="--", linewidth=1.5,
                   label=f"best: {best_iteration}")  # fmt: skip
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("checkpoint iteration")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", framealpha=0.7)
    fig.tight_layout()
    return _save(fig, path)


def plot_segmentation_scores(documents: list[dict[str, Any]], title: str, path: Path) -> Path:
    """VOI (split, merge, sum) and ARAND by threshold, with ERL where known; the chosen
    threshold marked."""
    documents = sorted(documents, key=lambda d: d["threshold"])
    thresholds = [d["threshold"] for d in documents]
    with_erl = any(d.get("erl") is not None for d in documents)
    fig, axes = plt.subplots(1, 2 if with_erl else 1, figsize=(10 if with_erl else 6, 3.4),
                             squeeze=False)  # fmt: skip
    ax = axes[0][0]
    keys = ("voi_split", "voi_merge", "voi", "arand")
    for colour, key in zip(SERIES_COLOURS, keys, strict=False):
        values = [d.get(key) for d in documents]
        if any(v is not None for v in values):
            ax.plot(thresholds, [np.nan if v is None else v for v in values], marker="o",
                    color=colour, label=key)  # fmt: skip
    best = [d["threshold"] for d in documents if d.get("best")]
    panels = [ax] + ([axes[0][1]] if with_erl else [])
    if with_erl:
        erl = [np.nan if d.get("erl") is None else d["erl"] for d in documents]
        axes[0][1].plot(thresholds, erl, marker="o", color="C5", label="erl (nm)")
        axes[0][1].set_title("expected run length", fontsize=10)
    for panel in panels:
        for threshold in best:
            panel.axvline(threshold, color=BEST_COLOUR, linestyle="--", linewidth=1.5,
                          label=f"chosen: {threshold:g}")  # fmt: skip
        panel.set_xlabel("threshold")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Thumbnail:
    """One array of a snapshot: a picture of its central section, or (for arrays that are
    not volumes: class labels, class probabilities) rows of values."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    caption: str
    png: Path | None = None
    rows: tuple[tuple[str, str], ...] = ()


def _label_colours(section: np.ndarray) -> np.ndarray:
    """Each label its own stable colour (0 black): a hash of the id, not its order."""
    ids = section.astype(np.uint64)
    unique, inverse = np.unique(ids, return_inverse=True)
    colours = np.array([
        [(zlib.crc32(int(i).to_bytes(8, "little")) >> s) & 0xFF for s in (0, 8, 16)]
        for i in unique
    ], dtype=np.uint8)  # fmt: skip
    colours[unique == 0] = 0
    return colours[inverse.reshape(ids.shape)]


def _grey(section: np.ndarray) -> np.ndarray:
    values = section.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return (np.clip(np.nan_to_num(scaled), 0, 1) * 255).astype(np.uint8)


def _resized(image: np.ndarray) -> np.ndarray:
    """Nearest-neighbour: enlarged to THUMBNAIL_MIN_PX, thinned to THUMBNAIL_MAX_PX."""
    side = max(image.shape[:2])
    if side > THUMBNAIL_MAX_PX:
        step = -(-side // THUMBNAIL_MAX_PX)
        return image[::step, ::step]
    factor = max(1, THUMBNAIL_MIN_PX // max(1, min(image.shape[:2])))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def central_section(array: zarr.Array) -> tuple[np.ndarray, str] | None:
    """An image (2D grey or RGB uint8) of the central z section of a volume and what it
    shows; None for arrays that are not volumes."""
    attrs = array.attrs.asdict()
    spatial = len(attrs.get("voxel_size", ())) or 3
    if array.ndim < 2 or array.ndim < spatial or spatial not in (2, 3):
        return None
    lead = array.shape[: array.ndim - spatial]
    axis_names = [str(n) for n in attrs.get("axis_names", [])]
    index: list[Any] = []
    what = []
    channels = None
    for number, size in enumerate(lead):
        batch = number < len(lead) - 1 or (axis_names[:1] == ["b^"] and len(lead) == 1)
        if batch or size < 3:  # a batch, or channels too few for colour: the first
            index.append(0)
            what.append(f"{'element' if batch else 'channel'} 0 of {size}")
        else:
            channels = min(size, 3)
            index.append(slice(0, channels))
            what.append(f"channels 0-{channels - 1} of {size} as RGB")
    if spatial == 3:
        middle = array.shape[-3] // 2
        index.append(middle)
        what.append(f"section z={middle} of {array.shape[-3]}")
    data = np.asarray(array[tuple(index)])
    if channels is not None:
        data = np.moveaxis(data, 0, -1)
        if channels < 3:
            data = np.concatenate([data, np.zeros(data.shape[:-1] + (3 - channels,))], axis=-1)
        image = np.stack([_grey(data[..., c]) for c in range(3)], axis=-1)
    elif np.issubdtype(data.dtype, np.integer) and data.dtype.itemsize >= 2:
        image = _label_colours(data)
        what.append("labels in colour")
    else:
        image = _grey(data)
    return _resized(image), ", ".join(what)


def _value_rows(array: zarr.Array) -> tuple[tuple[str, str], ...]:
    """The first batch elements of a class label or probability array, named by the
    array's `class_names` where it has them."""
    names = [str(n) for n in array.attrs.get("class_names", [])]
    data = np.asarray(array[:TABLE_ROWS])
    rows = []
    for number, value in enumerate(data):
        if np.ndim(value) == 0:
            text = str(value.item())
            if names and np.issubdtype(data.dtype, np.integer) and 0 <= int(value) < len(names):
                text = f"{names[int(value)]} ({int(value)})"
        else:
            flat = np.ravel(value)
            if names and flat.size == len(names) and np.issubdtype(flat.dtype, np.floating):
                top = int(np.argmax(flat))
                text = f"{names[top]} (p={float(flat[top]):.2f})"
            else:
                text = np.array2string(flat[:6], precision=3, separator=", ")
        rows.append((str(number), text))
    return tuple(rows)


def snapshot_thumbnails(snapshot: Path, out_dir: Path, prefix: str) -> list[Thumbnail]:
    """A thumbnail of each array of a snapshot container, PNGs named `<prefix>_<array>`."""
    group = zarr.open_group(str(snapshot), mode="r")
    thumbnails = []
    for name, array in sorted(group.arrays(recurse=True)):
        shape, dtype = tuple(array.shape), str(array.dtype)
        section = central_section(array)
        if section is None:
            rows = _value_rows(array) if array.ndim >= 1 else ()
            caption = f"first {len(rows)} of {shape[0] if shape else 1} batch elements"
            thumbnails.append(Thumbnail(name, shape, dtype, caption, rows=rows))
            continue
        image, caption = section
        png = out_dir / f"{prefix}_{file_name(name)}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        plt.imsave(png, image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        thumbnails.append(Thumbnail(name, shape, dtype, caption, png=png))
    return sorted(thumbnails, key=lambda t: t.png is None)  # pictures first
