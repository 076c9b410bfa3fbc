"""Select a subset of a run: filters, a score cut, exact provenance of every drop.

Writes ``RUN/subsets/NAME/``:

- ``uids.npy``: DataComp subset file (``u8,u8``, sorted ascending);
- ``manifest.parquet``: the kept samples (uid, shard, key, url, text, every score);
- ``dropped.parquet``: every dropped sample with its first failing filter and all of them;
- ``selection.json``: the command, filters and resolved thresholds, counts, scorers and their
  models, fingerprints of the inputs, the files written and the sha256 of ``uids.npy``.

``--uids-only`` writes ``uids.npy`` and ``selection.json`` alone (what DataComp's
``baselines.py`` writes, plus the record): the manifest copies every kept caption and URL, and
the dropped table every dropped uid, most of a select's time on a large pool.

``--fraction F`` follows DataComp's ``baselines.py`` exactly: over the non-null scores,
threshold = scores sorted descending at index ``int(N * F)``; keep ``score >= threshold``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import curate
from curate.errors import UserError
from curate.filters import FilterSpec, evaluate_filters
from curate.io.lock import run_output, writes
from curate.io.schema import canonical_score_column
from curate.io.uids import save_uid_file
from curate.io.workspace import (
    OUTPUT_NAME,
    SUBSET_RECORD,
    SUBSET_UIDS,
    RunPaths,
    check_replaceable,
    refuse_other_settings,
    staged_directory,
)
from curate.select.outputs import write_outputs
from curate.tables.bins import bincount_blocks
from curate.tables.views import connect_with_layout, score_names, table_names

logger = logging.getLogger(__name__)

NAME_PATTERN = OUTPUT_NAME  # a subset's or sweep's name: one path component
FINGERPRINT_TAIL = 64 * 1024
MAX_FILTERS = 63  # a row's failing filters are one bit each of a uint64
LOOKUP_FILTERS = 16  # up to this many filters, rows map to failure groups by a lookup table
BLOCK_ROWS = 1 << 22  # per-row temporaries (bincount's int64 copy) are made a block at a time
CACHE_BLOCK_ROWS = 1 << 20  # blocks whose temporaries (a few MB) are reused, not fresh memory


@dataclass(frozen=True)
class SelectConfig:
    """A subset request: a score cut (``by`` with ``fraction`` or ``threshold``), filters,
    a SQL condition; all must hold for a sample to be kept."""

    run: Path
    name: str
    by: str | None = None
    fraction: float | None = None
    threshold: float | None = None
    filters: tuple[FilterSpec, ...] = ()
    where: str | None = None
    overwrite: bool = False
    uids_only: bool = False  # no manifest.parquet, no dropped.parquet
    command: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "filters", tuple(self.filters))
        if not NAME_PATTERN.match(self.name):
            raise UserError(f"--out '{self.name}': use letters, digits, '_', '-' and '.'")
        if self.by is None and (self.fraction is not None or self.threshold is not None):
            raise UserError("--fraction and --threshold need --by COLUMN")
        if self.by is not None and (self.fraction is None) == (self.threshold is None):
            raise UserError("--by needs exactly one of --fraction or --threshold")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise UserError(f"--fraction must be in (0, 1], got {self.fraction}")

    def all_filters(self, score_column: str | None) -> list[FilterSpec]:
        """The user's filters, then the score cut."""
        specs = list(self.filters)
        if score_column is not None and self.fraction is not None:
            specs.append(FilterSpec("fraction", {"column": score_column,
                                                 "fraction": self.fraction}))
        elif score_column is not None:
            specs.append(FilterSpec("threshold", {"column": score_column,
                                                  "min": self.threshold}))
        return specs


@dataclass
class SelectSummary:
    """Counts of one selection and where it was written."""

    name: str
    path: Path
    total: int
    kept: int
    dropped_first: Counter[str] = field(default_factory=Counter)
    failing: Counter[str] = field(default_factory=Counter)
    filters: list[dict[str, Any]] = field(default_factory=list)
    uids_sha256: str = ""
    reused: bool = False  # an existing subset of the same request: nothing written
    seconds: dict[str, float] = field(default_factory=dict)  # by phase; not in the record

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "total": self.total,
            "kept": self.kept,
            "dropped": self.total - self.kept,
            "kept_fraction": self.kept / self.total if self.total else 0.0,
            "dropped_by_first_failing_filter": dict(self.dropped_first.most_common()),
            "failing_per_filter": dict(self.failing.most_common()),
            "filters": self.filters,
            "uids_sha256": self.uids_sha256,
            "reused": self.reused,
        }

    def text(self) -> str:
        kept_fraction = self.kept / self.total if self.total else 0.0
        lines = [f"subset '{self.name}': kept {self.kept} of {self.total} "
                 f"({100 * kept_fraction:.2f}%) -> {self.path}"
                 + (" (done: made with the same settings)" if self.reused else "")]
        lines += [f"  dropped first by {label}: {count}"
                  for label, count in self.dropped_first.most_common()]
        return "\n".join(lines)


def resolve_score_column(con: Any, by: str) -> str:
    """``dfn`` or ``dfn_score`` (or DataComp's ``clip_l14_similarity_score``) to the score
    column; an unknown one names what exists."""
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    numeric = [c for c in columns if c.endswith("_score")]
    by = canonical_score_column(by)
    for candidate in (by, f"{by}_score"):
        if candidate in columns:
            return candidate
    raise UserError(f"unknown column '{by}'; score columns: {', '.join(numeric) or 'none'}")


def fingerprint_inputs(paths: RunPaths, scorers: list[str]) -> dict[str, str]:
    """A cheap content fingerprint per table: sha256 over each part's name, size and footer."""
    tables = {"pool": paths.pool_dir} | {f"scores/{s}": paths.scores_dir(s) for s in scorers}
    out = {"run.json": hashlib.sha256(paths.run_file.read_bytes()).hexdigest()}
    for label, directory in tables.items():
        digest = hashlib.sha256()
        for part in sorted(directory.glob("part-*.parquet")):
            size = part.stat().st_size
            with open(part, "rb") as handle:
                handle.seek(max(0, size - FINGERPRINT_TAIL))
                tail = handle.read()
            digest.update(f"{part.name}\t{size}\t".encode())
            digest.update(tail)
        out[label] = digest.hexdigest()
    return out


def _scorer_records(paths: RunPaths, scorers: list[str]) -> dict[str, Any]:
    records = {}
    for name in scorers:
        record = paths.scores_dir(name) / "_scorer.json"
        records[name] = json.loads(record.read_text()) if record.is_file() else None
    return records


def _failure_groups(passed: list[np.ndarray], labels: list[str],
                    rows: int) -> tuple[np.ndarray, list[list[str]]]:
    """Per row a group number: 0 for a kept row, else 1 + the index of its set of failing
    filters in the returned list (each set in filter order). A DataComp fraction select has one
    group; a handful of filters a few dozen at most."""
    if len(labels) > MAX_FILTERS:
        raise UserError(f"at most {MAX_FILTERS} filters in one selection, got {len(labels)}")
    width = next(t for t in (np.uint8, np.uint16, np.uint64) if np.iinfo(t).bits >= len(labels))
    code = np.zeros(rows, dtype=width)
    for j, kept in enumerate(passed):
        for start in range(0, rows, BLOCK_ROWS):  # a block at a time: small temporaries
            part = slice(start, start + BLOCK_ROWS)
            code[part] |= (~kept[part]).view(np.uint8).astype(width) << width(j)
    if len(labels) <= LOOKUP_FILTERS:  # a lookup table over every code: no sort of the rows
        present = np.flatnonzero(bincount_blocks(code, 2 ** len(labels), CACHE_BLOCK_ROWS))
        if len(present) and present[-1] == len(present) - 1:  # codes 0..k all there: as they are
            values, group = present.astype(np.uint64), code
        else:
            lookup = np.zeros(2 ** len(labels), dtype=np.uint16)  # < 2**16 groups
            lookup[present] = np.arange(len(present))
            values, group = present.astype(np.uint64), lookup[code]
    else:
        values, group = np.unique(code, return_inverse=True)
    if len(values) and values[0] != 0:  # no kept row: shift so that 0 still means kept
        values, group = np.concatenate([[np.uint64(0)], values]), group + 1
    failing = [[labels[j] for j in range(len(labels)) if int(v) >> j & 1] for v in values[1:]]
    dtype = next(t for t in (np.uint8, np.uint16, np.uint32) if len(values) <= np.iinfo(t).max)
    return group.astype(dtype, copy=False), failing


def _resolved_records(decisions: pa.Table) -> list[dict[str, Any]]:
    """Each filter as evaluated: parameters and what was resolved (a fraction's threshold)."""
    metadata = decisions.schema.metadata or {}
    return json.loads(metadata.get(b"curate.filters", b"[]"))


def _request(config: SelectConfig, score_column: str | None) -> dict[str, Any]:
    """What a subset is made of (recorded in selection.json; a rerun must match it)."""
    return {
        "column": score_column,
        "fraction": config.fraction,
        "threshold": config.threshold,
        "filters": [{"name": f.name, "params": dict(f.params)} for f in config.filters],
        "where": config.where,
        "uids_only": config.uids_only,
    }


def _finished(paths: RunPaths, target: Path, config: SelectConfig, request: dict[str, Any],
              scorers: list[str]) -> SelectSummary | None:
    """The existing subset when it was made with the same request from the same tables; None
    when there is none (or ``overwrite``); a UserError naming what differs otherwise."""
    if config.overwrite or not target.exists():
        check_replaceable(target, (SUBSET_RECORD,), "select")
        return None
    record_file = target / SUBSET_RECORD
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if "request" not in record:
        raise UserError(f"subset {target} exists; pass --overwrite to replace it")
    refuse_other_settings(f"subset {target}", record["request"], request)
    refuse_other_settings(f"subset {target}", {"inputs": record.get("inputs")},
                          {"inputs": fingerprint_inputs(paths, scorers)},
                          "the run's tables changed since; pass --overwrite to select again")
    logger.info("subset %s: made with the same settings, reused", config.name)
    return SelectSummary(
        name=config.name, path=target, total=record["total"], kept=record["kept"],
        dropped_first=Counter(record["dropped_by_first_failing_filter"]),
        failing=Counter(record["failing_per_filter"]), filters=record["filters"],
        uids_sha256=record["uids_sha256"], reused=True,
    )


def _increasing(ids: np.ndarray, block: int = 1 << 22) -> bool:
    """True when ``ids`` strictly increase (compared a block at a time: no array-sized
    temporaries)."""
    last = len(ids) - 1  # pairs (i, i + 1) for i < last
    return all(bool((ids[start + 1:min(start + block, last) + 1]
                     > ids[start:min(start + block, last)]).all())
               for start in range(0, max(last, 0), block))


def _passed_masks(decisions: pa.Table, labels: list[str]) -> list[np.ndarray]:
    """Per filter, True where it kept the sample (a null decision counts as dropped)."""
    return [pc.fill_null(decisions.column(label), False).to_numpy(zero_copy_only=False)
            for label in labels]


def _drop_counts(ids: np.ndarray, passed: list[np.ndarray], labels: list[str],
                 in_order: bool) -> tuple[Counter[str], Counter[str]]:
    """Dropped samples by first failing filter, and failures per filter.

    Counted with NumPy a block of rows at a time (no row-sized temporaries: at 128M rows each
    would be fresh memory); keys go in in the order a row-by-row pass in ``sample_id`` order
    meets them, so ``most_common`` breaks ties as a Counter over the dropped rows would."""
    failing: dict[int, list[int]] = {}  # filter -> [earliest sample_id, rows]
    first: dict[int, list[int]] = {}
    for start in range(0, len(ids), CACHE_BLOCK_ROWS):
        block_ids = ids[start:start + CACHE_BLOCK_ROWS]
        alive = np.ones(len(block_ids), dtype=bool)  # no earlier filter failed
        for j, kept in enumerate(passed):
            part = kept[start:start + CACHE_BLOCK_ROWS]
            failed = ~part
            _count_into(failing, j, block_ids, failed, in_order)
            np.logical_and(failed, alive, out=failed)
            _count_into(first, j, block_ids, failed, in_order)
            alive &= part
    return (Counter({labels[j]: n for j, (_, n) in sorted(first.items(), key=_by_earliest)}),
            Counter({labels[j]: n for j, (_, n) in sorted(failing.items(), key=_by_earliest)}))


def _count_into(counts: dict[int, list[int]], j: int, ids: np.ndarray, mask: np.ndarray,
                in_order: bool) -> None:
    """Add a block's rows of ``mask`` to filter ``j``'s count and earliest sample_id."""
    n = int(np.count_nonzero(mask))
    if not n:
        return
    earliest = int(ids[np.argmax(mask)]) if in_order else int(ids[mask].min())
    seen = counts.setdefault(j, [earliest, 0])
    seen[0], seen[1] = min(seen[0], earliest), seen[1] + n


def _by_earliest(item: tuple[int, list[int]]) -> tuple[int, int]:
    return item[1][0], item[0]


@writes(lambda c: run_output(c.run, f"subset-{c.name}", f"subset '{c.name}'"))
def select_subset(config: SelectConfig) -> SelectSummary:
    """Evaluate the filters over ``samples`` and write ``subsets/NAME/`` atomically.

    Only the filters' decisions are held in memory (per sample: sample_id and one boolean per
    filter, then sample_id and a failure group); the counts come from them, and DuckDB streams
    the manifest, the dropped table and the kept uids from ``samples``."""
    clock = _PhaseClock()
    paths = RunPaths(config.run)
    target = paths.subset_dir(config.name)
    # --uids-only reads no pool column of a referenced metadata file unless a filter does
    lean = config.uids_only and config.where is None
    con, layout = connect_with_layout(config.run, pool_columns=not lean)
    score_column = resolve_score_column(con, config.by) if config.by else None
    request = _request(config, score_column)
    finished = _finished(paths, target, config, request, table_names(config.run))
    if finished is not None:
        return finished
    specs = config.all_filters(score_column)
    if layout.lean and not _lean_enough(con, specs):
        con, layout = connect_with_layout(config.run)
    clock.mark("connect")
    decisions = evaluate_filters(con, specs, where=config.where, with_uid=False)
    clock.mark("filters")
    labels = [c for c in decisions.column_names if c not in ("uid", "sample_id")]
    passed = _passed_masks(decisions, labels)
    total, records = decisions.num_rows, _resolved_records(decisions)
    ids = decisions.column("sample_id").to_numpy()  # one contiguous copy; the table goes
    del decisions
    group, failing = _failure_groups(passed, labels, total)
    kept = len(group) - int(np.count_nonzero(group))  # group 0: kept (no row-sized temporary)
    if not kept:
        raise UserError("the selection keeps no sample; nothing written")
    in_order = _increasing(ids)
    dropped_first, failing_counts = _drop_counts(ids, passed, labels, in_order)
    del passed
    scorers = score_names(config.run)
    summary = SelectSummary(
        name=config.name,
        path=target,
        total=total,
        kept=kept,
        dropped_first=dropped_first,
        failing=failing_counts,
        filters=records,
        seconds=clock.seconds,
    )
    groups = pa.table({"sample_id": pa.array(ids), "_group": group})  # zero-copy from NumPy
    del ids
    clock.mark("decisions")
    _write_subset(paths, config, request, target, summary, scorers,
                  lambda staging: write_outputs(
        con, paths, layout, staging, groups, failing, scorers, in_order,
        tables=not config.uids_only), clock)
    logger.info("select %s: %s", config.name,
                ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in clock.seconds.items()))
    return summary


def _lean_enough(con: Any, specs: Sequence[FilterSpec]) -> bool:
    """True when every filter reads only columns the lean ``samples`` view has."""
    have = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    needed = [spec.columns() for spec in specs]
    return all(columns is not None and set(columns) <= have for columns in needed)


class _PhaseClock:
    """Seconds spent in each phase of a command, in order (for the log and benchmarks)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _write_subset(
    paths: RunPaths, config: SelectConfig, request: dict[str, Any], target: Path,
    summary: SelectSummary,
    scorers: list[str], write_tables: Callable[[Path], np.ndarray], clock: _PhaseClock,
) -> None:
    """``write_tables`` writes the Parquet outputs into the staging folder and returns the kept
    uids (sorted runs); then ``uids.npy`` and ``selection.json``; then the folder is renamed
    into place."""
    with staged_directory(target) as staging:
        uids = write_tables(staging)
        clock.mark("tables and kept uids" if not config.uids_only else "kept uids")
        summary.uids_sha256 = save_uid_file(staging / SUBSET_UIDS, uids, runs=True)
        del uids
        clock.mark("uids.npy (sort, write, hash)")
        record = {
            "command": config.command,
            "by": config.by,
            "fraction": config.fraction,
            "threshold": config.threshold,
            "where": config.where,
            "uids_only": config.uids_only,
            "request": request,
            **summary.to_dict(),
            "path": str(target),
            "scorers": _scorer_records(paths, scorers),
            "inputs": fingerprint_inputs(paths, table_names(paths.root)),
            "created": datetime.now(timezone.utc).isoformat(),
            "filter_pool_version": curate.__version__,
        }
        record["files"] = sorted([*(p.name for p in staging.iterdir()), SUBSET_RECORD])
        (staging / SUBSET_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    clock.mark("record and rename")
    logger.info("subset %s: kept %d of %d", config.name, summary.kept, summary.total)
