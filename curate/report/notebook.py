"""Image grids for notebooks: samples of a run shown with their thumbnails and captions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from curate.io.workspace import RunPaths
from curate.report import html as H
from curate.report.data import Grid, GridItem
from curate.report.thumbnails import read_thumbnails


class HtmlBlock(str):
    """HTML that Jupyter renders (``_repr_html_``) and that prints as its source elsewhere."""

    def _repr_html_(self) -> str:
        return str(self)


def sample_grid(
    run: Path | str,
    rows: Iterable[Mapping[str, Any]],
    title: str = "",
    score: str | None = None,
    reason: str | None = None,
) -> HtmlBlock:
    """A grid of the given samples (each with ``shard``, ``key``, ``text``), read from the pool.

    ``rows`` can be ``polars.DataFrame.iter_rows(named=True)`` or a list of dicts; ``score``
    and ``reason`` name optional columns shown under each image.
    """
    paths = RunPaths(Path(run))
    shards = paths.read_run().get("shards", [])
    tar_of_shard = {s["name"]: s.get("tar") for s in shards}
    items = [
        GridItem(
            str(r["shard"]),
            str(r["key"]),
            r.get("text"),
            None if score is None or r.get(score) is None else float(r[score]),
            None if reason is None else r.get(reason),
        )
        for r in rows
    ]
    thumbnails = read_thumbnails(tar_of_shard, {(i.shard, i.key) for i in items},
                                 paths.pool_storage_options())
    for item in items:
        item.thumbnail = thumbnails.get((item.shard, item.key))
    return HtmlBlock(f"<style>{H.GRID_STYLE}</style>" + H.grid(Grid(title, "", items)))
