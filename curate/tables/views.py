"""SQL over a run's tables: one DuckDB connection with views over the Parquet files.

Views: ``pool`` (the pool table), one per scorer named after it (``dfn``: uid, dfn_score,
status, error) and ``samples``: every pool row with ``sample_id`` (part number << 32 | row in
the part, a stable row identity) and, per scorer S, ``S_score``, ``S_status`` and
``S_error``. Score parts are row-aligned with pool parts, so ``samples`` joins them by
(part, row) rather than by uid: pools with repeated uids stay one row per sample.

A scorer that has a part for every pool part, each with the pool part's row count (checked
on the Parquet footers when connecting), is joined with DuckDB's ``POSITIONAL JOIN`` over
the same sorted file lists: no hash join, and ``samples`` keeps the pool's order. A
partly scored run (or any mismatch) falls back to a hash ``LEFT JOIN`` on (part, row).

Such a scorer also gets a view in the schema ``aligned`` (``aligned.dfn``: sample_id, dfn_score,
dfn_status, dfn_error): the same rows in the same order as ``samples``, read from the scorer's
parts alone. Filters over one scorer's columns (a fraction or threshold cut) read it instead of
``samples``, so the pool is not scanned.

The connection is a sandbox (DuckDB's own switches, set before any user SQL runs): files can be
read only inside the run and the pool it was ingested from (``allowed_directories`` with
``enable_external_access`` off), extensions are neither installed nor loaded, and the
configuration is locked, so no query or ``--where`` can change it back. Views read explicit
file lists, never a glob built from a path, so a run path holding ``[``, ``*`` or ``?`` reads
its own files and nothing else. Scorer folder names reach SQL only after validation and quoting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from curate.errors import UserError
from curate.io.pool_table import (
    PoolReference,
    derived_relation_sql,
    metadata_rows_sql,
    pool_reference,
    pool_relation_sql,
)
from curate.io.schema import score_column, table_field_columns
from curate.io.workspace import SCORER_NAME, TABLE_FILE, RunPaths, check_name

ALIGNED = "aligned"  # schema of the scorer views row-aligned with samples
READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(UserError):
    """SQL that is refused or that DuckDB cannot run; the message is DuckDB's or ours."""


def table_names(run: Path) -> list[str]:
    """Tables under ``RUN/scores/`` with at least one part: scorers and derived tables (dedup
    groups, clusters). A folder whose name is not a valid table name is refused, naming it."""
    scores = RunPaths(run).root / "scores"
    if not scores.is_dir():
        return []
    names = sorted(d.name for d in scores.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and _part_files(d))
    for name in names:
        try:
            check_name(name, "scorer", SCORER_NAME)
        except UserError as exc:
            raise UserError(f"{scores / name}: {exc}") from None
    return names


def score_names(run: Path) -> list[str]:
    """Scorers of a run (tables with a ``<name>_score`` column): every table but the derived
    ones (``_table.json``: dedup groups, clusters)."""
    return [name for name in table_names(run) if name not in derived_names(run)]


def derived_names(run: Path) -> list[str]:
    """Derived tables of a run (written by ``curate.tables.derived``)."""
    paths = RunPaths(run)
    return [name for name in table_names(run)
            if (paths.scores_dir(name) / TABLE_FILE).is_file()]


def _part_files(directory: Path) -> list[Path]:
    """``directory``'s part files, sorted (the directory is literal, never a glob pattern)."""
    return sorted(directory.glob("part-*.parquet"))


_GLOB_ESCAPES = str.maketrans({"[": "[[]", "*": "[*]", "?": "[?]"})


def duckdb_file(path: Path | str) -> str:
    """``path`` as DuckDB's file readers take it: they expand globs in every file name, so
    ``[``, ``*`` and ``?`` are escaped as one-character classes (``run[1]`` reads itself, never
    ``run1``)."""
    return str(path).translate(_GLOB_ESCAPES)


def path_literal(path: Path | str) -> str:
    """``path`` as a quoted SQL string literal naming exactly that file."""
    return "'" + duckdb_file(path).replace("'", "''") + "'"


def file_list_sql(files: list[Path] | tuple[Path, ...]) -> str:
    return f"[{', '.join(path_literal(f) for f in files)}]"


def _aligned(directory: Path, files: list[Path] | None = None, relation: str | None = None
             ) -> str:
    """A file's rows with their part number and row number, for the (part, row) join;
    ``files`` reads exactly those files (in that order), else the directory's part files;
    ``relation`` (a SELECT with ``filename`` and ``file_row_number``) replaces the read."""
    if relation is None:
        source = file_list_sql(files if files is not None else _part_files(directory))
        relation = (f"SELECT * FROM read_parquet({source}, filename = true, "
                    "file_row_number = true, union_by_name = true)")
    return (
        f"SELECT *, CAST(regexp_extract(filename, 'part-(\\d+)\\.parquet$', 1) AS INTEGER) "
        f"AS _part, file_row_number AS _row FROM ({relation})"
    )


def _pool_aligned(paths: RunPaths, files: list[Path] | None = None, lean: bool = False) -> str:
    """``_aligned`` over the pool parts (``files``, else all): a referencing run's parts side
    by side with their metadata files, so the rows carry every pool column (``lean``: the
    parts alone, see :func:`derived_relation_sql`)."""
    reference = pool_reference(paths.root)
    if reference is None:
        return _aligned(paths.pool_dir, files)
    parts = files if files is not None else paths.pool_parts()
    return _aligned(paths.pool_dir, relation=_pool_relation(reference, parts, lean))


def _pool_relation(reference: PoolReference, parts: Sequence[Path], lean: bool) -> str:
    """A referencing run's pool relation: its parts beside their metadata files, or with
    ``lean`` its parts alone."""
    relation_sql = derived_relation_sql if lean else pool_relation_sql
    return relation_sql(reference, parts, file_list_sql)


def _row_counts(con: duckdb.DuckDBPyConnection, files: list[Path]) -> dict[str, int]:
    """Part name to row count, from the Parquet footers."""
    if not files:
        return {}
    rows = con.execute("SELECT file_name, num_rows FROM parquet_file_metadata(?)",
                       [[duckdb_file(f) for f in files]]).fetchall()
    return {Path(name).name: int(count) for name, count in rows}


def _positional(pool_rows: dict[str, int], scorer_rows: dict[str, int]) -> bool:
    """True when the scorer's parts are exactly the pool's parts, row counts included."""
    return bool(pool_rows) and scorer_rows == pool_rows


@dataclass(frozen=True)
class SamplesLayout:
    """How ``samples`` is built: the pool's parts and, when every scorer has a part for every
    pool part with its row count, each scorer's parts (row-aligned: a positional join)."""

    scorers: tuple[str, ...]
    pool_files: tuple[Path, ...]
    score_files: dict[str, tuple[Path, ...]]  # scorer -> files, positional scorers only
    pool_rows: tuple[int, ...] = ()  # per pool file, its row count (Parquet footer)
    fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # scorer -> its columns
    without_uid: frozenset[str] = frozenset()  # tables whose parts hold no uid (row-aligned)
    lean: bool = False  # a referencing run's pool without its metadata columns

    def columns(self, name: str) -> tuple[str, ...]:
        """Table ``name``'s ``<name>_<field>`` columns (``<name>_score`` for a scorer)."""
        return self.fields.get(name, (score_column(name),))

    @property
    def positional(self) -> bool:
        """True when every scorer joins by position (``samples`` has no hash join)."""
        return len(self.score_files) == len(self.scorers)


def samples_layout(con: duckdb.DuckDBPyConnection, paths: RunPaths) -> SamplesLayout:
    """The pool parts and which scorers' parts line up with them (Parquet footers)."""
    pool_files = paths.pool_parts()
    pool_rows = _row_counts(con, pool_files)
    scorers = table_names(paths.root)
    aligned, fields, without_uid = {}, {}, set()
    for name in scorers:
        score_files = sorted(paths.scores_dir(name).glob("part-*.parquet"))
        columns = _part_columns(con, score_files)
        fields[name] = tuple(table_field_columns(name, columns))
        if _positional(pool_rows, _row_counts(con, score_files)):
            aligned[name] = tuple(score_files)
        if "uid" not in columns:
            without_uid.add(name)
    return SamplesLayout(tuple(scorers), tuple(pool_files), aligned,
                         tuple(pool_rows.get(f.name, 0) for f in pool_files), fields,
                         frozenset(without_uid))


def _part_columns(con: duckdb.DuckDBPyConnection, files: list[Path]) -> list[str]:
    """The column names over all of a table's parts (Parquet footers), in the order they first
    appear."""
    rows = con.execute("SELECT name FROM parquet_schema(?)",
                       [[duckdb_file(f) for f in files]]).fetchall()
    return list(dict.fromkeys(row[0] for row in rows))


def _sample_id_sql(table: str = "") -> str:
    """A row's sample_id from ``_aligned``'s columns: part number << 32 | row in its part."""
    prefix = f"{table}." if table else ""
    return f"(CAST({prefix}_part AS BIGINT) << 32) + {prefix}_row AS sample_id"


def samples_sql(paths: RunPaths, layout: SamplesLayout, parts: slice | None = None,
                scorers: Collection[str] | None = None) -> str:
    """The SELECT behind ``samples``; ``parts`` (positional layouts only) limits it to those
    pool parts, row-aligned, so that parts can be read side by side; ``scorers`` joins only
    those scorers' columns (the rows are the same: every join keeps each pool row once)."""
    if parts is not None and not layout.positional:
        raise ValueError("samples over a range of parts needs a positional layout")
    chosen = slice(None) if parts is None else parts
    columns = [
        "p.* EXCLUDE (filename, file_row_number, _part, _row)",
        _sample_id_sql("p"),
    ]
    positional, hashed = [], []
    for name in layout.scorers:
        if scorers is not None and name not in scorers:
            continue
        fields = [f'"{column}"' for column in layout.columns(name)]
        columns += [f'"{name}".{column}' for column in fields]
        columns += [f'"{name}".status AS "{name}_status"', f'"{name}".error AS "{name}_error"']
        if name in layout.score_files:
            files = list(layout.score_files[name][chosen])
            positional.append(f'POSITIONAL JOIN (SELECT {", ".join(fields)}, status, error FROM '
                              f'read_parquet({file_list_sql(files)}, union_by_name = true)) '
                              f'AS "{name}"')
        else:
            hashed.append(f'LEFT JOIN ({_aligned(paths.scores_dir(name))}) AS "{name}" '
                          f'ON "{name}"._part = p._part AND "{name}"._row = p._row')
    pool_files = list(layout.pool_files[chosen])
    pool = _pool_aligned(paths, pool_files if positional or parts is not None else None,
                         layout.lean)
    return (f"SELECT {', '.join(columns)} "
            f"FROM ({pool}) AS p {' '.join(positional + hashed)}")


def pool_rows_sql(paths: RunPaths, columns: Sequence[str], row_condition: str) -> str:
    """A SELECT of ``sample_id`` and the pool's ``columns`` straight from the pool parts (or,
    for a referencing run whose ``columns`` all live in the metadata, from the metadata files),
    for the rows matching ``row_condition`` over ``_row``, the row in its part. No join: DuckDB
    tests the condition inside the Parquet scan and decodes the other columns of matching rows
    only."""
    reference = pool_reference(paths.root)
    if reference is not None and all(reference.column(c).source for c in columns):
        return metadata_rows_sql(reference, paths.pool_parts(), columns, row_condition,
                                 file_list_sql)
    selected = ", ".join(f'"{column}"' for column in columns)
    return (f"SELECT {_sample_id_sql()}, {selected} "
            f"FROM ({_pool_aligned(paths)}) WHERE {row_condition}")


def pool_has_columns(con: duckdb.DuckDBPyConnection, paths: RunPaths,
                     columns: Sequence[str]) -> bool:
    """True when every pool part has every one of ``columns`` (from the Parquet footers; for
    a referencing run, from its run.json)."""
    reference = pool_reference(paths.root)
    if reference is not None:
        return set(columns) <= set(reference.names)
    files = [duckdb_file(f) for f in paths.pool_parts()]
    if not files:
        return False
    found = con.execute("SELECT count(*) FROM (SELECT DISTINCT file_name, name "
                        "FROM parquet_schema(?) WHERE list_contains(?, name))",
                        [files, list(columns)]).fetchall()[0][0]
    return int(found) == len(files) * len(set(columns))


def _readable_roots(paths: RunPaths, record: dict) -> list[str]:
    """The folders SQL may read: the run, and the local pool it was ingested from (or this
    machine's cache of a referenced pool on a URL)."""
    roots = [paths.root.resolve()]
    source = (record.get("source") or {}).get("path")
    if isinstance(source, str) and "://" not in source and Path(source).is_dir():
        roots.append(Path(source).resolve())
    reference = pool_reference(paths.root)
    if reference is not None and reference.url is not None:  # fetched metadata of a URL pool
        reference.root.mkdir(parents=True, exist_ok=True)
        roots.append(reference.root.resolve())
    # DuckDB checks a file pattern before expanding it: a root with glob characters is allowed
    # in the escaped form that names it too (duckdb_file), which expands to the root alone
    return sorted({form.rstrip("/") + "/" for root in roots
                   for form in (str(root), duckdb_file(root))})


def sandboxed_connection(readable: list[str]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that reads files under ``readable`` only, installs and loads no
    extension, and whose configuration is locked."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False,
                                 "autoload_known_extensions": False})
    con.execute("SET allowed_directories = ?", [readable])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def connect(run: Path | str) -> duckdb.DuckDBPyConnection:
    """A sandboxed in-memory DuckDB connection with the run's views (pool, each scorer,
    samples); see the module docs for what it may read."""
    return connect_with_layout(run)[0]


def connect_with_layout(run: Path | str, pool_columns: bool = True
                        ) -> tuple[duckdb.DuckDBPyConnection, SamplesLayout]:
    """``connect``, and the layout its ``samples`` view was built from (read once: each
    ``samples_layout`` reads every part's footer). Without ``pool_columns``, a run that
    references its pool's metadata leaves the metadata's columns (url, text, ...) out of
    ``pool`` and ``samples`` (``layout.lean``): no metadata file is fetched or read."""
    paths = RunPaths(Path(run))
    record = paths.read_run()
    pool_files = paths.pool_parts()
    if not pool_files:
        raise UserError(f"run {paths.root} has no pool table (pool/part-*.parquet)")
    reference = pool_reference(paths.root)
    lean = reference is not None and not pool_columns
    con = sandboxed_connection(_readable_roots(paths, record))
    if reference is None:
        con.execute(f"CREATE VIEW pool AS SELECT * FROM read_parquet("
                    f"{file_list_sql(pool_files)}, union_by_name = true)")
    else:
        # building the relation checks every metadata file: one line before any query runs
        con.execute("CREATE VIEW pool AS SELECT * EXCLUDE (filename, file_row_number) FROM "
                    f"({_pool_relation(reference, pool_files, lean)})")
    layout = dataclasses.replace(samples_layout(con, paths), lean=lean)
    for name in layout.scorers:
        parts = f"read_parquet({file_list_sql(_part_files(paths.scores_dir(name)))})"
        if name in layout.without_uid and name in layout.score_files:
            # row-aligned with the pool: the uid comes from there, by position
            con.execute(f'CREATE VIEW "{name}" AS SELECT p.uid, s.* FROM (SELECT uid FROM pool)'
                        f" AS p POSITIONAL JOIN {parts} AS s")
        elif name in layout.without_uid:  # some parts missing: by (part, row)
            pool = _pool_aligned(paths, lean=lean)
            con.execute(f'CREATE VIEW "{name}" AS SELECT p.uid, s.* EXCLUDE (filename, '
                        f"file_row_number, _part, _row) FROM ({_aligned(paths.scores_dir(name))})"
                        f" AS s JOIN ({pool}) AS p ON p._part = s._part AND "
                        "p._row = s._row ORDER BY s._part, s._row")
        else:
            con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM {parts}')
    con.execute(f"CREATE VIEW samples AS {samples_sql(paths, layout)}")
    con.execute(f"CREATE SCHEMA {ALIGNED}")
    for name, files in layout.score_files.items():
        fields = ", ".join(f'"{column}"' for column in layout.columns(name))
        con.execute(f'CREATE VIEW {ALIGNED}."{name}" AS SELECT {_sample_id_sql()}, '
                    f'{fields}, status AS "{name}_status", error AS "{name}_error" '
                    f"FROM ({_aligned(paths.scores_dir(name), list(files))})")
    return con, layout


def aligned_source(con: duckdb.DuckDBPyConnection, columns: Collection[str]) -> str:
    """The narrowest relation with ``samples``'s rows, in its order, that has ``columns``: an
    ``aligned`` scorer view when one holds them all, else ``samples``."""
    views = con.execute("SELECT view_name FROM duckdb_views() WHERE schema_name = ? "
                        "ORDER BY view_name", [ALIGNED]).fetchall()
    for (name,) in views:
        source = f'{ALIGNED}."{name}"'
        have = {row[0] for row in con.execute(f"DESCRIBE {source}").fetchall()}
        if set(columns) <= have:
            return source
    return "samples"


def _one_statement(con: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from exc
    if len(statements) != 1:
        raise QueryError(f"one statement at a time, got {len(statements)}")
    return statements[0]


def _explained(sql: str) -> str:
    """What ``EXPLAIN [(options)] [ANALYZE] statement`` wraps: the statement's text."""
    tokens = [(start, sql[start:]) for start, kind in duckdb.tokenize(sql)
              if kind != duckdb.token_type.comment]
    position = 0
    if tokens and tokens[0][1][:7].upper() == "EXPLAIN":
        position = 1
    if position < len(tokens) and tokens[position][1].startswith("("):
        depth = 0
        for index in range(position, len(tokens)):
            text = tokens[index][1][:1]
            depth += {"(": 1, ")": -1}.get(text, 0)
            if depth == 0:
                position = index + 1
                break
    if position < len(tokens) and tokens[position][1][:7].upper() == "ANALYZE":
        position += 1
    return tokens[position][1] if position < len(tokens) else ""


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but one SELECT, or one EXPLAIN [ANALYZE] of a SELECT (EXPLAIN ANALYZE
    runs the statement it wraps)."""
    statement = _one_statement(con, sql)
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _one_statement(con, _explained(statement.query))
        if inner.type != duckdb.StatementType.SELECT:
            raise QueryError(f"queries are read-only: EXPLAIN may wrap a SELECT only, "
                             f"not {inner.type.name}")
    elif statement.type not in READ_ONLY_STATEMENTS:
        raise QueryError(f"queries are read-only: {statement.type.name} statements are refused")


def run_query(run: Path | str, sql: str) -> pa.Table:
    """Run one read-only statement over the run's views; DuckDB's errors become QueryError."""
    con = connect(run)
    check_read_only(con, sql)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from exc
