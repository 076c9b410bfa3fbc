"""Reading ``samples`` in chunks of pool parts, side by side, results in order.

A DuckDB query over ``samples`` that joins scorers by position runs on one thread; the same
query over disjoint ranges of pool parts (``curate.tables.views.samples_sql`` with ``parts``) runs
on as many threads as there are ranges in flight.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from curate.tables.views import SamplesLayout

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 2  # chunks read side by side (each is one DuckDB thread)


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = WORKERS, ahead: int | None = None
) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in order, at most ``ahead`` (default
    workers + 1) pending: bounds the memory of results not yet consumed."""
    limit = ahead if ahead is not None else workers + 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def part_chunks(layout: SamplesLayout, chunks: int, max_rows: int | None = None) -> list[slice]:
    """Consecutive pool parts in about ``chunks`` groups (fewer when there are fewer parts), or
    more on a large pool, so that a group holds about ``max_rows`` rows at most (with results
    read a few chunks ahead, memory then does not grow with the pool)."""
    if max_rows is not None:
        chunks = max(chunks, -(-sum(layout.pool_rows) // max_rows))
    count = len(layout.pool_files)
    size = max(1, math.ceil(count / max(1, chunks)))
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]
