"""The report's HTML: plain string templates, every value from the experiment or the
database escaped (`esc`), pictures referenced by file name beside the page."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

NONE_YET = '<p class="none">none yet</p>'

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px;
       color: #222; line-height: 1.35; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #4a5a6a; padding-bottom: 0.15em; margin-top: 1.6em; }
h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.4em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
tr.best td { background: #fde2e2; font-weight: bold; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
.none { color: #888; font-style: italic; }
.note { color: #8a5a00; }
.meta { color: #555; font-size: 0.9em; }
img.plot { max-width: 100%; border: 1px solid #ddd; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.8em; }
figure { margin: 0; font-size: 0.8em; max-width: 260px; }
figure.wide { max-width: 370px; }
figure.wide img { max-width: 360px; image-rendering: auto; }
figure img { max-width: 256px; image-rendering: pixelated; border: 1px solid #ddd; }
code, pre { background: #f5f5f5; font-size: 0.85em; }
pre { padding: 0.4em; white-space: pre-wrap; word-break: break-all; }
"""


def esc(value: Any) -> str:
    """A value as HTML text: None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return html.escape(f"{value:.4g}")
    if isinstance(value, datetime):  # MongoDB keeps UTC; naive ones are UTC too
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return html.escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    return html.escape(str(value), quote=True)


def image(path: Path, alt: str, css: str = "plot") -> str:
    """An <img> of a picture in the page's folder (referenced by its name)."""
    return f'<img class="{css}" src="{html.escape(quote(path.name))}" alt="{esc(alt)}">'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    best: Sequence[bool] | None = None,
    raw: Sequence[int] = (),
) -> str:
    """A table of escaped cells; rows with `best` set are highlighted; columns in `raw`
    are HTML already."""
    rows = list(rows)
    if not rows:
        return NONE_YET
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for number, row in enumerate(rows):
        css = ' class="best"' if best and best[number] else ""
        cells = "".join(
            f"<td>{value}</td>" if column in raw
            else f'<td class="num">{esc(value)}</td>' if isinstance(value, int | float)
            and not isinstance(value, bool) else f"<td>{esc(value)}</td>"
            for column, value in enumerate(row)
        )  # fmt: skip
        body.append(f"<tr{css}>{cells}</tr>")
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{markup}</div>'  # a wide table scrolls, the page does not


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def page(title: str, header: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: `sections` as (anchor, title, HTML body)."""
    links = " · ".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "\n".join(section(a, t, b) for a, t, b in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{esc(title)}</h1>\n{header}\n<nav>{links}</nav>\n{body}\n</body>\n</html>\n"
    )
