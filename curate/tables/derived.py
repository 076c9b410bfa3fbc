"""Tables a stage derives for a whole run at once (dedup groups, cluster ids, head scores):
``RUN/scores/<name>/part-NNNNN.parquet``, one row per pool row, joined into ``samples`` like a
scorer's table (``<name>_<field>`` columns, ``<name>_status``, ``<name>_error``).

A stage that needs a global pass (grouping duplicates across shards, a threshold over all
clusters) computes every part, then ``write_derived_table`` publishes them together: parts and
``_table.json`` (what made them) go to a staging folder that replaces ``scores/<name>/`` in one
rename, so readers see the old table or the new one, never a mix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.io.schema import check_table_schema
from curate.io.workspace import (
    SCORER_FILE,
    SCORER_NAME,
    TABLE_FILE,
    RunPaths,
    check_name,
    refuse_other_settings,
    staged_directory,
)


def read_table_record(run: Path, name: str) -> dict[str, Any] | None:
    """The record of derived table ``name``, or None when there is none."""
    path = RunPaths(Path(run)).scores_dir(name) / TABLE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable table record ({exc})") from None
    if not isinstance(record, dict):
        raise UserError(f"{path}: a table record must be a JSON object")
    return record


def finished_table(run: Path, name: str, stage: str, settings: Mapping[str, Any],
                   overwrite: bool) -> bool:
    """True when ``scores/<name>/`` already holds this stage's table made with ``settings``
    (reuse it). Another stage's or a scorer's table of that name is refused; other settings
    are refused naming each difference unless ``overwrite``."""
    check_name(name, "table", SCORER_NAME)
    directory = RunPaths(Path(run)).scores_dir(name)
    if not directory.exists():
        return False
    record = read_table_record(run, name)
    if record is None or record.get("stage") != stage:
        made_by = ("a scorer" if (directory / SCORER_FILE).exists()
                   else f"`filter-pool {record['stage']}`" if record else "something else")
        raise UserError(f"{directory} exists and was made by {made_by}, not `filter-pool "
                        f"{stage}`; choose another --name")
    if overwrite:
        return False
    refuse_other_settings(f"{directory}", record.get("settings", {}), settings)
    return True


def write_derived_table(run: Path, name: str, stage: str, settings: Mapping[str, Any],
                        parts: Iterable[tuple[str, pa.Table]], summary: Mapping[str, Any]
                        ) -> Path:
    """Publish table ``name``: every ``(part stem, table)`` and ``_table.json`` together.
    Each table must have the pool part's row count and only uid, status, error and
    ``<name>_<field>`` columns; every pool part must get one."""
    paths = RunPaths(Path(run))
    expected = {p.stem: pq.ParquetFile(p).metadata.num_rows for p in paths.pool_parts()}
    target = paths.scores_dir(name)
    written: set[str] = set()
    with staged_directory(target) as staging:
        for part, table in parts:
            check_table_schema(name, table.schema)
            if part not in expected or table.num_rows != expected[part]:
                raise ValueError(f"table {name}: {part} has {table.num_rows} rows, the pool "
                                 f"part {expected.get(part, 'does not exist')}")
            pq.write_table(table, staging / f"{part}.parquet")
            written.add(part)
        if written != set(expected):
            raise ValueError(f"table {name}: no part for {sorted(set(expected) - written)[:3]}")
        record = {"stage": stage, "settings": dict(settings), "summary": dict(summary)}
        (staging / TABLE_FILE).write_text(json.dumps(record, indent=2, sort_keys=True,
                                                     default=str) + "\n")
    return target
