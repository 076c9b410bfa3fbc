"""The report page: one HTML string with inline CSS and data-URI images, nothing external."""

from __future__ import annotations

from html import escape
from typing import Any

from curate.report.data import Grid

GRID_STYLE = """
.grid { display: flex; flex-wrap: wrap; gap: .6em; margin-bottom: 1.2em; }
.card { width: 170px; font-size: .75em; border: 1px solid #ddd; padding: 4px;
        overflow-wrap: anywhere; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; }
.card .score { font-weight: bold; } .card .reason { color: #a33; }
.missing { width: 160px; height: 160px; background: #eee; display: flex;
           align-items: center; justify-content: center; color: #888; }
.note { color: #555; font-size: .9em; }
"""

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; font-size: .9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
""" + GRID_STYLE

# Counts the images the browser decoded, so a headless browser can check the page rendered.
IMAGE_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = loaded.length;
  document.getElementById("image-check").textContent =
    loaded.length + " of " + images.length + " images rendered";
});
</script>
"""


def table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    """A small HTML table; numbers right-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f'<td class="n">{value:.4g}</td>'
        if isinstance(value, int):
            return f'<td class="n">{value:,}</td>'
        return f"<td>{escape(str(value))}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def grid(block: Grid) -> str:
    """A titled grid of thumbnails with score, caption and drop reason."""
    cards = []
    for item in block.items:
        picture = (
            image(item.thumbnail, f"{item.shard}/{item.key}")
            if item.thumbnail
            else '<div class="missing">no image</div>'
        )
        score = "" if item.score is None else f'<div class="score">{item.score:+.4f}</div>'
        reason = f'<div class="reason">{escape(item.reason)}</div>' if item.reason else ""
        cards.append(
            f'<div class="card">{picture}{score}<div>{escape(item.text or "(no caption)")}</div>'
            f'{reason}<div class="note">{escape(item.shard)}/{escape(item.key)}</div></div>'
        )
    body = "".join(cards) or '<p class="note">no samples</p>'
    return (
        f'<h3>{escape(block.title)}</h3><p class="note">{escape(block.note)}</p>'
        f'<div class="grid">{body}</div>'
    )


GENERATOR = "filter-pool report"  # marks a file as a report: --overwrite replaces only those


def page(title: str, sections: list[tuple[str, str]]) -> str:
    """The whole document: a heading per section, then its HTML."""
    body = "".join(f"<h2>{escape(heading)}</h2>{content}" for heading, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{GENERATOR}">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1>{body}"
        '<p class="note" id="image-check"></p>'
        f"{IMAGE_CHECK}</body></html>"
    )
