"""``filter-pool download``: a URL list to webdataset shards with img2dataset.

img2dataset is the real ingestion path: its per-shard parquet, ``_stats.json`` and tars are
what ``filter-pool ingest`` reads. The defaults are DataComp's (``download_upstream.py``):
``image_size=512``, ``resize_mode="keep_ratio_largest"``, ``resize_only_if_bigger=True``,
``encode_format="jpg"``, 10,000 samples per shard, so images smaller than 512 px (all of the
toy world's) keep their size and aspect ratio.

The output is written to a staging folder beside ``--out`` and renamed into place when
img2dataset has finished, so an interrupted download never leaves a half-written pool.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.workspace import (
    check_apart,
    check_replaceable,
    refuse_other_settings,
    staged_directory,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
URL_LIST_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "txt",
                    ".json": "json", ".jsonl": "jsonl"}  # fmt: skip


@dataclass(frozen=True)
class DownloadConfig:
    """img2dataset settings (DataComp's where it sets them) and where the shards go."""

    urls: Path
    out: Path
    processes: int = 1
    threads: int = 16
    image_size: int = 512
    resize_mode: str = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    url_col: str = "url"
    caption_col: str | None = "caption"
    shard_size: int = 10_000
    timeout: int = 10
    retries: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", Path(self.urls))
        object.__setattr__(self, "out", Path(self.out))
        if self.resize_mode not in RESIZE_MODES:
            raise UserError(
                f"--resize-mode {self.resize_mode!r}: choose one of {', '.join(RESIZE_MODES)}"
            )
        if self.encode_format not in ("jpg", "png", "webp"):
            raise UserError(f"--encode-format {self.encode_format!r}: choose jpg, png or webp")
        for name in ("processes", "threads", "image_size", "shard_size", "timeout"):
            if getattr(self, name) < 1:
                raise UserError(f"download: {name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0:
            raise UserError(f"download: retries must be >= 0, got {self.retries}")


@dataclass
class DownloadSummary:
    """What img2dataset did, from its ``_stats.json`` files."""

    out: Path
    shards: int = 0
    count: int = 0
    successes: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    base_url: str | None = None  # set when a toy world was served for this download
    reused: bool = False  # an existing download of the same list and settings

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "shards": self.shards,
            "count": self.count,
            "successes": self.successes,
            "by_status": dict(self.by_status),
            "base_url": self.base_url,
            "reused": self.reused,
        }

    def text(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        return (f"{'done: already ' if self.reused else ''}downloaded {self.successes} of "
                f"{self.count} samples in {self.shards} shards "
                f"into {self.out} ({statuses})")


def _input_format(urls: Path) -> str:
    fmt = URL_LIST_FORMATS.get(urls.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{urls}: unknown URL list format; use one of {', '.join(sorted(URL_LIST_FORMATS))}"
        )
    return fmt


def _check_url_list(config: DownloadConfig) -> str:
    """The img2dataset input format; UserError for a missing list or missing columns."""
    if not config.urls.is_file():
        raise UserError(f"URL list {config.urls} does not exist")
    fmt = _input_format(config.urls)
    if fmt == "parquet":
        try:
            names = pq.read_schema(config.urls).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"{config.urls}: unreadable parquet ({exc})") from exc
    elif fmt in ("csv", "tsv"):
        with open(config.urls, encoding="utf-8") as handle:
            names = handle.readline().rstrip("\r\n").split("," if fmt == "csv" else "\t")
    else:
        return fmt  # txt has one URL per line; json/jsonl are checked by img2dataset
    for option, column in (("--url-col", config.url_col), ("--caption-col", config.caption_col)):
        if column is not None and column not in names:
            raise UserError(
                f"{config.urls}: no column '{column}' ({option}); columns: {', '.join(names)}"
            )
    return fmt


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """img2dataset and its worker processes print progress on stdout; send it to stderr so
    stdout carries only our result (``--json``). The SIGINT handler it installs is undone."""
    sys.stdout.flush()
    saved_fd = os.dup(1)
    saved_sigint = signal.getsignal(signal.SIGINT)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, saved_sigint)


def _run_img2dataset(config: DownloadConfig, fmt: str, output: Path) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    from img2dataset import download

    with _stdout_to_stderr():
        download(
            url_list=str(config.urls),
            output_folder=str(output),
            processes_count=config.processes,
            thread_count=config.threads,
            image_size=config.image_size,
            resize_mode=config.resize_mode,
            resize_only_if_bigger=config.resize_only_if_bigger,
            encode_format=config.encode_format,
            output_format="webdataset",
            input_format=fmt,
            url_col=config.url_col,
            caption_col=None if fmt == "txt" else config.caption_col,  # txt: URLs only
            number_sample_per_shard=config.shard_size,
            timeout=config.timeout,
            retries=config.retries,
            enable_wandb=False,
            incremental_mode="incremental",  # "overwrite" deletes its own _tmp folder
        )


def _summarize(out: Path) -> DownloadSummary:
    summary = DownloadSummary(out=out)
    for stats_file in sorted(out.glob("*_stats.json")):
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        summary.shards += 1
        summary.count += int(stats.get("count", 0))
        summary.successes += int(stats.get("successes", 0))
    for parquet in sorted(out.glob("*.parquet")):
        summary.by_status.update(pq.read_table(parquet, columns=["status"])["status"].to_pylist())
    return summary


DOWNLOAD_RECORD = "_download.json"  # OUT/_download.json: the list and settings used


def _request(config: DownloadConfig) -> dict[str, Any]:
    """What shapes a download's shards (not processes, threads, timeout or retries)."""
    keys = ("url_col", "caption_col", "image_size", "resize_mode", "resize_only_if_bigger",
            "encode_format", "shard_size")
    return {"urls": str(config.urls.resolve()), **{k: getattr(config, k) for k in keys}}


def finished_download(config: DownloadConfig) -> DownloadSummary:
    """The download already in ``config.out`` when made from the same list with the same
    settings (reused), else a UserError naming what differs."""
    record_file = config.out / DOWNLOAD_RECORD
    if not record_file.is_file():
        raise UserError(f"{config.out} exists; use --overwrite to replace it")
    record = json.loads(record_file.read_text(encoding="utf-8"))
    refuse_other_settings(f"download {config.out}", record["request"], _request(config),
                          "use --overwrite to replace it")
    summary = _summarize(config.out)
    summary.base_url, summary.reused = record.get("base_url"), True
    logger.info("download %s: made from the same list with the same settings, reused",
                config.out)
    return summary


def download_urls(config: DownloadConfig, base_url: str | None = None) -> DownloadSummary:
    """Download a URL list into webdataset shards at ``config.out`` with img2dataset; an
    existing download of the same list and settings is reused (``base_url``: where a served
    toy world was, recorded)."""
    check_apart(config.out, [config.urls])
    if config.out.exists() and not config.overwrite:
        return finished_download(config)
    check_replaceable(config.out, (DOWNLOAD_RECORD,), "download")
    fmt = _check_url_list(config)
    with staged_directory(config.out) as stage:
        output = stage / "shards"  # img2dataset wants to create its folder itself
        _run_img2dataset(config, fmt, output)
        if not any(output.glob("*_stats.json")):
            raise UserError(f"img2dataset wrote no shard for {config.urls} (empty URL list?)")
        for item in output.iterdir():
            item.rename(stage / item.name)
        output.rmdir()
        write_json_atomic(stage / DOWNLOAD_RECORD,
                          {"request": _request(config), "base_url": base_url})
    summary = _summarize(config.out)
    logger.info("downloaded %d of %d samples into %s", summary.successes, summary.count,
                config.out)  # fmt: skip
    return summary
