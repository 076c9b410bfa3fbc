"""Download a toy world's pool the way a real one is downloaded: serve its files on 127.0.0.1
and run img2dataset over the URL list (``filter-pool download WORLD``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.download import (
    DownloadConfig,
    DownloadSummary,
    download_urls,
    finished_download,
)
from curate.io.serve import serve_directory
from curate.io.uids import uid_from_url_caption
from curate.io.workspace import atomic_path
from curate.toyworld.world import (
    POOL_FILES,
    POOL_INDEX,
    POOL_LABELS,
    WORLD_FILE,
    read_world_record,
)

POOL_URLS = "pool_urls.parquet"  # written into a toy world by download_toy_pool
TOY_SHARD_SIZE = 2500  # a toy pool is small: more shards keep every process busy


def write_url_list(world: Path, base_url: str) -> Path:
    """``WORLD/pool_urls.parquet`` (url, caption) for ``WORLD/pool_files`` served at
    ``base_url``, and the
    ground-truth labels keyed by the uid ingest will give each sample."""
    index = pq.read_table(world / POOL_INDEX)
    paths = index["path"].to_pylist()
    captions = index["caption"].to_pylist()
    urls = [base_url + p for p in paths]
    target = world / POOL_URLS
    with atomic_path(target) as tmp:
        pq.write_table(pa.table({"url": urls, "caption": captions}), tmp)
    labels = pq.read_table(world / POOL_LABELS)
    labels = labels.drop_columns([c for c in ("url", "uid") if c in labels.column_names])
    by_path = dict(zip(paths, urls, strict=True))
    label_urls = [by_path[p] for p in labels["path"].to_pylist()]
    uids = [
        uid_from_url_caption(u, c)
        for u, c in zip(label_urls, labels["caption"].to_pylist(), strict=True)
    ]
    labels = labels.append_column("url", pa.array(label_urls, pa.string()))
    labels = labels.append_column("uid", pa.array(uids, pa.string()))
    with atomic_path(world / POOL_LABELS) as tmp:
        pq.write_table(labels, tmp)
    return target


def download_toy_pool(world: Path | str, out: Path | str, **options: Any) -> DownloadSummary:
    """Serve a toy world's POOL files on 127.0.0.1 and download them with img2dataset.

    Writes ``WORLD/pool_urls.parquet`` for the bound port and adds ``url`` and ``uid`` (the
    uid ingest derives from url and caption) to ``WORLD/pool_labels.parquet``.
    ``options`` are :class:`DownloadConfig` fields (processes, threads, overwrite...);
    ``shard_size`` defaults to :data:`TOY_SHARD_SIZE`.
    """
    world = Path(world)
    read_world_record(world)
    options = {"shard_size": TOY_SHARD_SIZE, **options}
    config = DownloadConfig(urls=world / POOL_URLS, out=Path(out), **options)
    if config.out.exists() and not config.overwrite:
        return finished_download(config)  # the same world and settings: reused
    with serve_directory(world / POOL_FILES) as base_url:  # only the files, never the labels
        write_url_list(world, base_url)
        summary = download_urls(config, base_url)
    summary.base_url = base_url
    return summary


def download_pool(
    urls: Path | str, out: Path | str, *, url_col: str = "url", caption_col: str = "caption",
    **options: Any,
) -> DownloadSummary:
    """``filter-pool download``: a toy world folder is served and downloaded
    (:func:`download_toy_pool`; its URL list has fixed columns), anything else is a URL list
    for img2dataset. ``options`` are :class:`DownloadConfig` fields."""
    urls = Path(urls)
    if urls.is_dir() and (urls / WORLD_FILE).is_file():
        return download_toy_pool(urls, out, **options)
    if urls.is_dir():
        raise UserError(f"{urls} is a folder but not a toy world (no {WORLD_FILE}); "
                        "pass a URL list")
    return download_urls(DownloadConfig(urls=urls, out=Path(out), url_col=url_col,
                                        caption_col=caption_col, **options))
