"""Threshold sweeps over a score column: what each cut keeps, and what the kept samples look like.

Thresholds come from DuckDB: the scores are sorted once inside DuckDB, and a fraction F maps
to DataComp's threshold (the score at index ``int(N * F)`` of the descending order, ties
kept). Kept counts and mean caption length are exact, computed in one scan. English share and
class-name match share come from the ``language`` and ``text_match`` filters run on a uniform
sample of the candidates (``stats_sample`` rows), since language ID costs far more than SQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.filters import FilterSpec, evaluate_filters
from curate.select import NAME_PATTERN, resolve_score_column
from curate.tables import connect
from curate.workspace import RunPaths, staged_directory

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.1, 0.15, 0.2, 0.3)
HISTOGRAM_BINS = 100


@dataclass(frozen=True)
class SweepConfig:
    """A sweep of ``by`` at DataComp fractions and/or absolute thresholds, after filters."""

    run: Path
    by: str
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    thresholds: tuple[float, ...] = ()
    filters: tuple[FilterSpec, ...] = ()
    where: str | None = None
    name: str | None = None
    overwrite: bool = False
    stats_sample: int = 100_000
    seed: int = 0
    plot: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "filters", tuple(self.filters))
        bad = [f for f in self.fractions if not 0 < f <= 1]
        if bad:
            raise UserError(f"--fractions must be in (0, 1], got {bad[0]}")
        if not self.fractions and not self.thresholds:
            raise UserError("give --fractions or --thresholds (or both)")
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise UserError(f"--name '{self.name}': use letters, digits, '_', '-' and '.'")
        if self.stats_sample < 0:
            raise UserError("--stats-sample must be 0 or more")


@dataclass
class SweepResult:
    """The sweep table and where it was written."""

    name: str
    column: str
    candidates: int
    table: pa.Table
    path: Path
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "candidates": self.candidates,
            "path": str(self.path),
            "rows": self.table.to_pylist(),
        }


def _candidates(con: duckdb.DuckDBPyConnection, config: SweepConfig, column: str) -> None:
    """A temp table ``candidates(sample_id, score, text)``: rows passing filters and where."""
    if config.filters or config.where:
        decisions = evaluate_filters(con, list(config.filters), where=config.where)
        labels = [c for c in decisions.column_names if c not in ("uid", "sample_id")]
        con.register("sweep_decisions", decisions)
        passed = " AND ".join(f'coalesce(d."{label}", false)' for label in labels)
        source = f"samples s JOIN sweep_decisions d USING (sample_id) WHERE {passed} AND"
    else:
        source = "samples s WHERE"
    con.execute(
        f'CREATE TEMP TABLE candidates AS SELECT s.sample_id, s."{column}" AS score, s.text '
        f'FROM {source} s."{column}" IS NOT NULL'
    )


def fraction_thresholds(
    con: duckdb.DuckDBPyConnection, fractions: tuple[float, ...], total: int
) -> dict[float, float]:
    """DataComp's threshold per fraction: descending scores at index int(N * F) (clamped)."""
    if not fractions or total == 0:
        return {}
    index = {f: min(int(total * f), total - 1) for f in fractions}
    con.execute(
        "CREATE TEMP TABLE ranked AS SELECT score FROM candidates ORDER BY score DESC"
    )
    wanted = sorted(set(index.values()))
    rows = con.execute(
        "SELECT idx, score FROM (SELECT score, row_number() OVER () - 1 AS idx FROM ranked) "
        f"WHERE idx IN ({', '.join(str(i) for i in wanted)})"
    ).fetchall()
    at = {int(i): float(score) for i, score in rows}
    return {f: at[index[f]] for f in fractions}


def _exact_stats(con: duckdb.DuckDBPyConnection, thresholds: list[float]) -> list[tuple]:
    """Kept count and mean caption length per threshold, in one scan."""
    aggregates = []
    for i, t in enumerate(thresholds):
        literal = repr(float(t))
        aggregates.append(f"count(*) FILTER (WHERE score >= {literal}) AS kept_{i}")
        aggregates.append(f"avg(length(text)) FILTER (WHERE score >= {literal}) AS len_{i}")
    row = con.execute(f"SELECT {', '.join(aggregates)} FROM candidates").fetchall()[0]
    return [(int(row[2 * i]), row[2 * i + 1]) for i in range(len(thresholds))]


def _sampled_shares(
    con: duckdb.DuckDBPyConnection, thresholds: list[float], size: int, seed: int
) -> list[tuple[float | None, float | None]]:
    """English share and class-name match share among kept rows of a uniform sample."""
    if size == 0:
        return [(None, None)] * len(thresholds)
    sample = con.sql(
        f"SELECT score, text FROM candidates USING SAMPLE reservoir({int(size)} ROWS) "
        f"REPEATABLE ({int(seed)})"
    ).to_arrow_table()
    if sample.num_rows == 0:
        return [(None, None)] * len(thresholds)
    scores = sample.column("score").to_numpy()
    english = FilterSpec("language", {"lang": "en"}).resolve(con).mask(sample)
    matched = FilterSpec("text_match").resolve(con).mask(sample)
    shares = []
    for t in thresholds:
        kept = scores >= t
        count = int(kept.sum())
        shares.append((float(english[kept].mean()) if count else None,
                       float(matched[kept].mean()) if count else None))
    return shares


def _histogram(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    low, high = con.execute("SELECT min(score), max(score) FROM candidates").fetchall()[0]
    if low is None:
        return np.zeros(0), np.zeros(0)
    width = (high - low) / HISTOGRAM_BINS or 1.0
    rows = con.execute(
        f"SELECT least(CAST(floor((score - {low!r}) / {width!r}) AS INTEGER), "
        f"{HISTOGRAM_BINS - 1}) AS b, count(*) FROM candidates GROUP BY b ORDER BY b"
    ).fetchall()
    counts = np.zeros(HISTOGRAM_BINS)
    for b, c in rows:
        counts[b] = c
    return low + width * np.arange(HISTOGRAM_BINS + 1), counts


def _plot(path: Path, table: pa.Table, edges: np.ndarray, counts: np.ndarray,
          column: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = table.column("threshold").to_numpy()
    kept = table.column("kept_fraction").to_numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    order = np.argsort(thresholds)
    left.plot(thresholds[order], kept[order], marker="o")
    left.set_xlabel(f"threshold on {column}")
    left.set_ylabel("kept fraction")
    left.set_title("kept fraction against threshold")
    left.grid(alpha=0.3)
    if len(counts):
        right.stairs(counts, edges, fill=True, alpha=0.6)
    for t in thresholds:
        right.axvline(t, color="crimson", linestyle="--", linewidth=1)
    right.set_xlabel(column)
    right.set_ylabel("samples")
    right.set_title("score histogram, thresholds marked")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def sweep(config: SweepConfig) -> SweepResult:
    """Compute the sweep table; write ``sweeps/<name>/sweep.parquet`` and ``sweep.png``."""
    con = connect(config.run)
    column = resolve_score_column(con, config.by)
    name = config.name or column
    target = RunPaths(config.run).root / "sweeps" / name
    if target.exists() and not config.overwrite:
        raise UserError(f"sweep {target} exists; pass --overwrite or another --name")
    _candidates(con, config, column)
    total = con.execute("SELECT count(*) FROM candidates").fetchall()[0][0]
    if total == 0:
        raise UserError(f"no sample has a {column} value after the filters; nothing to sweep")
    by_fraction = fraction_thresholds(con, config.fractions, total)
    rows = [(f, t) for f, t in by_fraction.items()] + [(None, t) for t in config.thresholds]
    thresholds = [t for _, t in rows]
    exact = _exact_stats(con, thresholds)
    shares = _sampled_shares(con, thresholds, config.stats_sample, config.seed)
    table = pa.table({
        "fraction": pa.array([f for f, _ in rows], pa.float64()),
        "threshold": pa.array(thresholds, pa.float64()),
        "kept": pa.array([k for k, _ in exact], pa.int64()),
        "kept_fraction": pa.array([k / total for k, _ in exact], pa.float64()),
        "mean_caption_chars": pa.array([m for _, m in exact], pa.float64()),
        "english_share": pa.array([e for e, _ in shares], pa.float64()),
        "class_match_share": pa.array([c for _, c in shares], pa.float64()),
    })
    edges, counts = _histogram(con)
    with staged_directory(target) as staging:
        pq.write_table(table, staging / "sweep.parquet")
        if config.plot:
            _plot(staging / "sweep.png", table, edges, counts, column)
    return SweepResult(name, column, total, table, target,
                       sorted(p.name for p in target.iterdir()))
