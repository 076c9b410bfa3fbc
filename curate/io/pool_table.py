"""A run's pool table, whether its parts copy the pool's columns or reference them.

Most runs copy every column of the pool into ``RUN/pool/part-NNNNN.parquet``. A run of
DataComp metadata on disk references the metadata instead: its parts hold only what ingest
derives (``uid_high, uid_low, shard, text_chars, status, error_message``, and nulls for pool
columns no metadata file has), and ``run.json``'s ``pool_table`` says, for every column of the
pool table in order, whether it lives in the part or is a column of the metadata file the part
was ingested from (and how ingest checked it casts). Part NNNNN and metadata file NNNNN hold
the same rows in the same order, so the two are read side by side: :func:`read_pool_part`
with pyarrow, :func:`pool_relation_sql` in DuckDB (a ``POSITIONAL JOIN``).

A referenced file must lie inside the pool folder that ``run.json`` records and still have the
size and modification time that ingest saw; otherwise reading refuses with one line naming it
(ingest the pool again, or ingest with ``--copy-pool`` when the pool will move).

Metadata on object storage is referenced too: a file is read from this machine's copy of it
(:mod:`curate.io.pool_cache`), fetched once and checked against the ETag ingest recorded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.pool_cache import RemoteFile, SourceChanged, cache_folder, cached_copy, pools_root
from curate.io.sql import ident, literal
from curate.io.storage import is_url

REFERENCE = "reference"  # run.json "pool_table" layouts: the parts reference the metadata
COPY = "copy"  # ... or copy every column of the pool
FACE_BBOXES_TYPE = pa.list_(pa.list_(pa.float64()))
# How a referenced column becomes the pool table's column: the cast ingest checked.
ARROW_CASTS: dict[str, pa.DataType | None] = {
    "uid": pa.string(),  # lower-cased after the cast
    "string": pa.string(),
    "int32": pa.int32(),
    "face_bboxes": FACE_BBOXES_TYPE,
    "as_is": None,
}
SQL_CASTS = {"uid": "lower(CAST({} AS VARCHAR))", "string": "CAST({} AS VARCHAR)",
             "int32": "CAST({} AS INTEGER)", "face_bboxes": "CAST({} AS DOUBLE[][])",
             "as_is": "{}"}


@dataclass(frozen=True)
class Column:
    """One column of the pool table: kept in the part (``source`` None) or read from the
    metadata file's column ``source`` with ``cast``."""

    name: str
    source: str | None = None
    cast: str = "as_is"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "cast": self.cast}


@dataclass(frozen=True)
class SourceFile:
    """The metadata file behind one part, as ingest saw it (``path``: a local path or a URL)."""

    path: Path | str
    rows: int
    size: int | None
    mtime: float | None
    etag: str | None = None


@dataclass(frozen=True)
class PoolReference:
    """What ``run.json`` says about a referencing pool table."""

    root: Path  # the pool folder (for a pool on a URL: its local cache); files lie inside it
    columns: tuple[Column, ...]
    files: dict[str, SourceFile]  # part stem -> its metadata file
    url: str | None = None  # the pool on object storage
    storage_options: dict[str, Any] | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def referenced(self) -> list[Column]:
        return [c for c in self.columns if c.source is not None]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def source(self, part: str) -> Path:
        """Part ``part``'s metadata file, checked: inside the pool, unchanged since ingest."""
        file = self.files.get(part)
        if file is None:
            raise SourceChanged(f"{self.url or self.root}: run.json names no metadata file for "
                                f"pool part {part}; ingest the pool again")
        if self.url is not None:
            return self._fetched(file)
        resolved = Path(file.path).resolve()
        if self.root not in resolved.parents:
            raise SourceChanged(f"{file.path}: run.json names a pool file outside the pool "
                                f"{self.root}; refused")
        try:
            stat = resolved.stat()
        except OSError:
            raise SourceChanged(f"{file.path}: the metadata file this run reads url, text and "
                                "the other pool columns from is gone; put the pool back or "
                                "ingest it again") from None
        if (stat.st_size, stat.st_mtime) != (file.size, file.mtime):
            raise SourceChanged(
                f"{file.path} changed since ingest (size {file.size}, modified {file.mtime}; "
                f"now size {stat.st_size}, modified {stat.st_mtime}): the run reads its pool "
                "columns from it by row position, so ingest the pool again")
        return resolved

    def _fetched(self, file: SourceFile) -> Path:
        """The local copy of a metadata file on a URL, fetched when missing (see
        :mod:`curate.io.pool_cache`)."""
        assert self.url is not None
        remote = RemoteFile(self.url, str(file.path), file.size, file.etag,
                            "url, text and the other pool columns")
        return cached_copy(remote, self.storage_options, self.root)


def reference_record(columns: Sequence[Column]) -> dict[str, Any]:
    """``run.json``'s ``pool_table`` entry of a referencing run."""
    return {"layout": REFERENCE, "columns": [c.to_dict() for c in columns]}


def pool_reference(run: Path | str) -> PoolReference | None:
    """The run's reference to its pool, None when its pool parts copy the pool (or RUN is not
    a run yet). Cached per run.json version."""
    run_file = Path(run) / "run.json"
    try:
        stat = run_file.stat()
    except OSError:
        return None
    return _load_reference(str(run_file.resolve()), stat.st_mtime_ns, stat.st_size,
                           str(pools_root()))


@functools.lru_cache(maxsize=16)
def _load_reference(run_file: str, mtime_ns: int, size: int, pools: str
                    ) -> PoolReference | None:
    record = json.loads(Path(run_file).read_text())
    table = record.get("pool_table") or {}
    if table.get("layout") != REFERENCE:
        return None
    try:
        columns = tuple(Column(c["name"], c.get("source"), c.get("cast", "as_is"))
                        for c in table["columns"])
        pool = record["source"]["path"]
        url = pool.rstrip("/") if is_url(pool) else None
        root = cache_folder(url, Path(pools)) if url else Path(pool).resolve()
        files = {}
        for shard in record["shards"]:
            seen = (shard.get("fingerprint") or {}).get("parquet") or {}
            files[f"part-{int(shard['index']):05d}"] = SourceFile(
                shard["parquet"] if url else Path(shard["parquet"]), int(shard["samples"]),
                seen.get("size"), seen.get("mtime"), seen.get("etag"))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run_file}: a pool_table reference without {exc}; ingest the pool "
                        "again") from None
    unknown = [c.cast for c in columns if c.cast not in ARROW_CASTS]
    if unknown:
        raise UserError(f"{run_file}: unknown pool column cast {unknown[0]!r}")
    return PoolReference(root, columns, files, url, record["source"].get("storage_options"))


def _cast(values: pa.ChunkedArray, cast: str) -> pa.ChunkedArray:
    target = ARROW_CASTS[cast]
    if target is not None:
        values = values.cast(target)
    return pc.utf8_lower(values) if cast == "uid" else values


def read_pool_part(part: Path | str, columns: Sequence[str] | None = None) -> pa.Table:
    """Pool part ``part`` as a table with ``columns`` (every column when None), in that order;
    a referencing run's part reads the columns it does not hold from its metadata file."""
    part = Path(part)
    reference = pool_reference(part.parent.parent)
    if reference is None:
        return pq.read_table(part, columns=list(columns) if columns is not None else None)
    wanted = list(columns) if columns is not None else reference.names
    chosen = [reference.column(name) for name in wanted]
    kept = [c.name for c in chosen if c.source is None]
    own = pq.read_table(part, columns=kept)
    read = [c for c in chosen if c.source is not None]
    values: dict[str, Any] = {name: own.column(name) for name in kept}
    if read:
        source = reference.source(part.stem)
        with pq.ParquetFile(source) as metadata:
            present = set(metadata.schema_arrow.names)
            names = sorted({c.source for c in read if c.source in present})
            table = metadata.read(columns=names)
        if table.num_rows != own.num_rows:
            raise SourceChanged(f"{source} has {table.num_rows} rows, pool part {part} has "
                                f"{own.num_rows}; ingest the pool again")
        for column in read:
            if column.source in present:
                values[column.name] = _cast(table.column(column.source), column.cast)
            else:
                values[column.name] = pa.nulls(own.num_rows, ARROW_CASTS[column.cast]
                                               or pa.string())
    return pa.table({name: values[name] for name in wanted})


def pool_relation_sql(reference: PoolReference, parts: Sequence[Path],
                      file_list_sql: Any) -> str:
    """A SELECT of the pool table's columns, in order, plus ``filename`` and
    ``file_row_number`` of the run's part, over ``parts``: each part side by side with its
    metadata file (POSITIONAL JOIN; union_by_name, so a file lacking a column gives nulls).
    ``file_list_sql`` renders a list of paths as DuckDB's file-list literal."""
    sources = [reference.source(Path(part).stem) for part in parts]
    referenced = sorted({c.source for c in reference.referenced if c.source is not None})
    alias = {name: f"_s{i}" for i, name in enumerate(referenced)}
    items = []
    for column in reference.columns:
        if column.source is None:
            items.append(f"r.{ident(column.name)}")
        else:
            expression = SQL_CASTS[column.cast].format(f"s.{alias[column.source]}")
            items.append(f"{expression} AS {ident(column.name)}")
    source_columns = ", ".join(f"{ident(name)} AS {alias[name]}"
                               for name in referenced)
    return (f"SELECT {', '.join(items)}, r.filename, r.file_row_number "
            f"FROM read_parquet({file_list_sql(list(parts))}, filename = true, "
            "file_row_number = true, union_by_name = true) AS r POSITIONAL JOIN "
            f"(SELECT {source_columns} FROM read_parquet({file_list_sql(sources)}, "
            "union_by_name = true)) AS s")


def derived_relation_sql(reference: PoolReference, parts: Sequence[Path],
                         file_list_sql: Any) -> str:
    """:func:`pool_relation_sql` without the metadata: the columns the parts hold, ``uid``
    rebuilt from its halves (the same string: ingest lower-cased it and checked it is 32 hex
    characters), ``filename`` and ``file_row_number``. No metadata file is opened, so a command
    that needs none of its columns never fetches or reads them."""
    items = []
    for column in reference.columns:
        if column.source is None:
            items.append(ident(column.name))
        elif column.name == "uid":
            items.append("format('{:016x}{:016x}', uid_high, uid_low) AS uid")
    return (f"SELECT {', '.join(items)}, filename, file_row_number "
            f"FROM read_parquet({file_list_sql(list(parts))}, filename = true, "
            "file_row_number = true, union_by_name = true)")


def metadata_rows_sql(reference: PoolReference, parts: Sequence[Path], columns: Sequence[str],
                      row_condition: str, file_list_sql: Any) -> str:
    """A SELECT of ``sample_id`` and the referenced ``columns`` (cast as in the pool table) of
    the rows matching ``row_condition`` over ``_row``, read from the metadata files of ``parts``
    alone: file and part share row numbers, so the condition is tested inside the scan."""
    sources = [reference.source(Path(part).stem) for part in parts]
    numbers = ", ".join(f"({literal(str(source))}, {int(Path(part).stem.split('-')[1])})"
                        for source, part in zip(sources, parts, strict=True))
    items = []
    for name in columns:
        column = reference.column(name)
        source = ident(column.source or name)
        items.append(f"{SQL_CASTS[column.cast].format('m.' + source)} AS {ident(name)}")
    return (f"SELECT (CAST(n.part AS BIGINT) << 32) + m._row AS sample_id, {', '.join(items)} "
            f"FROM (SELECT *, file_row_number AS _row FROM read_parquet("
            f"{file_list_sql(sources)}, filename = true, file_row_number = true, "
            f"union_by_name = true) WHERE {row_condition}) AS m "
            f"JOIN (VALUES {numbers}) AS n(filename, part) ON m.filename = n.filename")
