"""The report's section on derived tables: duplicate groups and image clusters as image grids.

A dedup table (``<name>_group``, ``<name>_group_size``, ``<name>_keep``) shows its largest
groups, the kept representative first; a clustering table (``<name>_cluster``, ``<name>_keep``)
shows its largest kept and largest dropped clusters, members nearest their centroid first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb

from curate.io.workspace import TABLE_FILE, RunPaths
from curate.report import html as H
from curate.report.data import Grid, grid_rows
from curate.tables.views import SamplesLayout

GROUPS_SHOWN = 4
CLUSTERS_SHOWN = 2


def _quoted(name: str, field: str) -> str:
    return f'"{name}_{field}"'


def _value_column(name: str, fields: tuple[str, ...]) -> str:
    """What a card shows as its number: distance or similarity when the table has one."""
    for field in ("distance", "similarity", "score"):
        if f"{name}_{field}" in fields:
            return _quoted(name, field)
    return "NULL"


def _dedup_grids(con: duckdb.DuckDBPyConnection, name: str, fields: tuple[str, ...],
                 size: int) -> list[Grid]:
    group, group_size, keep = (_quoted(name, f) for f in ("group", "group_size", "keep"))
    reason = _quoted(name, "reason") if f"{name}_reason" in fields else "NULL"
    largest = con.execute(
        f"SELECT {group}, max({group_size}) AS n FROM samples WHERE {group_size} > 1 "
        f"GROUP BY 1 ORDER BY n DESC, 1 LIMIT {GROUPS_SHOWN}").fetchall()
    grids = []
    for group_id, members in largest:
        rows = grid_rows(con, (
            f"SELECT shard, key, text, {_value_column(name, fields)}, {reason} FROM samples "
            f"WHERE {group} = {int(group_id)} ORDER BY {keep} DESC NULLS LAST, sample_id "
            f"LIMIT {size}"))
        grids.append(Grid(f"{name}: group {group_id} ({members} samples)",
                          "the kept representative first", rows))
    return grids


def _cluster_grids(con: duckdb.DuckDBPyConnection, name: str, fields: tuple[str, ...],
                   size: int) -> list[Grid]:
    cluster, keep = _quoted(name, "cluster"), _quoted(name, "keep")
    order = (f"{_quoted(name, 'similarity')} DESC" if f"{name}_similarity" in fields
             else "sample_id")
    grids = []
    for kept in (True, False):
        largest = con.execute(
            f"SELECT {cluster}, count(*) AS n FROM samples WHERE {cluster} IS NOT NULL AND "
            f"{keep} = {kept} GROUP BY 1 ORDER BY n DESC, 1 LIMIT {CLUSTERS_SHOWN}").fetchall()
        for cluster_id, members in largest:
            rows = grid_rows(con, (
                f"SELECT shard, key, text, {_value_column(name, fields)}, NULL FROM samples "
                f"WHERE {cluster} = {int(cluster_id)} AND {keep} = {kept} ORDER BY {order} "
                f"LIMIT {size}"))
            grids.append(Grid(f"{name}: cluster {cluster_id} ({members} samples, "
                              f"{'kept' if kept else 'dropped'})",
                              "nearest to the centroid first", rows))
    return grids


def _facts(con: duckdb.DuckDBPyConnection, paths: RunPaths, name: str) -> str:
    keep, status = _quoted(name, "keep"), _quoted(name, "status")
    kept, dropped, undecided = con.execute(
        f"SELECT count(*) FILTER (WHERE {keep}), count(*) FILTER (WHERE NOT {keep}), "
        f"count(*) FILTER (WHERE {keep} IS NULL) FROM samples").fetchone()
    statuses = con.execute(f"SELECT {status}, count(*) FROM samples GROUP BY 1 ORDER BY 2 DESC"
                           ).fetchall()
    record_file: Path = paths.scores_dir(name) / TABLE_FILE
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    settings = json.dumps(record.get("settings", {}), sort_keys=True)
    return (H.table([("made by", f"filter-pool {record.get('stage', '?')}"),
                     ("settings", settings), ("kept", kept), ("dropped", dropped),
                     ("no decision", undecided)], ("", ""))
            + H.table([(s, n) for s, n in statuses], ("status", "samples")))


@dataclass
class DerivedSection:
    """One derived table's section: its facts (HTML) and its grids (thumbnails filled later)."""

    title: str
    facts: str
    grids: list[Grid]

    def html(self) -> str:
        return self.facts + "".join(H.grid(g) for g in self.grids)


def derived_sections(con: duckdb.DuckDBPyConnection, paths: RunPaths, layout: SamplesLayout,
                     names: list[str], size: int) -> list[DerivedSection]:
    """A section per derived table that decides what to keep: dedup groups or clusters."""
    sections = []
    for name in names:
        fields = layout.columns(name)
        if f"{name}_keep" not in fields:
            continue
        if f"{name}_group" in fields and f"{name}_group_size" in fields:
            grids = _dedup_grids(con, name, fields, size)
        elif f"{name}_cluster" in fields:
            grids = _cluster_grids(con, name, fields, size)
        else:
            grids = []
        sections.append(DerivedSection(f"Table {name}", _facts(con, paths, name), grids))
    return sections
