"""What the report shows, queried from the run with DuckDB (``curate.tables.views.connect``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from curate.errors import UserError
from curate.io.workspace import SUBSET_DROPPED, SUBSET_MANIFEST, SUBSET_RECORD, RunPaths

HISTOGRAM_BINS = 40
CURVE_POINTS = 101


@dataclass
class GridItem:
    """One sample in an image grid."""

    shard: str
    key: str
    text: str | None
    score: float | None
    reason: str | None = None
    thumbnail: str | None = None


@dataclass
class Grid:
    """A titled row of samples."""

    title: str
    note: str
    items: list[GridItem] = field(default_factory=list)


@dataclass
class SubsetInfo:
    """A selected subset: its record and its manifest/dropped tables' paths."""

    name: str
    record: dict[str, Any]
    manifest: Path
    dropped: Path

    @classmethod
    def read(cls, run: Path, name: str) -> SubsetInfo:
        directory = RunPaths(run).subset_dir(name)
        record_file = directory / SUBSET_RECORD
        if not record_file.is_file():
            raise UserError(f"subset '{name}' not found: {record_file} does not exist")
        record = json.loads(record_file.read_text())
        return cls(name, record, directory / SUBSET_MANIFEST, directory / SUBSET_DROPPED)

    def cut(self) -> tuple[str, float] | None:
        """(score column, threshold) of the subset's score filter, if it has one."""
        for spec in self.record.get("filters", []):
            params = spec.get("params", {})
            if spec.get("name") == "fraction" and "resolved" in spec:
                return params["column"], float(spec["resolved"]["threshold"])
            if spec.get("name") == "threshold":
                return params["column"], float(params["min"])
        return None


def counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    """A two-column (label, count) query as a dict, labels as strings."""
    return {str(label): int(n) for label, n in con.execute(sql).fetchall()}


def scored(column: str) -> str:
    return f'"{column}" IS NOT NULL AND NOT isnan("{column}")'


def fraction_threshold(
    con: duckdb.DuckDBPyConnection, column: str, fraction: float
) -> float | None:
    """DataComp's rule: scores sorted descending, the value at index int(N * F)."""
    n = con.execute(f"SELECT count(*) FROM samples WHERE {scored(column)}").fetchall()[0][0]
    if n == 0:
        return None
    index = min(int(n * fraction), n - 1)
    rows = con.execute(
        f'SELECT "{column}" FROM samples WHERE {scored(column)} '
        f'ORDER BY "{column}" DESC LIMIT 1 OFFSET {index}'
    ).fetchall()
    return float(rows[0][0])


def score_values(con: duckdb.DuckDBPyConnection, column: str, where: str = "TRUE") -> np.ndarray:
    rows = con.execute(
        f'SELECT "{column}" FROM samples WHERE {scored(column)} AND ({where})'
    ).fetchnumpy()
    return np.asarray(rows[column], dtype=np.float64)


def histogram(
    con: duckdb.DuckDBPyConnection, column: str, series: dict[str, str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Shared bin edges and per-series counts; ``series`` maps a label to a SQL condition."""
    low, high = con.execute(
        f'SELECT min("{column}"), max("{column}") FROM samples WHERE {scored(column)}'
    ).fetchall()[0]
    if low is None:
        return np.array([0.0, 1.0]), {}
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, HISTOGRAM_BINS + 1)
    out = {}
    for label, where in series.items():
        values = score_values(con, column, where)
        if len(values):
            out[label] = np.histogram(values, bins=edges)[0]
    return edges, out


def kept_fraction_curve(
    con: duckdb.DuckDBPyConnection, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds at the scores' quantiles, and the fraction kept at each (score >= t)."""
    quantiles = np.linspace(0, 1, CURVE_POINTS)
    listed = ", ".join(f"{q:.4f}" for q in quantiles)
    row = con.execute(
        f'SELECT quantile_disc("{column}", [{listed}]) FROM samples WHERE {scored(column)}'
    ).fetchall()[0][0]
    if row is None:
        return np.array([]), np.array([])
    thresholds = np.asarray(row, dtype=np.float64)
    values = np.sort(score_values(con, column))
    kept = 1.0 - np.searchsorted(values, thresholds, side="left") / len(values)
    return thresholds, kept


def grid_rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[GridItem]:
    """GridItems from a query selecting shard, key, text, score and reason."""
    return [
        GridItem(str(shard), str(key), text, None if score is None else float(score), reason)
        for shard, key, text, score, reason in con.execute(sql).fetchall()
    ]
