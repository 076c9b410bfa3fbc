"""This machine's copies of pool files that live on object storage.

Some readers need a pool file on local disk: DuckDB's views over referenced DataComp metadata,
and training, which reads image members of a shard tar by byte offset. Such a file is fetched
once into ``$FILTER_POOL_CACHE/pools/<hash of the pool URL>/`` under a name holding the ETag
ingest recorded, and only while the store still serves that ETag (and, for a plain MD5 ETag,
the fetched bytes hash to it). Each use checks the store's listing of the pool (one LIST,
reused for a minute), so every reader sees the bytes ingest saw, or one line saying the file
changed or is gone, as for a pool on disk.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.storage import PoolEntry, fetch_file, list_pool
from curate.io.workspace import file_md5

LISTING_SECONDS = 60.0  # how long one listing of a pool on a URL answers "unchanged?"
_listings: dict[str, tuple[float, dict[str, PoolEntry]]] = {}


class SourceChanged(UserError):
    """A pool file a run reads that is gone, moved out of the pool or changed since ingest."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a pool on a URL, as ingest saw it."""

    pool: str  # the pool's URL, without a trailing slash
    url: str
    size: int | None
    etag: str | None
    use: str  # what the run reads from it, for messages ("url, text and the other ...")


def pools_root() -> Path:
    """Where pool caches live: ``$FILTER_POOL_CACHE/pools`` or ``~/.cache/filter-pool/pools``."""
    from curate.io.run_store import cache_root

    return cache_root().parent / "pools"


def cache_folder(pool_url: str, root: Path | None = None) -> Path:
    """The folder of this machine's pool cache that holds the files of the pool at ``pool_url``."""
    name = hashlib.sha256(pool_url.rstrip("/").encode()).hexdigest()[:20]
    return (root if root is not None else pools_root()) / name


def listed(pool_url: str, options: dict[str, Any] | None) -> dict[str, PoolEntry]:
    """The pool folder's files on the store (one LIST, reused for LISTING_SECONDS)."""
    seen = _listings.get(pool_url)
    if seen is None or time.monotonic() - seen[0] > LISTING_SECONDS:
        try:
            seen = (time.monotonic(), list_pool(pool_url, options))
        except UserError as exc:
            raise SourceChanged(f"{exc}: the run reads its pool files from there") from None
        _listings[pool_url] = seen
    return seen[1]


def cached_copy(file: RemoteFile, options: dict[str, Any] | None,
                folder: Path | None = None) -> Path:
    """The local copy of ``file``, fetched when missing; SourceChanged when the store no longer
    serves what ingest read (gone, another size or ETag, bytes that do not hash to it)."""
    url, pool = file.url, file.pool
    if not url.startswith(pool + "/") or not file.etag:
        raise SourceChanged(f"{url}: run.json names a pool file outside the pool {pool} (or "
                            "without its ETag); refused")
    relative = url[len(pool) + 1:]
    now = listed(pool, options).get(relative)
    if now is None:
        raise SourceChanged(f"{url}: the pool file this run reads {file.use} from is gone; put "
                            "it back or ingest the pool again")
    if (now.size, now.etag) != (file.size, file.etag):
        raise SourceChanged(
            f"{url} changed since ingest (size {file.size}, ETag {file.etag}; now size "
            f"{now.size}, ETag {now.etag}): the run's tables no longer match it, so ingest the "
            "pool again")
    folder = folder if folder is not None else cache_folder(pool)
    local = folder / f"{file.etag}-{relative.replace('/', '%2F')}"
    if local.is_file() and local.stat().st_size == file.size:
        return local
    folder.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fetch_file(url, options, partial)
        if partial.stat().st_size != file.size or (len(file.etag) == 32 and
                                                   file_md5(partial) != file.etag):
            raise SourceChanged(f"{url} changed while it was fetched; run the command again, "
                                "or ingest the pool again if it keeps changing")
        os.replace(partial, local)
    finally:
        partial.unlink(missing_ok=True)
    return local
