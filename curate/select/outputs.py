"""A selection's tables: ``manifest.parquet``, ``dropped.parquet`` and the kept uids (or,
for ``select --uids-only``, the kept uids alone).

Input: the run's DuckDB connection and the selection's decisions, an Arrow table of
``sample_id`` and ``_group`` per sample of ``samples`` (0: kept; g > 0: dropped, failing the
filters ``failing[g - 1]``, in filter order). Output rows follow ``sample_id`` order.

When ``samples`` joins every scorer by position and the decisions are in ``sample_id`` order
(the usual case), the pool parts are read in chunks, two chunks at a time (per chunk, one
DuckDB query for the kept rows' manifest columns and one for the dropped rows' uids), and
pyarrow writes both files in order. The kept uids come from the pool's ``uid_high, uid_low``
(DataComp's pairs, derived at ingest; ``--uids-only`` reads those two columns alone), or, for
pools ingested before they existed, from the uid strings. A positional pass in DuckDB runs on
one thread, so chunks are what lets the manifest, the largest output, use more than one core.
Otherwise (a partly scored run, rows out of order) each output is one DuckDB pass over
``samples`` joined with the decisions, the three passes side by side.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.schema import UID_HIGH, UID_LOW
from curate.io.uids import UID_DTYPE, pairs_to_uid_strings, sort_uid_array, uids_to_array
from curate.io.workspace import SUBSET_DROPPED, SUBSET_MANIFEST, RunPaths
from curate.tables.chunks import ordered_map, part_chunks
from curate.tables.views import SamplesLayout, file_list_sql, pool_has_columns, samples_sql

logger = logging.getLogger(__name__)

# The manifest: what identifies and describes a kept sample, plus every score (below).
# Sizes and sha256 stay in the pool table (export reads them from there): on a DataComp-small
# pool they were a third of what select read and wrote.
MANIFEST_COLUMNS = ("uid", "shard", "key", "url", "text")
MANIFEST = SUBSET_MANIFEST
DROPPED = SUBSET_DROPPED
CHUNKS = 32  # pool parts are read in about this many chunks, or more:
CHUNK_ROWS = 1_000_000  # ... so that a chunk holds about this many rows at most (bounded memory)
# Hex digests and ids: snappy saves ~10% on them at twice the write time (measured on 3.84M
# DataComp-style rows), so they are written uncompressed; every other column uses snappy.
UNCOMPRESSED = frozenset({"uid", "key"})
# One value per sample: a row group's min/max of these prunes nothing, and computing them
# took ~10% of a manifest's write time
UNIQUE_STRINGS = frozenset({"uid", "key", "url", "text"})
PART_NUMBER = re.compile(r"part-(\d+)\.parquet$")
GUARD = (
    "CASE WHEN s.sample_id IS DISTINCT FROM d.sample_id THEN "
    "error('samples is not in sample_id order') ELSE {keep} END"
)


T = TypeVar("T")


class OutOfOrder(Exception):
    """``samples`` and the decisions disagree on a row's sample_id: positional passes fail."""


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _text(label: str) -> str:
    return "'" + label.replace("'", "''") + "'"


def _list_sql(failing: list[list[str]]) -> tuple[str, str]:
    """SQL lists indexed by a dropped row's group: its first failing filter, and all of them."""
    first = ", ".join(_text(labels[0]) for labels in failing)
    every = ", ".join("[" + ", ".join(_text(x) for x in labels) + "]" for labels in failing)
    return f"([{first}]::VARCHAR[])", f"([{every}]::VARCHAR[][])"


def _manifest_columns(scorers: list[str], uid: str = "s.uid") -> str:
    return ", ".join([uid, *(f"s.{c}" for c in MANIFEST_COLUMNS[1:])]) + "".join(
        f', s."{s}_score"' for s in scorers
    )


def _uid_sql(halves: bool) -> str:
    """What uids are read as: the pool's ``uid_high, uid_low`` when it has them (16 bytes a
    row; strings are made from them where an output needs them), else the uid strings."""
    return f"s.{UID_HIGH}, s.{UID_LOW}" if halves else "s.uid"


def _pairs(table: pa.Table) -> np.ndarray:
    """DataComp pairs from a result with ``uid_high, uid_low`` or with ``uid``, in row order."""
    if UID_HIGH not in table.column_names:
        return uids_to_array(table.column("uid"))
    high, low = table.column(UID_HIGH), table.column(UID_LOW)
    if high.null_count or low.null_count:
        raise UserError(f"the pool's {UID_HIGH}/{UID_LOW} columns hold nulls; re-ingest the pool")
    pairs = np.empty(table.num_rows, dtype=UID_DTYPE)
    pairs["f0"], pairs["f1"] = high.to_numpy(), low.to_numpy()
    return pairs


def _queries(failing: list[list[str]], scorers: list[str],
             halves: bool) -> dict[str, tuple[str, str]]:
    """Per output, a SELECT template over ``{source}`` with ``{keep}`` and its row condition."""
    first_sql, every_sql = _list_sql(failing)
    return {
        MANIFEST: (
            f"SELECT {_manifest_columns(scorers)} FROM {{source}} WHERE {{keep}}",
            "d._group = 0",
        ),
        DROPPED: (
            f"SELECT s.uid, {first_sql}[d._group] AS first_failed_filter, "
            f"{every_sql}[d._group] AS failed_filters FROM {{source}} WHERE {{keep}}",
            "d._group > 0",
        ),
        "uids": (f"SELECT {_uid_sql(halves)} FROM {{source}} WHERE {{keep}}", "d._group = 0"),
    }


def _pass(
    con: Any,
    decisions: pa.Table,
    name: str,
    template: str,
    keep: str,
    positional: bool,
    sink: Callable[[Any, str], T],
) -> T:
    """One output as one DuckDB query: positional when asked (OutOfOrder if refused), else a
    join on sample_id, sorted."""
    cursor = con.cursor()  # one per pass: passes run side by side
    cursor.register("decisions", decisions)
    started = time.perf_counter()
    if positional:
        query = template.format(
            source="samples s POSITIONAL JOIN decisions d", keep=GUARD.format(keep=keep)
        )
    else:
        query = (
            template.format(source="samples s JOIN decisions d USING (sample_id)", keep=keep)
            + " ORDER BY s.sample_id"
        )
    try:
        result = sink(cursor, query)
    except duckdb.InvalidInputException as exc:
        if positional:
            raise OutOfOrder(str(exc)) from exc
        raise
    logger.debug("%s: one pass in %.2f s", name, time.perf_counter() - started)
    return result


def _copy_to(target: Path) -> Callable[[Any, str], None]:
    def sink(cursor: Any, query: str) -> None:
        cursor.execute(f"COPY ({query}) TO {_sql_path(target)} (FORMAT parquet)")

    return sink


def _uid_pairs(cursor: Any, query: str) -> np.ndarray:
    return sort_uid_array(_pairs(cursor.sql(query).to_arrow_table()))


def _whole_passes(
    con: Any,
    staging: Path,
    decisions: pa.Table,
    failing: list[list[str]],
    scorers: list[str],
    positional: bool,
    tables: bool,
    halves: bool,
) -> np.ndarray:
    """Each output in one DuckDB pass over ``samples``, side by side (the kept uids alone
    without ``tables``)."""
    queries = _queries(failing, scorers, halves)
    if not tables:
        queries = {"uids": queries["uids"]}
    sinks = {
        MANIFEST: _copy_to(staging / MANIFEST),
        DROPPED: _copy_to(staging / DROPPED),
        "uids": _uid_pairs,
    }
    with ThreadPoolExecutor(max_workers=len(queries)) as pool:
        futures = {
            name: pool.submit(_pass, con, decisions, name, *queries[name], positional, sinks[name])
            for name in queries
        }
        results = {name: future.result() for name, future in futures.items()}
    return results["uids"]


def _part_numbers(layout: SamplesLayout) -> list[int] | None:
    """Each pool part's number (the high half of its sample_ids), None if a name has none."""
    found = [PART_NUMBER.search(p.name) for p in layout.pool_files]
    return [int(m.group(1)) for m in found] if all(found) else None  # type: ignore[union-attr]


def _decision_rows(numbers: list[int], ids: np.ndarray, chunk: slice) -> slice:
    """The rows of the decisions (sorted by sample_id) that belong to a chunk's parts."""
    parts = numbers[chunk]
    low = int(np.searchsorted(ids, np.int64(parts[0]) << 32))
    high = int(np.searchsorted(ids, (np.int64(parts[-1]) + 1) << 32))
    return slice(low, high)


def _chunk_cursor(con: Any, decisions: pa.Table, numbers: list[int], ids: np.ndarray,
                  chunk: slice) -> Any:
    """A cursor with the chunk's rows of the decisions registered as ``decisions``."""
    rows = _decision_rows(numbers, ids, chunk)
    cursor = con.cursor()
    cursor.register("decisions", decisions.slice(rows.start, rows.stop - rows.start))
    return cursor


def _covers_pool(layout: SamplesLayout, numbers: list[int], ids: np.ndarray) -> bool:
    """True when the decisions' sample_ids (strictly increasing) are exactly the pool's rows in
    part order: the count and each part's first and last id agree with the Parquet footers."""
    counts = np.asarray(layout.pool_rows, dtype=np.int64)
    if len(counts) != len(numbers) or len(ids) != int(counts.sum()):
        return False
    ends = np.cumsum(counts)
    starts, base, full = ends - counts, np.asarray(numbers, dtype=np.int64) << 32, counts > 0
    return bool((ids[starts[full]] == base[full]).all()
                and (ids[ends[full] - 1] == base[full] + counts[full] - 1).all())


def _chunked_uids(con: Any, paths: RunPaths, layout: SamplesLayout, decisions: pa.Table,
                  halves: bool) -> np.ndarray:
    """The kept uids alone as DataComp pairs, from chunks of pool parts read side by side.

    With the pool's ``uid_high, uid_low`` and decisions covering every pool row in order, a
    chunk is those two columns of its parts, masked in NumPy (no join); otherwise the uid
    strings of the kept rows, from a positional join of ``samples`` with the decisions."""
    ids = decisions.column("sample_id").to_numpy()
    numbers = _part_numbers(layout) or []
    groups = decisions.column("_group").to_numpy()
    direct = halves and _covers_pool(layout, numbers, ids)
    query = (f"SELECT {_uid_sql(halves)} FROM ({{samples}}) s POSITIONAL JOIN decisions d "
             f"WHERE {GUARD.format(keep='d._group = 0')}")

    def read(chunk: slice) -> np.ndarray:
        if direct:
            rows = _decision_rows(numbers, ids, chunk)
            pairs = _pairs(con.cursor().sql(
                f"SELECT {UID_HIGH}, {UID_LOW} "
                f"FROM read_parquet({file_list_sql(layout.pool_files[chunk])})").to_arrow_table())
            return sort_uid_array(pairs[groups[rows] == 0])
        cursor = _chunk_cursor(con, decisions, numbers, ids, chunk)
        try:
            return sort_uid_array(_pairs(
                cursor.sql(query.format(samples=samples_sql(paths, layout, chunk)))
                .to_arrow_table()))
        except duckdb.InvalidInputException as exc:
            raise OutOfOrder(str(exc)) from exc

    kept = _KeptPairs(_kept_count(decisions))
    for pairs in ordered_map(read, part_chunks(layout, CHUNKS, CHUNK_ROWS)):
        kept.add(pairs)
    return kept.result()


class _KeptPairs:
    """uid pair arrays gathered into one array of ``total`` pairs, allocated once (a list and
    its concatenation would hold every kept uid twice)."""

    def __init__(self, total: int) -> None:
        self.pairs = np.empty(total, dtype=UID_DTYPE)
        self.filled = 0

    def add(self, pairs: np.ndarray) -> None:
        if self.filled + len(pairs) > len(self.pairs):
            raise RuntimeError(f"more kept uids than the {len(self.pairs)} decided")
        self.pairs[self.filled:self.filled + len(pairs)] = pairs
        self.filled += len(pairs)

    def result(self) -> np.ndarray:
        if self.filled != len(self.pairs):
            raise RuntimeError(f"{self.filled} kept uids written, {len(self.pairs)} decided")
        return self.pairs


def _kept_count(decisions: pa.Table) -> int:
    return int(np.count_nonzero(decisions.column("_group").to_numpy() == 0))


def _column_options(schema: pa.Schema) -> dict[str, Any]:
    """ParquetWriter options per leaf column (nested ones by dotted path): no compression
    under an UNCOMPRESSED field, snappy for the rest; min/max statistics except for the
    UNIQUE_STRINGS, whose ranges span everything and cost time to compute."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    leaves = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    paths = [leaves.column(i).path for i in range(len(leaves))]
    return {
        "compression": {p: "none" if p.split(".")[0] in UNCOMPRESSED else "snappy"
                        for p in paths},
        "write_statistics": [p for p in paths if p.split(".")[0] not in UNIQUE_STRINGS],
    }


def _dropped_table(
    uids: pa.Array | pa.ChunkedArray, groups: np.ndarray, failing: list[list[str]]
) -> pa.Table:
    """dropped.parquet's rows: uid, first failing filter, every failing filter (by group)."""
    index = pa.array(groups.astype(np.int32) - 1)
    first = pa.array([labels[0] for labels in failing], pa.string()).take(index)
    every = pa.array(failing, pa.list_(pa.string())).take(index)
    return pa.table({"uid": uids, "first_failed_filter": first, "failed_filters": every})


def _chunked_outputs(
    con: Any,
    paths: RunPaths,
    layout: SamplesLayout,
    staging: Path,
    decisions: pa.Table,
    failing: list[list[str]],
    scorers: list[str],
    halves: bool,
) -> np.ndarray:
    """``manifest.parquet`` and ``dropped.parquet`` from chunks of pool parts read side by
    side (per chunk, a DuckDB query for its kept rows and one for its dropped uids), written
    in order by pyarrow; returns the kept uids as DataComp pairs, each chunk's sorted (the final
    sort merges them)."""
    ids = decisions.column("sample_id").to_numpy()
    numbers = _part_numbers(layout) or []
    source = "({samples}) s POSITIONAL JOIN decisions d"
    uid_sql = _uid_sql(halves)  # with the pool's halves, uid strings are written from them
    manifest_sql = (
        f"SELECT {_manifest_columns(scorers, uid_sql)} FROM {source} "
        f"WHERE {GUARD.format(keep='d._group = 0')}"
    )
    dropped_sql = (f"SELECT {uid_sql}, d._group FROM {source} "
                   f"WHERE {GUARD.format(keep='d._group > 0')}")

    def read(chunk: slice) -> tuple[pa.Table, pa.Table, np.ndarray]:
        """A chunk's manifest rows, dropped rows and kept uids as sorted DataComp pairs."""
        cursor = _chunk_cursor(con, decisions, numbers, ids, chunk)
        samples = samples_sql(paths, layout, chunk)
        try:
            manifest = cursor.sql(manifest_sql.format(samples=samples)).to_arrow_table()
            dropped = cursor.sql(dropped_sql.format(samples=samples)).to_arrow_table()
        except duckdb.InvalidInputException as exc:
            raise OutOfOrder(str(exc)) from exc
        kept = _pairs(manifest)
        if halves:  # uid strings from the pairs, in the uid's place
            manifest = manifest.drop_columns([UID_HIGH, UID_LOW]).add_column(
                0, "uid", pairs_to_uid_strings(kept))
        dropped_uids = (pairs_to_uid_strings(_pairs(dropped)) if halves
                        else dropped.column("uid"))
        dropped = _dropped_table(dropped_uids, dropped.column("_group").to_numpy(), failing)
        return manifest, dropped, sort_uid_array(kept)

    started = time.perf_counter()
    kept = _KeptPairs(_kept_count(decisions))
    writers: dict[str, pq.ParquetWriter] = {}
    dictionary = {MANIFEST: ["shard"], DROPPED: ["first_failed_filter", "failed_filters"]}

    def write(name: str, table: pa.Table) -> None:
        if name not in writers:
            writers[name] = pq.ParquetWriter(
                staging / name, table.schema, use_dictionary=dictionary[name],
                **_column_options(table.schema),
            )
        writers[name].write_table(table.cast(writers[name].schema))

    # one thread per output file, one chunk in flight each: the two files are written side by
    # side while the next chunks are read (the writer was the bottleneck on one thread)
    chunks = part_chunks(layout, CHUNKS, CHUNK_ROWS)
    with ThreadPoolExecutor(1) as manifest_thread, ThreadPoolExecutor(1) as dropped_thread:
        writing: list[Future[None]] = []
        try:
            for manifest, dropped, kept_pairs in ordered_map(read, chunks):
                for future in writing:
                    future.result()
                writing = [manifest_thread.submit(write, MANIFEST, manifest),
                           dropped_thread.submit(write, DROPPED, dropped)]
                kept.add(kept_pairs)
                del manifest, dropped
            for future in writing:
                future.result()
        finally:
            for future in writing:
                future.exception()  # both writers idle before their files close
            for writer in writers.values():
                writer.close()
    logger.debug("%s, %s: %d chunks in %.2f s", MANIFEST, DROPPED, len(chunks),
                 time.perf_counter() - started)
    return kept.result()


def write_outputs(
    con: Any,
    paths: RunPaths,
    layout: SamplesLayout,
    staging: Path,
    decisions: pa.Table,
    failing: list[list[str]],
    scorers: list[str],
    in_order: bool,
    tables: bool = True,
) -> np.ndarray:
    """Write ``manifest.parquet`` and ``dropped.parquet`` into ``staging`` (unless not
    ``tables``); return the kept uids as DataComp pairs, in sorted runs (each chunk's
    sorted: a stable sort merges them)."""
    halves = pool_has_columns(con, paths, [UID_HIGH, UID_LOW])
    if in_order and layout.positional and layout.pool_files and _part_numbers(layout):
        try:
            if not tables:
                return _chunked_uids(con, paths, layout, decisions, halves)
            return _chunked_outputs(con, paths, layout, staging, decisions, failing, scorers,
                                    halves)
        except OutOfOrder as exc:
            logger.debug("positional passes refused (%s); joining on sample_id", exc)
    elif in_order:
        try:
            return _whole_passes(con, staging, decisions, failing, scorers, True, tables, halves)
        except OutOfOrder as exc:
            logger.debug("positional passes refused (%s); joining on sample_id", exc)
    return _whole_passes(con, staging, decisions, failing, scorers, False, tables, halves)
