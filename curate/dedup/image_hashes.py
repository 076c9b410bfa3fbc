"""The image-hash cache: a sharded stage on the runner that reads each shard's tar once and
writes ``RUN/features/image_hashes/part-NNNNN.parquet`` (one row per pool row: uid, sha256
as 32 bytes, pixel hash, pHash, dHash as uint64, status, error), resumable per shard.

Rows without a hash say why in ``status`` (the statuses of ``curate.io.statuses``: not
downloaded, missing or corrupt image, a repeated key, a cut tar); the exact and perceptual
dedup levels both read this cache.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.executor.base import ProgressFn
from curate.io import statuses as st
from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.pool_table import read_pool_part
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.io.statuses import SampleError
from curate.io.storage import as_location, changed_since_ingest
from curate.io.workspace import RunPaths, atomic_path, part_name
from curate.runner import Shard, ShardedStage, ShardStats, StageSummary, run_sharded

logger = logging.getLogger(__name__)

FEATURE_DIR = "image_hashes"
HASH_SCHEMA = pa.schema([
    ("uid", pa.string()),
    ("sha256", pa.binary(32)),
    ("pixels", pa.uint64()),
    ("phash", pa.uint64()),
    ("dhash", pa.uint64()),
    ("status", pa.string()),
    ("error", pa.string()),
])


def hashes_dir(run: Path) -> Path:
    """``RUN/features/image_hashes``."""
    return RunPaths(Path(run)).root / "features" / FEATURE_DIR


@dataclass(frozen=True)
class HashTask:
    """One shard to hash; plain strings so it pickles to any worker. ``tar`` may be a URL,
    read with ``storage_options`` (the run record's; never secrets)."""

    shard_name: str
    tar: str
    pool_part: str
    output: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict[str, Any] | None = field(default=None, hash=False)


class _Rows:
    """The output columns of one shard, decided row by row."""

    def __init__(self, pool: pa.Table) -> None:
        self.uids = pool.column("uid").to_pylist()
        keys = pool.column("key").to_pylist()
        n = len(keys)
        self.values: dict[str, list] = {c: [None] * n for c in ("sha256", "pixels", "phash",
                                                                 "dhash")}
        self.status: list[str | None] = [None] * n
        self.error: list[str | None] = [None] * n
        counts = Counter(keys)
        self.row_of_key = {key: row for row, key in reversed(list(enumerate(keys)))}
        self.repeated = {key for key, count in counts.items() if count > 1}
        for row, (status, message) in enumerate(zip(pool.column("status").to_pylist(),
                                                    pool.column("error_message").to_pylist(),
                                                    strict=True)):
            if status != "success":
                self.mark(row, st.NOT_DOWNLOADED, f"{status}: {message or 'no message'}")

    def mark(self, row: int, status: str, error: str | None) -> None:
        self.status[row], self.error[row] = status, error

    def table(self) -> pa.Table:
        return pa.table({"uid": self.uids, **self.values, "status": self.status,
                         "error": self.error}, schema=HASH_SCHEMA)


def hash_task(task: HashTask, progress: ProgressFn | None = None) -> ShardStats:
    """Hash every image of one shard; write its part atomically; its stats."""
    from curate.dedup.hashes import hash_image

    started = time.perf_counter()
    pool = read_pool_part(task.pool_part, ["uid", "key", "status", "error_message"])
    rows = _Rows(pool)
    result = TarReadResult()
    unlisted = 0
    for sample in iter_tar_samples(as_location(task.tar), result,
                                   options=task.storage_options):
        row = rows.row_of_key.get(sample.key)
        if row is None:
            unlisted += 1
            continue
        if rows.status[row] is not None:
            continue  # not downloaded per the pool table, yet in the tar: the pool table wins
        member = sample.image()
        if sample.problem is not None:
            rows.mark(row, sample.problem.status, sample.problem.reason)
        elif member is None:
            rows.mark(row, st.MISSING_IMAGE, "no image member in the tar")
        else:
            try:
                hashes = hash_image(member[1], task.max_pixels)
            except SampleError as exc:
                rows.mark(row, exc.status, exc.reason)
                continue
            for column in rows.values:
                rows.values[column][row] = getattr(hashes, column)
            rows.mark(row, st.OK, None)
        if progress is not None:
            progress(1)
    for row, key in enumerate(pool.column("key").to_pylist()):
        if key in rows.repeated or key in result.duplicate_keys:
            for column in rows.values:
                rows.values[column][row] = None
            rows.mark(row, st.DUPLICATE_KEY, f"key {key!r} occurs more than once")
        elif rows.status[row] is None:
            rows.mark(row, st.SHARD_TRUNCATED if result.error else st.MISSING_IMAGE,
                      result.error or "sample not found in the tar")
    with atomic_path(Path(task.output)) as tmp:
        pq.write_table(rows.table(), tmp)
    stats = ShardStats(shards=1, samples=pool.num_rows, unlisted_samples=unlisted,
                       seconds=time.perf_counter() - started)
    stats.by_status.update(rows.status)
    if result.error:
        stats.failed_shards[task.shard_name] = result.error
    return stats


def _pool_rows(tasks: list[HashTask]) -> int:
    return sum(pq.ParquetFile(task.pool_part).metadata.num_rows for task in tasks)


def hash_stage(run: Path) -> ShardedStage:
    """The image-hash stage over every shard of ``run`` that has a tar."""
    paths = RunPaths(Path(run))
    output_dir = hashes_dir(run)
    options = paths.pool_storage_options()
    record = paths.read_run()
    if changed := changed_since_ingest(record["shards"], options):
        raise UserError(changed)
    shards = []
    for shard in record["shards"]:
        part = part_name(shard["index"])
        output = output_dir / f"{part}.parquet"
        task = HashTask(shard_name=shard["name"], tar=str(shard["tar"]),
                        pool_part=str(paths.pool_part(shard["index"])), output=str(output),
                        storage_options=options)
        shards.append(Shard(name=shard["name"], part=part, task=task, outputs=(str(output),),
                            inputs=(task.pool_part,)))
    return ShardedStage(name="image hashes", shards=tuple(shards), task_fn=hash_task,
                        stats_type=ShardStats, output_dir=output_dir,
                        progress_total=_pool_rows, unit="image")


def compute_hashes(run: Path, executor: ExecutorConfig, progress: bool = True) -> StageSummary:
    """Hash the images of every unfinished shard (finished shards are reused)."""
    return run_sharded(hash_stage(run), executor, progress=progress)


def read_hashes(run: Path, part: str) -> pa.Table:
    """One part of the hash cache."""
    return pq.read_table(hashes_dir(run) / f"{part}.parquet")
