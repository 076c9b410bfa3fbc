"""Score one shard: a plain function that any executor (or a test) can call.

Reading and decoding run in a background thread that prepares the next batches while the
model encodes the current one. Images are encoded batch by batch in shard order; captions
wait in a window of a few batches and are encoded sorted by token length, so each text
batch pads only to similar lengths, and scores go back to the rows they came from. Every
row of the shard's pool part leaves exactly one score row; the score part and embeddings
are renamed into place, the completion record last.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from curate.io import statuses as st
from curate.io.image import DEFAULT_MAX_PIXELS
from curate.io.schema import score_schema
from curate.io.shards import TarReadResult, iter_tar_samples
from curate.io.workspace import atomic_path, write_json_atomic
from curate.runner.stats import ShardStats
from curate.score.scorer import EncodedBatch as EncodedRows
from curate.score.scorer import Scorer

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]
PREFETCH_BATCHES = 2
TEXT_WINDOW_BATCHES = 8


@dataclass(frozen=True)
class ShardTask:
    """Everything needed to score one shard; paths are plain strings so it pickles anywhere."""

    scorer: str
    shard_name: str
    tar: str
    pool_part: str
    scores_part: str
    done_record: str
    embeddings_prefix: str | None = None
    batch_size: int = 64
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    decode_threads: int = 0  # 0: the worker's torch threads when scoring on CUDA, else 1


@dataclass
class Batch:
    rows: list[int]
    images: torch.Tensor
    tokens: torch.Tensor


class _ShardRows:
    """The output columns of one shard, filled in as samples are decided."""

    def __init__(self, table: pa.Table, embed_dim: int, keep_embeddings: bool) -> None:
        self.uids = table.column("uid").to_pylist()
        self.keys = table.column("key").to_pylist()
        self.texts = table.column("text").to_pylist()
        n = len(self.uids)
        self.scores = np.full(n, np.nan, dtype=np.float32)
        self.status: list[str | None] = [None] * n
        self.error: list[str | None] = [None] * n
        shape = (n, embed_dim) if keep_embeddings else (0, embed_dim)
        self.image_embeddings = np.full(shape, np.nan, dtype=np.float16)
        self.text_embeddings = np.full(shape, np.nan, dtype=np.float16)
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

    def store(self, done: list[int], encoded: EncodedRows, keep_embeddings: bool) -> None:
        """Scores (and embeddings) of scored rows; they become ``ok``."""
        self.scores[done] = encoded.scores
        if keep_embeddings:
            self.image_embeddings[done] = encoded.image_embeddings
            self.text_embeddings[done] = encoded.text_embeddings
        for row in done:
            self.mark(row, st.OK, None)

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

    def mark(self, row: int, status: str, error: str | None) -> None:
        self.status[row] = status
        self.error[row] = error

    def decided_count(self) -> int:
        """Rows with a status so far (read from the consumer while the reader marks more)."""
        return len(self.status) - self.status.count(None)

    def undecided(self) -> list[int]:
        return [row for row, value in enumerate(self.status) if value is None]


@dataclass(frozen=True)
class _Readable:
    """A sample with a caption and image bytes, waiting to be decoded."""

    row: int
    caption: str
    image: bytes


def decode_threads(task: ShardTask, scorer: Scorer) -> int:
    """Threads decoding images: on CUDA the CPU's only work, so every thread of the worker.

    On an H100 host, Pillow decoding and preprocessing 512 px JPEGs ran 129 samples/s on one
    thread, where ViT-B-32 alone ran 2,000/s; with 16 threads a shard scored 442/s. On CPU the
    model shares the cores, and decoding stays on the one prefetch thread.
    """
    if task.decode_threads > 0:
        return task.decode_threads
    return torch.get_num_threads() if scorer.device.type == "cuda" else 1


def _decode_in_order(
    readable: Iterator[_Readable], load_image: Callable[[bytes], torch.Tensor], threads: int
) -> Iterator[tuple[_Readable, torch.Tensor | st.SampleError]]:
    """Each sample with its decoded tensor or its failure, in tar order, on ``threads``."""

    def decode(item: _Readable) -> torch.Tensor | st.SampleError:
        try:
            return load_image(item.image)
        except st.SampleError as failure:
            return failure

    if threads <= 1:
        for item in readable:
            yield item, decode(item)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        in_flight: deque[tuple[_Readable, Future]] = deque()
        for item in readable:
            in_flight.append((item, pool.submit(decode, item)))
            if len(in_flight) >= 4 * threads:
                first, future = in_flight.popleft()
                yield first, future.result()
        while in_flight:
            first, future = in_flight.popleft()
            yield first, future.result()


def _readable_samples(
    task: ShardTask, rows: _ShardRows, tar_result: TarReadResult, stats: ShardStats
) -> Iterator[_Readable]:
    """The tar's samples that have an image and a caption; mark the ones that do not."""
    for sample in iter_tar_samples(Path(task.tar), tar_result):
        row = rows.row_of_key.get(sample.key)
        if row is None:
            stats.unlisted_samples += 1
            continue
        if sample.problem is not None:
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
            yield _Readable(row, caption, image_member[1])


def _prepare_batches(
    task: ShardTask,
    scorer: Scorer,
    rows: _ShardRows,
    tar_result: TarReadResult,
    stats: ShardStats,
) -> Iterator[Batch]:
    """Decode and preprocess the tar's samples into batches; mark the ones that fail."""
    pending_rows: list[int] = []
    pending_images: list[torch.Tensor] = []
    pending_captions: list[str] = []

    load_image = scorer.image_loader(task.max_image_pixels)
    pin = scorer.device.type == "cuda"

    def flush() -> Batch:
        images = torch.stack(pending_images)
        batch = Batch(
            list(pending_rows),
            images.pin_memory() if pin and not images.is_cuda else images,
            scorer.tokenize(list(pending_captions)),
        )
        pending_rows.clear()
        pending_images.clear()
        pending_captions.clear()
        return batch

    readable = _readable_samples(task, rows, tar_result, stats)
    threads = decode_threads(task, scorer)
    for item, decoded in _decode_in_order(readable, load_image, threads):
        if isinstance(decoded, st.SampleError):
            rows.mark(item.row, decoded.status, decoded.reason)
            continue
        pending_rows.append(item.row)
        pending_images.append(decoded)
        pending_captions.append(item.caption)
        if len(pending_rows) == task.batch_size:
            yield flush()
    if pending_rows:
        yield flush()


def _prefetch(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``batches`` in a background thread, at most ``depth`` batches ahead."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                buffer.put(batch)
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer and raised there
            buffer.put(exc)

    thread = threading.Thread(target=produce, name="shard-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)


class TextWindow:
    """Image embeddings waiting for their captions, which are encoded together by length."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.image_embeddings: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: Batch, image_embeddings: torch.Tensor) -> None:
        self.rows.extend(batch.rows)
        self.image_embeddings.append(image_embeddings)
        self.tokens.append(batch.tokens)

    def encode(self, scorer: Scorer, batch_size: int) -> tuple[list[int], EncodedRows]:
        """Encode the captions shortest first, in batches; return rows in arrival order."""
        tokens = torch.cat(self.tokens)
        image = torch.cat(self.image_embeddings)
        text = torch.empty_like(image)
        order = torch.argsort(scorer.text_lengths(tokens), stable=True)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            text[chunk] = scorer.encode_texts(tokens[chunk])
        rows = self.rows
        self.rows, self.image_embeddings, self.tokens = [], [], []
        scores = (image * text).sum(dim=-1)
        return rows, EncodedRows(scores.numpy(), image.numpy(), text.numpy())


def encode_in_windows(
    scorer: Scorer, batches: Iterable[Batch], batch_size: int
) -> Iterator[tuple[list[int], EncodedRows]]:
    """Images batch by batch; captions a window of batches at a time, by length. Yields the
    rows of each finished window with their scores and embeddings."""
    window = TextWindow()
    for batch in batches:
        window.add(batch, scorer.encode_images(batch.images))
        if len(window) >= TEXT_WINDOW_BATCHES * batch_size:
            yield window.encode(scorer, batch_size)
    if len(window):
        yield window.encode(scorer, batch_size)


def _write_outputs(task: ShardTask, rows: _ShardRows, stats: ShardStats) -> None:
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
    if task.embeddings_prefix is not None:
        for kind, array in (("image", rows.image_embeddings), ("text", rows.text_embeddings)):
            target = Path(f"{task.embeddings_prefix}.{kind}.npy")
            with atomic_path(target) as tmp, open(tmp, "wb") as handle:
                np.save(handle, array)
    write_json_atomic(Path(task.done_record), stats.to_dict())


def score_shard(task: ShardTask, scorer: Scorer, progress: ProgressFn | None = None) -> ShardStats:
    """Score every sample of one shard and write its score part; return its stats."""
    started = time.perf_counter()
    progress = progress or (lambda n: None)
    pool = pq.read_table(task.pool_part, columns=["uid", "key", "text", "status", "error_message"])
    rows = _ShardRows(pool, scorer.embed_dim, task.embeddings_prefix is not None)
    stats = ShardStats(shards=1, samples=pool.num_rows)
    tar_result = TarReadResult()
    batches = _prepare_batches(task, scorer, rows, tar_result, stats)
    reported = 0
    keep_embeddings = task.embeddings_prefix is not None
    prefetched = _prefetch(batches, PREFETCH_BATCHES)
    for done, encoded in encode_in_windows(scorer, prefetched, task.batch_size):
        rows.store(done, encoded, keep_embeddings)
        decided = rows.decided_count()
        progress(decided - reported)
        reported = decided
    rows.void_duplicates(tar_result.duplicate_keys)
    for row in rows.undecided():
        if tar_result.error:
            rows.mark(row, st.SHARD_TRUNCATED, tar_result.error)
        else:
            rows.mark(row, st.MISSING_IMAGE, "sample not found in the tar")
    progress(pool.num_rows - reported)
    if tar_result.error:
        stats.failed_shards[task.shard_name] = tar_result.error
        logger.error("shard %s: %s", task.shard_name, tar_result.error)
    stats.by_status.update(rows.status)
    stats.seconds = time.perf_counter() - started
    _write_outputs(task, rows, stats)
    return stats


def read_done_record(path: Path) -> ShardStats | None:
    """The completion record of a shard, or None when the shard has not finished."""
    if not path.is_file():
        return None
    return ShardStats.from_dict(json.loads(path.read_text()))
