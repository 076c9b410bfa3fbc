"""Select a subset of a run: filters, a score cut, exact provenance of every drop.

Writes ``RUN/subsets/NAME/``:

- ``uids.npy``: DataComp subset file (``u8,u8``, sorted ascending);
- ``manifest.parquet``: the kept samples (uid, shard, key, url, text, sizes, sha256, scores);
- ``dropped.parquet``: every dropped sample with its first failing filter and all of them;
- ``selection.json``: the command, filters and resolved thresholds, counts, scorers and their
  models, fingerprints of the inputs and the sha256 of ``uids.npy``.

``--fraction F`` follows DataComp's ``baselines.py`` exactly: over the non-null scores,
threshold = scores sorted descending at index ``int(N * F)``; keep ``score >= threshold``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import curate
from curate.errors import UserError
from curate.filters import FilterSpec, evaluate_filters
from curate.tables import connect, score_names
from curate.uids import save_uid_file, uids_to_array
from curate.workspace import RunPaths, staged_directory

logger = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MANIFEST_COLUMNS = ("uid", "shard", "key", "url", "text", "original_width", "original_height",
                    "sha256")
FINGERPRINT_TAIL = 64 * 1024


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
        }


def resolve_score_column(con: Any, by: str) -> str:
    """``dfn`` or ``dfn_score`` to the score column; an unknown one names what exists."""
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    numeric = [c for c in columns if c.endswith("_score")]
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


def _decision_sql(labels: list[str]) -> tuple[str, str]:
    """SQL for "kept" and for the list of failing filter labels, in filter order."""
    if not labels:
        return "true", "[]::VARCHAR[]"
    quoted = [f'coalesce(d."{label}", false)' for label in labels]
    kept = " AND ".join(quoted)
    cases = ", ".join(
        f"CASE WHEN NOT {q} THEN '{label.replace(chr(39), chr(39) * 2)}' END"
        for q, label in zip(quoted, labels, strict=True)
    )
    return kept, f"list_filter([{cases}], lambda x: x IS NOT NULL)"


def _resolved_records(decisions: pa.Table) -> list[dict[str, Any]]:
    """Each filter as evaluated: parameters and what was resolved (a fraction's threshold)."""
    metadata = decisions.schema.metadata or {}
    return json.loads(metadata.get(b"curate.filters", b"[]"))


def _prepare_output(paths: RunPaths, name: str, overwrite: bool) -> Path:
    target = paths.root / "subsets" / name
    if target.exists() and not overwrite:
        raise UserError(f"subset {target} exists; pass --overwrite to replace it")
    return target


def select_subset(config: SelectConfig) -> SelectSummary:
    """Evaluate the filters over ``samples`` and write ``subsets/NAME/`` atomically."""
    paths = RunPaths(config.run)
    target = _prepare_output(paths, config.name, config.overwrite)
    con = connect(config.run)
    score_column = resolve_score_column(con, config.by) if config.by else None
    specs = config.all_filters(score_column)
    decisions = evaluate_filters(con, specs, where=config.where)
    labels = [c for c in decisions.column_names if c not in ("uid", "sample_id")]
    con.register("decisions", decisions)
    kept_sql, failing_sql = _decision_sql(labels)
    scorers = score_names(config.run)
    score_columns = ", ".join(f's."{s}_score"' for s in scorers)
    manifest_columns = ", ".join(f"s.{c}" for c in MANIFEST_COLUMNS)
    con.execute(
        f"CREATE TEMP TABLE decided AS SELECT s.*, {kept_sql} AS _kept, {failing_sql} AS "
        "_failing FROM samples s JOIN decisions d USING (sample_id)"
    )
    manifest = con.sql(
        f"SELECT {manifest_columns}{', ' + score_columns if scorers else ''} FROM decided s "
        "WHERE _kept ORDER BY sample_id"
    ).to_arrow_table()
    if manifest.num_rows == 0:
        raise UserError("the selection keeps no sample; nothing written")
    dropped = con.sql(
        "SELECT uid, shard, key, _failing[1] AS first_failed_filter, _failing AS failed_filters "
        "FROM decided WHERE NOT _kept ORDER BY sample_id"
    ).to_arrow_table()
    summary = SelectSummary(
        name=config.name,
        path=target,
        total=decisions.num_rows,
        kept=manifest.num_rows,
        dropped_first=Counter(dropped.column("first_failed_filter").to_pylist()),
        failing=Counter(label for row in dropped.column("failed_filters").to_pylist()
                        for label in row),
        filters=_resolved_records(decisions),
    )
    _write_subset(paths, config, target, manifest, dropped, summary, scorers)
    return summary


def _write_subset(
    paths: RunPaths, config: SelectConfig, target: Path, manifest: pa.Table, dropped: pa.Table,
    summary: SelectSummary, scorers: list[str],
) -> None:
    with staged_directory(target) as staging:
        summary.uids_sha256 = save_uid_file(staging / "uids.npy",
                                            uids_to_array(manifest.column("uid")))
        pq.write_table(manifest, staging / "manifest.parquet")
        pq.write_table(dropped, staging / "dropped.parquet")
        record = {
            "command": config.command,
            "by": config.by,
            "fraction": config.fraction,
            "threshold": config.threshold,
            "where": config.where,
            **summary.to_dict(),
            "path": str(target),
            "scorers": _scorer_records(paths, scorers),
            "inputs": fingerprint_inputs(paths, scorers),
            "created": datetime.now(timezone.utc).isoformat(),
            "filter_pool_version": curate.__version__,
        }
        (staging / "selection.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    logger.info("subset %s: kept %d of %d", config.name, summary.kept, summary.total)
