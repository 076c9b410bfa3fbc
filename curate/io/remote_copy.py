"""This machine's copy of a model folder or a head file that lives on object storage.

``score --model s3://bucket/models/dfn1`` (a ``train-dfn --out`` folder on the store),
``--pretrained s3://.../ckpt.pt`` and ``--head s3://.../head.safetensors`` are loaded wherever
the scorer runs: the client and each Dask worker, which need not share a disk. Each machine
copies the files into ``$FILTER_POOL_CACHE/copies/<hash of the URL>/<hash of the listing>/``
once and reuses the copy while the store lists the same names, sizes and ETags; a model
written again to the same URL is copied again and older copies of that URL are removed. A
copy is made in a staging folder and renamed into place, so workers of one machine never read
a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.storage import (
    UnreadableFile,
    _entry,
    _filesystem,
    fetch_file,
    storage_error,
)


@dataclass(frozen=True)
class RemoteCopy:
    """A local copy: ``path`` (the folder, or the file for a file URL) and each copied file's
    ETag as the store listed it (for provenance: records name the URL and ETag, not the
    copy)."""

    url: str
    path: Path
    etags: dict[str, str | None]

    def describe(self, name: str) -> str:
        """``URL/name (ETag ...)``: what a record says was loaded."""
        url = self.url if self.path.is_file() else f"{self.url}/{name}"
        etag = self.etags.get(name)
        return f"{url} (ETag {etag})" if etag else url


def copies_root() -> Path:
    """``$FILTER_POOL_CACHE/copies`` or ``~/.cache/filter-pool/copies``."""
    from curate.io.run_store import cache_root

    return cache_root().parent / "copies"


def _listing(url: str, options: dict[str, Any] | None, what: str
             ) -> tuple[bool, list[tuple[str, int, str | None]]]:
    """(is a single file, [(name, size, ETag)]) of the files at ``url`` (a folder's files,
    not its sub-folders); one line when the store cannot say."""
    try:
        filesystem, path = _filesystem(url, options)
        listed = filesystem.ls(path, detail=True, refresh=True)
    except Exception as exc:  # the storage layer raises many kinds; each becomes one line
        raise storage_error(exc, url, what) from exc
    single = len(listed) == 1 and listed[0].get("type") == "file" and \
        listed[0]["name"].rstrip("/") == path.rstrip("/")
    names = {info["name"].rstrip("/").rsplit("/", 1)[-1]: info for info in listed
             if info.get("type") == "file"}
    entries = [_entry(name, url if single else f"{url}/{name}", info)
               for name, info in names.items()]
    files = [(entry.name, int(entry.size or 0), entry.etag) for entry in entries]
    if not files:
        raise UserError(f"{what} {url} holds no files")
    return single, sorted(files)


def remote_copy(url: str, what: str = "model", options: dict[str, Any] | None = None
                ) -> RemoteCopy:
    """The local copy of the file or folder at ``url``, made when this machine has none of
    what the store lists now. Store options: ``options``, else those of runs on a URL
    (``$FILTER_POOL_STORAGE_OPTIONS``; credentials from the environment)."""
    from curate.io.run_store import env_storage_options

    url = url.rstrip("/")
    options = options if options is not None else env_storage_options()
    single, files = _listing(url, options, what)
    home = copies_root() / hashlib.sha256(url.encode()).hexdigest()[:20]
    digest = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:20]
    target = home / digest
    if not target.is_dir():
        home.mkdir(parents=True, exist_ok=True)
        staging = home / f".{digest}.{uuid.uuid4().hex[:8]}.tmp"
        staging.mkdir()
        try:
            for name, size, _ in files:
                source = url if single else f"{url}/{name}"
                try:
                    fetch_file(source, options, staging / name)
                except UnreadableFile as exc:
                    raise UserError(f"{what} {exc}") from None
                if (staging / name).stat().st_size != size:
                    raise UserError(f"{what} {source} changed while it was copied; run the "
                                    "command again")
            try:
                os.replace(staging, target)
            except OSError:  # another process of this machine placed the same copy first
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for older in home.iterdir():
            if older.name != digest and not older.name.startswith("."):
                shutil.rmtree(older, ignore_errors=True)
    etags = {name: etag for name, _, etag in files}
    return RemoteCopy(url, target / files[0][0] if single else target, etags)
