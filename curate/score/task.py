"""One score shard's inputs and outputs, for every scorer kind.

``ShardInput`` is what a kind reads (pool rows, tar samples, saved embeddings); ``ShardRows``
is what it fills (one score, status and error per pool row); ``score_task`` runs a loaded
scorer over one shard and writes ``scores/<name>/part-NNNNN.parquet`` (and embeddings when
asked) atomically. The runner writes the completion record after it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.io import statuses as st
from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.pool_table import read_pool_part
from curate.io.schema import score_schema
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.io.storage import as_location
from curate.io.workspace import atomic_path
from curate.runner.stats import ShardStats
from curate.score.registry import ProgressFn, ShardScorer

logger = logging.getLogger(__name__)

ROW_COLUMNS = ["uid", "key", "text", "status", "error_message"]


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to score one shard; paths are plain strings so it pickles anywhere.
    ``tar`` may be a URL, read with ``storage_options`` (the run record's; never secrets)."""

    scorer: str
    shard_name: str
    tar: str | None
    pool_part: str
    scores_part: str
    embeddings_prefix: str | None = None  # where to save embeddings, when asked
    batch_size: int = 64
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    decode_threads: int = 0  # 0: the worker's torch threads when scoring on CUDA, else 1
    storage_options: dict[str, Any] | None = field(default=None, hash=False)


class ShardRows:
    """The output columns of one shard, filled in as samples are decided. Rows the pool marks
    as not downloaded start decided (``not_downloaded``)."""

    def __init__(self, table: pa.Table, embed_dim: int = 0, keep_embeddings: bool = False) -> None:
        self.uids = table.column("uid").to_pylist()
        self.keys = table.column("key").to_pylist()
        self.texts = table.column("text").to_pylist()
        n = len(self.uids)
        self.scores = np.full(n, np.nan, dtype=np.float32)
        self.status: list[str | None] = [None] * n
        self.error: list[str | None] = [None] * n
        self.keep_embeddings = keep_embeddings
        shape = (n, embed_dim) if keep_embeddings else (0, embed_dim)
        self.image_embeddings = np.full(shape, np.nan, dtype=np.float16)
        self.text_embeddings = np.full(shape, np.nan, dtype=np.float16)
        self.unlisted_samples = 0  # in the tar but not in the pool table
        self.shard_error: str | None = None  # the tar could not be read to its end
        self.row_of_key: dict[str, int] = {}
        for row, key in enumerate(self.keys):
            self.row_of_key.setdefault(key, row)
        for row, (pool_status, message) in enumerate(
            zip(
                table.column("status").to_pylist(),
                table.column("error_message").to_pylist(),
                strict=True,
            )
        ):
            if pool_status != "success":
                self.mark(row, st.NOT_DOWNLOADED, f"{pool_status}: {message or 'no message'}")

    def __len__(self) -> int:
        return len(self.uids)

    def store(self, done: list[int], scores: np.ndarray, image_embeddings: np.ndarray | None = None,
              text_embeddings: np.ndarray | None = None) -> None:
        """Scores (and embeddings, when kept) of scored rows; they become ``ok``."""
        self.scores[done] = scores
        if self.keep_embeddings and image_embeddings is not None:
            self.image_embeddings[done] = image_embeddings
            self.text_embeddings[done] = text_embeddings
        for row in done:
            self.mark(row, st.OK, None)

    def mark(self, row: int, status: str, error: str | None) -> None:
        self.status[row] = status
        self.error[row] = error

    def decided_count(self) -> int:
        """Rows with a status so far (read from the consumer while the reader marks more)."""
        return len(self.status) - self.status.count(None)

    def undecided(self) -> list[int]:
        return [row for row, value in enumerate(self.status) if value is None]

    def void_duplicates(self, tar_duplicates: set[str]) -> None:
        """Rows whose key occurs twice, in the pool part or in the tar: no copy keeps a score
        (which copy's image or caption it came from is unknowable)."""
        counts = Counter(self.keys)
        for row, key in enumerate(self.keys):
            if counts[key] > 1 or key in tar_duplicates:
                where = "the pool table" if counts[key] > 1 else "the tar"
                self.scores[row] = np.nan
                if len(self.image_embeddings):
                    self.image_embeddings[row] = np.nan
                    self.text_embeddings[row] = np.nan
                self.mark(row, st.DUPLICATE_KEY, f"key {key!r} occurs more than once in {where}")

    def finish(self, tar_result: TarReadResult) -> None:
        """After the tar: a key that occurred twice voids its rows (``duplicate_key``); rows
        never reached were cut short (``shard_truncated``) or are not in the tar."""
        self.void_duplicates(tar_result.duplicate_keys)
        for row in self.undecided():
            if tar_result.error:
                self.mark(row, st.SHARD_TRUNCATED, tar_result.error)
            else:
                self.mark(row, st.MISSING_IMAGE, "sample not found in the tar")
        self.shard_error = tar_result.error


@dataclass(frozen=True)
class Readable:
    """A sample with a caption and image bytes, waiting to be decoded."""

    row: int
    caption: str
    image: bytes


@dataclass(frozen=True)
class ShardInput:
    """What a scorer kind may read for one shard."""

    task: ShardTask
    pool: pa.Table  # ROW_COLUMNS of the shard's pool part

    @property
    def part(self) -> str:
        return Path(self.task.pool_part).stem

    def rows(self, embed_dim: int = 0) -> ShardRows:
        """Empty output rows; embeddings kept when the stage saves them."""
        return ShardRows(self.pool, embed_dim, self.task.embeddings_prefix is not None)

    def pool_columns(self, columns: list[str]) -> pa.Table:
        """More columns of the shard's pool part, row-aligned with ``pool``."""
        return read_pool_part(self.task.pool_part, columns)

    def readable(self, rows: ShardRows, tar_result: TarReadResult) -> Iterator[Readable]:
        """The tar's samples that have an image and a caption; mark the ones that do not."""
        if not self.task.tar:
            raise ValueError(f"shard {self.task.shard_name} has no tar to read images from")
        for sample in iter_tar_samples(as_location(self.task.tar), tar_result,
                                       options=self.task.storage_options):
            row = rows.row_of_key.get(sample.key)
            if row is None:
                rows.unlisted_samples += 1
                continue
            if sample.problem is not None:  # an unsafe member or a repeated key: not read
                rows.mark(row, sample.problem.status, sample.problem.reason)
                continue
            caption = sample.caption()
            if caption is None:
                caption = rows.texts[row]
            image_member = sample.image()
            if image_member is None:
                rows.mark(row, st.MISSING_IMAGE, "no image member in the tar")
            elif caption is None or not caption.strip():
                rows.mark(row, st.MISSING_CAPTION, "no caption (.txt empty or absent)")
            else:
                yield Readable(row, caption, image_member[1])

    def embedding(self, name: str, kind: str = "image") -> np.ndarray:
        """Saved ``kind`` (image or text) embeddings of ``name`` for this shard, memory-mapped
        and row-aligned with ``pool``."""
        run = Path(self.task.pool_part).parent.parent
        path = run / "embeddings" / name / f"{self.part}.{kind}.npy"
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.ndim != 2 or len(array) != self.pool.num_rows:
            raise ValueError(f"{path}: embeddings are not row-aligned with the pool part")
        return array

    def embeddings(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Saved float16 image and text embeddings of scorer ``name`` for this shard."""
        return self.embedding(name, "image"), self.embedding(name, "text")


def write_outputs(task: ShardTask, rows: ShardRows) -> None:
    """The score part (and embeddings when asked), each renamed into place."""
    table = pa.table(
        {
            "uid": pa.array(rows.uids, pa.string()),
            # null, not NaN, for unscored rows: SQL orders NaN above every score
            f"{task.scorer}_score": pa.array(rows.scores, pa.float32(), mask=np.isnan(rows.scores)),
            "status": pa.array(rows.status, pa.string()),
            "error": pa.array(rows.error, pa.string()),
        },
        schema=score_schema(task.scorer),
    )
    with atomic_path(Path(task.scores_part)) as tmp:
        pq.write_table(table, tmp)
    if task.embeddings_prefix is not None and rows.keep_embeddings:
        for kind, array in (("image", rows.image_embeddings), ("text", rows.text_embeddings)):
            target = Path(f"{task.embeddings_prefix}.{kind}.npy")
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)


def score_task(task: ShardTask, scorer: ShardScorer, progress: ProgressFn | None = None
               ) -> ShardStats:
    """Score every pool row of one shard with a loaded scorer, write its part; its stats."""
    started = time.perf_counter()
    reported = 0

    def counted(count: int) -> None:
        nonlocal reported
        reported += count
        if progress is not None:
            progress(count)

    pool = read_pool_part(task.pool_part, ROW_COLUMNS)
    rows = scorer.score(ShardInput(task, pool), counted)
    if len(rows) != pool.num_rows or rows.undecided():
        raise ValueError(f"shard {task.shard_name}: the scorer left rows without a status")
    counted(pool.num_rows - reported)
    stats = ShardStats(shards=1, samples=pool.num_rows, unlisted_samples=rows.unlisted_samples)
    if rows.shard_error:
        stats.failed_shards[task.shard_name] = rows.shard_error
        logger.error("shard %s: %s", task.shard_name, rows.shard_error)
    stats.by_status.update(rows.status)
    stats.seconds = time.perf_counter() - started
    write_outputs(task, rows)
    return stats
