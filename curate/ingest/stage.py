"""Ingest: read a pool's per-shard metadata into the run's pool table, one row per sample.

From img2dataset output the per-shard parquet is the source of truth (it lists failed
downloads too); a shard without parquet is read from its tar (``.json`` and ``.txt``).
A folder of DataComp metadata (``*.parquet`` with a ``uid`` column, no ``*.tar``) is
ingested by :mod:`curate.ingest.datacomp`, which also writes its precomputed scores and
embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import curate
from curate.errors import UserError
from curate.ingest import datacomp
from curate.ingest.datacomp import cast_column
from curate.io.lock import LOCKS_DIR, beside, hold, writes
from curate.io.pool_table import COPY, REFERENCE, reference_record
from curate.io.schema import (
    POOL_SCHEMA,
    TEXT_CHARS,
    clash_renames,
    read_renames,
    text_chars,
    uid_halves,
    with_renames,
)
from curate.io.shards import PoolError, Shard, TarReadResult, find_shards, iter_tar_samples
from curate.io.storage import (
    Location,
    absolute,
    arrow_source,
    as_location,
    check_storage_options,
    is_url,
    list_pool,
    looks_like_url,
)
from curate.io.uids import is_valid_uid, uid_from_url_caption
from curate.io.workspace import (
    RUN_FILE,
    RunPaths,
    atomic_path,
    remove_stale_temporaries,
    replace_directory,
    write_json_atomic,
)
from curate.tables.views import duckdb_file

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("key", "url", "caption", "status")
DROPPED_COLUMNS = ("exif",)  # large and unused downstream
RENAMED = {"caption": "text"}
DERIVED_COLUMNS = ("uid_high", "uid_low", "text_chars", "shard")  # made here, never read
KEPT_ON_REPLACE = ("recipes",)  # records of `filter-pool run`, carried into the new run
STAGING_SUFFIX = ".ingest"  # .RUN.ingest/ beside RUN: a new run until it is complete
STAGING_MARKER = "_ingest.json"  # inside it: which pool it is being filled from
DUCKDB_MEMORY_LIMIT = "512MB"  # for the duplicate-uid count over the whole pool


@dataclass(frozen=True)
class IngestConfig:
    """Where the pool is (a folder, or an fsspec URL such as ``s3://bucket/pool``) and which
    run directory (local) receives its table. ``storage_options`` (fsspec options of a pool
    on a URL: endpoint, region, profile; never credentials) are stored in the run record."""

    pool: Location
    run: Path
    overwrite: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    copy_pool: bool = False  # DataComp metadata on disk: copy url/text/... instead of referencing

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", as_location(self.pool))
        if looks_like_url(self.run):
            raise UserError(f"run {self.run}: ingest_pool writes a local folder; a run on a URL "
                            "is worked on through its mirror (curate.io.run_store.run_location, "
                            "as `filter-pool ingest POOL --run URL` does)")
        object.__setattr__(self, "run", Path(self.run))
        options = check_storage_options(self.storage_options)
        if options and not is_url(self.pool):
            raise UserError(f"--storage-options applies to a pool on a URL, not to {self.pool}")
        object.__setattr__(self, "storage_options", options)


@dataclass
class IngestSummary:
    """Counts of one ingest."""

    shards: int = 0
    samples: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    duplicate_uids: int = 0
    skipped_shards: int = 0
    source: str = "webdataset"
    score_tables: list[str] = field(default_factory=list)  # precomputed ones (DataComp)
    renamed_columns: dict[str, str] = field(default_factory=dict)  # clashing pool columns
    run: Path | None = None  # the run folder written (not part of to_dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "score_tables": list(self.score_tables),
            "shards": self.shards,
            "samples": self.samples,
            "by_status": dict(self.by_status),
            "duplicate_uids": self.duplicate_uids,
            "skipped_shards": self.skipped_shards,
            "renamed_columns": dict(self.renamed_columns),
        }

    def text(self) -> str:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.by_status.items()))
        renamed = "".join(f"\npool column {old!r} is {new!r} in the run (the name is derived "
                          "or reserved)" for old, new in sorted(self.renamed_columns.items()))
        return (f"ingested {self.samples} samples from {self.shards} shards into {self.run}"
                f" ({statuses}; {self.duplicate_uids} duplicate uids){renamed}")


def _uids(table: pa.Table, source: Location) -> list[str]:
    urls = table.column("url").to_pylist()
    texts = table.column("text").to_pylist()
    if "uid" in table.column_names:
        given = table.column("uid").to_pylist()
        bad = [u for u in given if u is not None and not is_valid_uid(str(u).lower())]
        if bad:
            raise PoolError(f"{source}: column uid holds a value that is not a uid: {bad[0]!r}")
        return [
            str(u).lower() if u is not None else uid_from_url_caption(url, text)
            for u, url, text in zip(given, urls, texts, strict=True)
        ]
    return [uid_from_url_caption(url, text) for url, text in zip(urls, texts, strict=True)]


def _conform(table: pa.Table, shard: Shard, source: Location) -> pa.Table:
    """Rename, type and order columns as POOL_SCHEMA; extra columns follow it unchanged."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names and RENAMED.get(c, c)
               not in table.column_names]
    if missing:
        raise PoolError(f"{source}: missing column(s) {', '.join(missing)}")
    table = table.rename_columns([RENAMED.get(c, c) for c in table.column_names])
    for name in ("url", "text"):
        table = table.set_column(table.column_names.index(name), name,
                                 cast_column(table.column(name), pa.string(), source, name))
    uids = pa.array(_uids(table, source), pa.string())
    derived = {"uid": uids, **uid_halves(uids)}
    columns: dict[str, pa.Array] = {}
    for name in POOL_SCHEMA.names:
        target = POOL_SCHEMA.field(name).type
        if name in derived:
            columns[name] = derived[name]
        elif name == "shard":
            columns[name] = pa.array([shard.name] * table.num_rows, pa.string())
        elif name == TEXT_CHARS:
            columns[name] = text_chars(columns["text"])
        elif name in table.column_names:
            columns[name] = cast_column(table.column(name), target, source, name)
        else:
            columns[name] = pa.nulls(table.num_rows, target)
    carried = [  # the source's own columns, derived names among them, none lost
        c for c in table.column_names
        if (c not in POOL_SCHEMA.names or c in DERIVED_COLUMNS) and c not in DROPPED_COLUMNS
    ]
    renames = clash_renames(carried, POOL_SCHEMA.names)
    for name in carried:
        columns[renames.get(name, name)] = table.column(name)
    return with_renames(pa.table(columns), renames)


def _table_from_tar(shard: Shard, options: dict[str, Any] | None = None) -> pa.Table:
    """Rows for a shard with no parquet, from each sample's .json and .txt members."""
    rows: list[dict[str, Any]] = []
    result = TarReadResult()
    for sample in iter_tar_samples(shard.tar, result, options=options):
        meta: dict[str, Any] = {}
        if "json" in sample.members:
            try:
                meta = json.loads(sample.members["json"])
            except json.JSONDecodeError:
                meta = {}
        rows.append(
            {
                "key": sample.key,
                "url": meta.get("url"),
                "caption": sample.caption() if "txt" in sample.members else meta.get("caption"),
                "status": meta.get("status", "success"),
                "error_message": meta.get("error_message"),
                "width": meta.get("width"),
                "height": meta.get("height"),
                "original_width": meta.get("original_width"),
                "original_height": meta.get("original_height"),
                "sha256": meta.get("sha256"),
                **({"uid": meta["uid"]} if "uid" in meta else {}),
            }
        )
    if result.error:
        logger.warning("%s; %d samples read before it", result.error, len(rows))
    if not rows:
        return pa.table({c: pa.array([], pa.string()) for c in REQUIRED_COLUMNS})
    return pa.Table.from_pylist(rows)


def _read_parquet(location: Location, options: dict[str, Any] | None) -> pa.Table:
    with ExitStack() as stack:
        return pq.read_table(arrow_source(location, options, stack))


def read_shard_table(shard: Shard, options: dict[str, Any] | None = None) -> pa.Table:
    """The pool rows of one shard, conformed to POOL_SCHEMA (``options``: a pool on a URL)."""
    if shard.parquet is not None:
        try:
            raw = _read_parquet(shard.parquet, options)
        except (pa.ArrowException, OSError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PoolError(f"{shard.parquet}: unreadable parquet ({first})") from exc
        return _conform(raw, shard, shard.parquet)
    return _conform(_table_from_tar(shard, options), shard, shard.tar)


def _run_record(config: IngestConfig, kind: str, shards: list[dict[str, Any]],
                pool_table: dict[str, Any] | None = None) -> dict:
    source: dict[str, Any] = {"kind": kind, "path": absolute(config.pool)}
    if is_url(config.pool):  # what a later stage needs to read the pool (never a secret)
        source["storage_options"] = config.storage_options
    return {
        "source": source,
        "shards": shards,
        "pool_table": pool_table or {"layout": COPY},
        "created": datetime.now(timezone.utc).isoformat(),
        "versions": {
            "filter_pool": curate.__version__,
            "pyarrow": pa.__version__,
            "python": platform.python_version(),
        },
    }


def _check_overlap(config: IngestConfig) -> None:
    """Refuse a run that is, lies inside or contains the pool, with or without --overwrite."""
    if is_url(config.pool):
        return  # the run is local, the pool is not
    pool, run = config.pool.resolve(), config.run.resolve()
    if run == pool or pool in run.parents or run in pool.parents:
        relation = "is" if run == pool else "lies inside" if pool in run.parents else "contains"
        raise PoolError(f"--run {config.run} {relation} the pool {config.pool}; choose a run "
                        "folder outside it")


def _continues_finished_run(config: IngestConfig, paths: RunPaths, layout: str) -> bool:
    """True for a finished run of the same pool (ingest finishes any missing parts in place);
    else checks that the run may be replaced: a finished run only with --overwrite and only when
    it holds nothing but what ingest wrote; any other non-empty folder never."""
    if not paths.run_file.is_file():
        # a recipe records itself in RUN/recipes/ before its ingest stage makes the run
        if paths.root.exists() and (not paths.root.is_dir() or any(
                p.name not in KEPT_ON_REPLACE for p in paths.root.iterdir())):
            raise PoolError(f"--run {paths.root} exists and is not a run made by filter-pool "
                            "ingest; it is left untouched (choose another --run)")
        return False
    record = paths.read_run()
    previous = record["source"]["path"]
    if previous == absolute(config.pool) and not config.overwrite:
        held = (record.get("pool_table") or {}).get("layout", COPY)
        if held != layout:
            how = {COPY: "copied", REFERENCE: "referenced"}
            raise PoolError(f"run {paths.root} holds pool {previous} with its columns "
                            f"{how.get(held, held)}, this ingest would have them {how[layout]} "
                            "(--copy-pool); use --overwrite to ingest it again that way")
        return True
    if not config.overwrite:
        raise PoolError(f"run {paths.root} already holds pool {previous}; use --overwrite")
    made_by_ingest = {RUN_FILE, "pool", "scores", "embeddings", LOCKS_DIR, *KEPT_ON_REPLACE}
    ingested_tables = {s.name for s in datacomp.SCORERS}
    foreign = sorted(
        [e.name for e in paths.root.iterdir() if e.name not in made_by_ingest]
        + [f"{kind}/{e.name}" for kind in ("scores", "embeddings")
           if (paths.root / kind).is_dir()
           for e in (paths.root / kind).iterdir() if e.name not in ingested_tables])
    if foreign:
        raise PoolError(f"--overwrite replaces only what ingest made; run {paths.root} also "
                        f"holds {', '.join(foreign[:3])}: remove them or choose another --run")
    return False


def _staging(config: IngestConfig, layout: str) -> Path:
    """The folder a new run is ingested into before it is renamed into place: a killed ingest
    of the same pool resumes from it, one of another pool is discarded."""
    staging = config.run.with_name(f".{config.run.name}{STAGING_SUFFIX}")
    marker = staging / STAGING_MARKER
    source = absolute(config.pool)
    if staging.exists():
        try:
            same = json.loads(marker.read_text()) == {"source": source, "layout": layout}
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"source": source, "layout": layout})
    return staging


def _publish(staging: Path, run: Path) -> None:
    """Rename the finished staging folder into place (replacing a run being overwritten)."""
    (staging / STAGING_MARKER).unlink()
    for name in KEPT_ON_REPLACE:
        if (run / name).is_dir() and not (staging / name).exists():
            os.replace(run / name, staging / name)
    replace_directory(staging, run)


def _count_duplicate_uids(paths: RunPaths, halves: bool = False) -> int:
    """Rows whose uid an earlier row already has, counted by DuckDB over the parts (with
    ``halves``, over ``uid_high, uid_low``: a referencing run's parts hold no uid string).

    DuckDB's memory is capped (it spills to a temporary folder in the run, removed after), so
    a pool of millions of rows is counted in bounded memory.
    """
    files = [duckdb_file(f) for f in paths.pool_parts()]  # never a glob over the run's path
    uid = "(uid_high, uid_low)" if halves else "uid"
    query = f"SELECT count(*) - count(DISTINCT {uid}) FROM read_parquet(?)"
    spill = paths.root / ".duckdb-tmp"
    config = {"memory_limit": DUCKDB_MEMORY_LIMIT, "temp_directory": str(spill)}
    try:
        with duckdb.connect(config=config) as connection:
            return int(connection.execute(query, [files]).fetchone()[0])
    finally:
        shutil.rmtree(spill, ignore_errors=True)


@writes(lambda config: hold(beside(config.run), f"run {config.run}"))
def ingest_pool(config: IngestConfig) -> IngestSummary:
    """Build ``RUN/pool/part-NNNNN.parquet`` for every shard of a pool or DataComp folder.

    All or nothing: a new run is written into a staging folder beside RUN and renamed into
    place when every part is written; a bad shard anywhere leaves no run behind.
    """
    options = config.storage_options
    if is_url(config.pool):  # unreachable, refused, missing: one line before anything is made
        list_pool(config.pool, options)
    is_datacomp = datacomp.is_datacomp_metadata(config.pool, options)
    if not is_datacomp:
        find_shards(config.pool, options)  # a missing or empty pool: one line, nothing made
    _check_overlap(config)
    layout = _layout(config, is_datacomp)
    if _continues_finished_run(config, RunPaths(config.run), layout):
        return _ingest(config, RunPaths(config.run), is_datacomp)
    staging = _staging(config, layout)
    try:
        summary = _ingest(config, RunPaths(staging), is_datacomp)
    except (UserError, OSError):  # bad input, a full disk: no run is left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, config.run)
    return summary


def _ingest(config: IngestConfig, paths: RunPaths, is_datacomp: bool) -> IngestSummary:
    return (_ingest_datacomp if is_datacomp else _ingest_shards)(config, paths)


def _ingest_shards(config: IngestConfig, paths: RunPaths) -> IngestSummary:
    """Pool parts for every shard of an img2dataset webdataset pool."""
    shards = find_shards(config.pool, config.storage_options)
    remove_stale_temporaries(paths.pool_dir)
    summary = IngestSummary(shards=len(shards))
    counts: dict[str, int] = {}
    for shard in shards:
        part = paths.pool_part(shard.index)
        if part.is_file():
            table = pq.read_table(part)
            summary.skipped_shards += 1
        else:
            table = read_shard_table(shard, config.storage_options)
            with atomic_path(part) as tmp:
                pq.write_table(table, tmp)
        counts[shard.name] = table.num_rows
        summary.samples += table.num_rows
        summary.by_status.update(table.column("status").to_pylist())
    entries = [
        {
            "index": s.index,
            "name": s.name,
            "tar": absolute(s.tar),
            "parquet": absolute(s.parquet) if s.parquet else None,
            "samples": counts.get(s.name),
            "fingerprint": s.fingerprints,
        }
        for s in shards
    ]
    _finish(config, paths, summary, "webdataset", entries)
    return summary


def _finish(config: IngestConfig, paths: RunPaths, summary: IngestSummary, kind: str,
            entries: list[dict[str, Any]], pool_table: dict[str, Any] | None = None) -> None:
    """Count duplicate uids, collect column renames, write run.json, log the outcome."""
    summary.run = config.run
    summary.duplicate_uids = _count_duplicate_uids(paths, pool_table is not None)
    for part in paths.pool_parts():
        summary.renamed_columns.update(read_renames(pq.read_schema(part)))
    for old, new in sorted(summary.renamed_columns.items()):
        logger.warning("pool column %r clashes with a name filter-pool derives or reserves; "
                       "it is %r in the run", old, new)
    write_json_atomic(paths.run_file, _run_record(config, kind, entries, pool_table))
    if summary.duplicate_uids:
        logger.warning("%d samples share a uid with an earlier sample", summary.duplicate_uids)
    logger.info("ingested %d samples from %d shards into %s", summary.samples, len(entries),
                config.run)


def _ingest_datacomp(config: IngestConfig, paths: RunPaths) -> IngestSummary:
    """Pool, score and embedding parts for every file of a DataComp metadata folder."""
    files = datacomp.find_metadata_files(config.pool, config.storage_options)
    plans = [datacomp.inspect_file(f) for f in files]
    datacomp.prepare_run(paths)
    layout = None
    if _layout(config, True, files) == REFERENCE:
        layout = datacomp.reference_layout([plan.schema for plan in plans])
    summary = IngestSummary(shards=len(plans), source="datacomp",
                            score_tables=[s.name for s in datacomp.SCORERS])
    entries = []
    for plan in plans:
        file = plan.file
        result = datacomp.ingest_metadata_file(plan, paths, layout)
        summary.samples += result.rows
        summary.by_status.update(result.by_status)
        summary.skipped_shards += int(result.skipped)
        entries.append(
            {
                "index": file.index,
                "name": file.name,
                "tar": None,
                "parquet": absolute(file.parquet),
                "npz": absolute(file.npz) if file.npz else None,
                "samples": result.rows,
                "fingerprint": file.fingerprints,
            }
        )
    _finish(config, paths, summary, "datacomp", entries,
            reference_record(layout.columns) if layout is not None else None)
    return summary


def _layout(config: IngestConfig, is_datacomp: bool,
            files: list[datacomp.MetadataFile] | None = None) -> str:
    """How the run holds the pool's columns: REFERENCE (read from the metadata files by row
    position) for DataComp metadata, on disk or a URL, whose files lie inside the pool folder
    (a URL's need an ETag), unless --copy-pool; COPY for everything else (webdataset pools)."""
    if config.copy_pool or not is_datacomp:
        return COPY
    files = datacomp.find_metadata_files(config.pool, config.storage_options) if files is None \
        else files
    if is_url(config.pool):
        prefix = absolute(config.pool) + "/"
        outside = [f.parquet for f in files if not str(f.parquet).startswith(prefix)
                   or not (f.fingerprints.get("parquet") or {}).get("etag")]
    else:
        root = Path(absolute(config.pool))
        outside = [f.parquet for f in files if root not in Path(absolute(f.parquet)).parents]
    if outside:
        logger.info("%s lies outside the pool folder (a link?): the run copies the pool's "
                    "columns", outside[0])
        return COPY
    return REFERENCE
