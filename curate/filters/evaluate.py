"""Evaluate configured filters over the ``samples`` view of a DuckDB connection.

Filters said in SQL run inside one DuckDB query; Python-only ones (language) read their
columns from the same query as Arrow record batches, so memory stays bounded by the batch
size plus the result (uid and one boolean per filter). Inside a composite filter (basic) a
Python part runs only on the rows that its earlier parts kept.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curate.errors import UserError
from curate.filters.registry import FilterSpec, ResolvedFilter
from curate.filters.sqltext import ident, literal
from curate.tables.views import aligned_source

logger = logging.getLogger(__name__)

METADATA_KEY = b"curate.filters"
ROW_ID = "sample_id"


@dataclass(frozen=True)
class _Unit:
    """One atomic rule: a whole filter, or one part of a composite (``filter`` indexes it)."""

    filter: int
    rule: ResolvedFilter
    reason: str

    @property
    def sql(self) -> str | None:
        return self.rule.sql


def _units(resolved: Sequence[ResolvedFilter]) -> list[_Unit]:
    units = []
    for i, f in enumerate(resolved):
        if f.parts:
            units += [_Unit(i, part, f"{f.label}/{part.label}") for part in f.parts]
        else:
            units.append(_Unit(i, f, f.label))
    return units


def _arrow_table(con: Any, query: str) -> pa.Table:
    rel = con.sql(query)
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def _arrow_reader(con: Any, query: str, batch_size: int) -> pa.RecordBatchReader:
    rel = con.sql(query)
    reader = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
    return reader(batch_size)


def _iter_batches(reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
    """The reader's batches; one empty batch when it has none (keeps the result's schema)."""
    empty = True
    for batch in reader:
        empty = False
        yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=reader.schema)


def _where_sql(con: Any, where: str) -> str:
    """The user's condition as a boolean column expression (null counts as False)."""
    probe = f"SELECT ({where}) AS w FROM samples LIMIT 0"
    try:
        if len(con.extract_statements(probe)) != 1:
            raise UserError(f"--where {where!r}: one condition, not statements")
        kind = str(con.sql(probe).types[0])
    except duckdb.Error as exc:
        raise UserError(f"--where {where!r}: {str(exc).splitlines()[0]}") from exc
    if kind != "BOOLEAN":
        raise UserError(f"--where {where!r} is {kind}, not a condition (true/false)")
    return f"coalesce(({where}), false)"


def _check_columns(units: list[_Unit], columns: list[str]) -> None:
    for unit in units:
        missing = [c for c in unit.rule.columns if c not in columns]
        if missing:
            raise UserError(f"filter {unit.reason} needs column(s) {', '.join(missing)}, "
                            f"which samples lacks")


def _reason_sql(units: list[_Unit]) -> str:
    cases = " ".join(f"WHEN NOT {u.sql} THEN {literal(u.reason)}" for u in units)
    return f"CASE {cases} END" if units else "CAST(NULL AS VARCHAR)"


def _first_failure(units: list[_Unit], masks: list[np.ndarray], n: int) -> pa.Array:
    reason = np.full(n, None, dtype=object)
    for unit, mask in zip(reversed(units), reversed(masks), strict=True):
        reason[~mask] = unit.reason
    return pa.array(reason, type=pa.string())


def _evaluate_batch(
    batch: pa.RecordBatch, resolved: list[ResolvedFilter], units: list[_Unit], reasons: bool,
    keys: list[str], has_where: bool,
) -> pa.RecordBatch:
    n = batch.num_rows
    masks: list[np.ndarray] = []
    for k, unit in enumerate(units):
        if unit.sql is not None:
            masks.append(batch.column(f"_u{k}").to_numpy(zero_copy_only=False).astype(bool))
            continue
        gate = np.ones(n, dtype=bool)  # earlier parts of the same filter must have kept it
        for j in range(k - 1, -1, -1):
            if units[j].filter != unit.filter:
                break
            gate &= masks[j]
        mask = np.zeros(n, dtype=bool)
        alive = np.flatnonzero(gate)
        if alive.size:
            rows = batch if alive.size == n else batch.take(pa.array(alive))
            mask[alive] = unit.rule.mask(rows)
        masks.append(mask)
    columns = {key: batch.column(key) for key in keys}
    for i, f in enumerate(resolved):
        kept = np.ones(n, dtype=bool)
        for unit, mask in zip(units, masks, strict=True):
            if unit.filter == i:
                kept &= mask
        columns[f.label] = pa.array(kept)
    if has_where:
        columns["where"] = batch.column("where")
    if reasons:
        columns["reason"] = _first_failure(units, masks, n)
    return pa.RecordBatch.from_pydict(columns)


def evaluate_filters(
    con: Any,
    filters: Sequence[FilterSpec],
    *,
    where: str | None = None,
    batch_size: int = 100_000,
    reasons: bool = False,
    progress: bool = False,
    with_uid: bool = True,
) -> pa.Table:
    """One row per row of ``samples``, in the view's scan order (DuckDB keeps insertion order):
    ``sample_id`` (when the view has it), ``uid``, one boolean column per filter named by its
    label (True = kept), ``where`` (the SQL condition, null → False) when given, and with
    ``reasons`` a ``reason`` column: the first failing rule in filter order (``basic/image_size``
    for a composite's part), null when all keep. Repeated specs count once. The schema metadata
    ``curate.filters`` holds each filter's resolved record (e.g. a fraction's threshold).
    ``with_uid=False`` leaves the uid column out (12.8M uid strings are ~0.5 GB in Arrow)."""
    started = time.perf_counter()
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    resolved = [spec.resolve(con) for spec in dict.fromkeys(filters)]
    units = _units(resolved)
    _check_columns(units, columns)
    keys = [c for c in (ROW_ID, "uid") if c in columns and (with_uid or c != "uid")]
    select = [ident(c) for c in keys]
    where_sql = _where_sql(con, where) if where is not None else None
    python = [u for u in units if u.sql is None]
    needed = [*keys, *(c for u in units for c in u.rule.columns)]
    source = aligned_source(con, needed) if where is None else "samples"
    try:
        if not python:
            select += [f"{f.sql} AS {ident(f.label)}" for f in resolved]
            select += [f'{where_sql} AS "where"'] if where_sql else []
            select += [f"{_reason_sql(units)} AS reason"] if reasons else []
            table = _arrow_table(con, f"SELECT {', '.join(select)} FROM {source}")
        else:
            select += [f"{u.sql} AS _u{k}" for k, u in enumerate(units) if u.sql is not None]
            inputs = dict.fromkeys(c for u in python for c in u.rule.columns if c not in keys)
            select += [ident(c) for c in inputs]
            select += [f'{where_sql} AS "where"'] if where_sql else []
            query = f"SELECT {', '.join(select)} FROM {source}"
            total = con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0] if progress \
                else None
            from tqdm import tqdm  # loaded when filters run, not at startup

            reader = _arrow_reader(con, query, batch_size)
            out = []
            with tqdm(total=total, unit="sample", disable=not progress, desc="filters") as bar:
                for batch in _iter_batches(reader):
                    out.append(_evaluate_batch(batch, resolved, units, reasons, keys,
                                               where_sql is not None))
                    bar.update(batch.num_rows)
            table = pa.Table.from_batches(out)
    except duckdb.Error as exc:
        raise UserError(f"evaluating filters: {str(exc).splitlines()[0]}") from exc
    records = [f.describe() for f in resolved]
    logger.info("evaluated %d filter(s) over %d samples in %.1f s", len(resolved),
                table.num_rows, time.perf_counter() - started)
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(records, default=str)})

