"""Threshold sweeps over a score column: what each cut keeps, and what the kept samples look like.

DuckDB scans the candidates once for their scores and caption lengths (the pool's
``text_chars``: a few bytes per row in NumPy, never the captions themselves). A fraction F maps
to DataComp's threshold (the score at index ``int(N * F)`` of the descending order, ties kept).
Thresholds, kept counts, mean caption length and the plot's histogram all come from one binning
pass over the scores (``curate.tables.bins``), exact: only the bins holding a threshold are
sorted. English share and class-name match share come from the ``language`` and ``text_match``
filters run on a seeded uniform sample of the candidates (``stats_sample`` rows; only their
captions are read), since language ID costs far more than SQL; the two filters load while DuckDB
scans, and run on the sample while NumPy counts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import UserError
from curate.filters import FilterSpec, ResolvedFilter, evaluate_filters
from curate.io.lock import run_output
from curate.io.schema import TEXT_CHARS, score_column
from curate.io.workspace import (
    RunPaths,
    check_replaceable,
    refuse_other_settings,
    staged_directory,
    write_json_atomic,
)
from curate.select.subset import NAME_PATTERN, fingerprint_inputs, resolve_score_column
from curate.tables.bins import ScoreBins
from curate.tables.chunks import ordered_map, part_chunks
from curate.tables.views import (
    connect,
    pool_has_columns,
    pool_rows_sql,
    samples_layout,
    samples_sql,
    table_names,
)

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = (0.1, 0.15, 0.2, 0.3)
SWEEP_RECORD = "sweep.json"  # the settings and inputs a sweep was made with
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
    stats_sample: int = 25_000  # language ID runs ~15-20k captions/s on one core
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
    reused: bool = False  # an existing sweep of the same settings: nothing computed

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "column": self.column,
            "candidates": self.candidates,
            "path": str(self.path),
            "rows": self.table.to_pylist(),
            "reused": self.reused,
        }

    def text(self) -> str:
        def cell(value: Any, fmt: str) -> str:
            return format(value, fmt) if value is not None else "-"

        lines = [f"sweep of {self.column} over {self.candidates} samples -> {self.path}",
                 f"{'fraction':>9} {'threshold':>10} {'kept':>10} {'kept%':>7} {'chars':>7} "
                 f"{'english':>8} {'classes':>8}"]
        lines += [
            f"{cell(row['fraction'], '9.3f')} {row['threshold']:10.4f} {row['kept']:10d} "
            f"{100 * row['kept_fraction']:6.2f}% {cell(row['mean_caption_chars'], '7.1f')} "
            f"{cell(row['english_share'], '8.3f')} {cell(row['class_match_share'], '8.3f')}"
            for row in self.table.to_pylist()
        ]
        return "\n".join(lines)


SCAN_CHUNKS = 8  # pool parts per unfiltered scan, read two at a time (see curate.tables.chunks)
SCAN_CHUNK_ROWS = 2_000_000  # ... or more chunks, so that each holds about this many rows at most


def _caption_sql(con: duckdb.DuckDBPyConnection, paths: RunPaths) -> str:
    """``chars, has_text`` over ``samples s``: from the pool's ``text_chars`` (4 bytes a row)
    when every part has it, else from ``length(text)`` (every caption decoded; pools ingested
    before text_chars existed)."""
    if pool_has_columns(con, paths, [TEXT_CHARS]):
        return (f"coalesce(s.{TEXT_CHARS}, 0)::INTEGER AS chars, "
                f"s.{TEXT_CHARS} IS NOT NULL AS has_text")
    return "coalesce(length(s.text), 0)::INTEGER AS chars, s.text IS NOT NULL AS has_text"


def _candidate_queries(con: duckdb.DuckDBPyConnection, config: SweepConfig,
                       column: str) -> tuple[list[str], dict[str, pa.Table]]:
    """SQL for the candidates ``(score, chars, has_text, sample_id)``: rows passing filters and
    where, score not null nor NaN, as queries whose results concatenate in ``samples`` order;
    and the Arrow tables that the SQL reads (to register on each cursor). Without filters, one
    query per chunk of pool parts when ``samples`` joins by position (a positional join runs on
    one thread; chunks run side by side); else one query."""
    paths = RunPaths(config.run)
    sources = ["samples"]
    if config.filters or config.where:
        decisions = evaluate_filters(con, list(config.filters), where=config.where)
        labels = [c for c in decisions.column_names if c not in ("uid", "sample_id")]
        passed = " AND ".join(f'coalesce(d."{label}", false)' for label in labels)
        join = f"JOIN sweep_decisions d USING (sample_id) WHERE {passed} AND"
        tables = {"sweep_decisions": decisions}
    else:
        join, tables = "WHERE", {}
        layout = samples_layout(con, paths)
        if layout.positional and len(layout.pool_files) > 1:
            scorer = [s for s in layout.scorers if score_column(s) == column]  # its parts only
            sources = [f"({samples_sql(paths, layout, chunk, scorer)})"
                       for chunk in part_chunks(layout, SCAN_CHUNKS, SCAN_CHUNK_ROWS)]
    captions = _caption_sql(con, paths)
    return [f'SELECT s."{column}" AS score, {captions}, s.sample_id FROM {source} s {join} '
            f's."{column}" IS NOT NULL AND NOT isnan(s."{column}")' for source in sources], tables


def _cursor(con: duckdb.DuckDBPyConnection,
            tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """A cursor on the run's database (to query from another thread) with ``tables``."""
    cursor = con.cursor()
    for name, table in tables.items():
        cursor.register(name, table)
    return cursor


@dataclass(frozen=True)
class _Candidates:
    """Every candidate's score (numeric; null and NaN scores are not candidates) and caption
    length (0 and False if null), and the uniform sample for the sampled stats."""

    scores: np.ndarray
    chars: np.ndarray
    has_text: np.ndarray
    sample: pa.Table | None


SAMPLE_MARGIN = 1.25  # draw rate over stats_sample / rows, so the draw rarely falls short


def _sample_rate(con: duckdb.DuckDBPyConnection, size: int) -> float:
    """The share of rows to draw so that about ``SAMPLE_MARGIN * size`` rows are drawn (the
    pool's row count, from the Parquet footers, bounds the candidates)."""
    rows = con.execute("SELECT count(*) FROM pool").fetchall()[0][0]
    return min(1.0, SAMPLE_MARGIN * size / rows) if rows else 1.0


def _drawn_captions(con: duckdb.DuckDBPyConnection, paths: RunPaths, size: int,
                    seed: int) -> pa.Table:
    """``sample_id`` and ``text`` of a seeded draw of pool rows, in sample_id order.

    A row is drawn when a hash of its row number in its part and ``seed`` falls under the
    rate: every row has the same chance, the same offsets are drawn in every part (a sample
    stratified by part), and DuckDB tests the hash inside the Parquet scan, decoding only the
    drawn captions."""
    cursor = con.cursor()  # runs beside the candidate scan
    cut = min(int(_sample_rate(cursor, size) * 2.0**64), 2**64 - 1)
    query = pool_rows_sql(paths, ["text"], f"hash(_row, {int(seed)}) <= {cut}::UBIGINT")
    drawn = cursor.sql(query).to_arrow_table()
    return drawn.take(pc.sort_indices(drawn.column("sample_id")))


def _uniform_sample(ids: np.ndarray, scores: np.ndarray, drawn: pa.Table, size: int,
                    seed: int) -> pa.Table:
    """The drawn rows that are candidates, with their scores, cut to ``size`` uniformly at
    random when more were drawn (seeded)."""
    wanted = drawn.column("sample_id").to_numpy()
    if not len(ids):
        return pa.table({"score": pa.array(scores[:0]), "text": drawn.column("text").slice(0, 0)})
    in_order = bool((ids[1:] > ids[:-1]).all())  # the usual case: no sort of every id
    sorter = None if in_order else np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids, wanted, sorter=sorter), len(ids) - 1)
    positions = at if sorter is None else sorter[at]
    found = ids[positions] == wanted
    rows, texts = positions[found], drawn.column("text").filter(pa.array(found))
    if len(rows) > size:
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size, replace=False))
        rows, texts = rows[keep], texts.take(pa.array(keep))
    return pa.table({"score": pa.array(scores[rows]), "text": texts})


def _load_candidates(con: duckdb.DuckDBPyConnection, paths: RunPaths, queries: list[str],
                     sample_size: int, seed: int,
                     tables: dict[str, pa.Table] | None = None) -> _Candidates:
    """One scan (``queries`` side by side, results in order) for scores and caption lengths as
    NumPy arrays (a few bytes per row, never the captions), then the captions of a seeded
    uniform sample of the candidates (``_drawn_captions``) when ``sample_size``."""

    def scan(query: str) -> dict[str, np.ndarray]:
        table = _cursor(con, tables or {}).sql(query).to_arrow_table()
        scores = table.column("score").to_numpy()
        return {"score": scores if scores.dtype.kind in "fiu" else scores.astype(np.float64),
                "chars": table.column("chars").to_numpy(),
                "has_text": table.column("has_text").to_numpy(zero_copy_only=False),
                "sample_id": table.column("sample_id").to_numpy()}

    with ThreadPoolExecutor(max_workers=1) as pool:  # the draw reads the pool while we scan
        drawn = pool.submit(_drawn_captions, con, paths, sample_size, seed) \
            if sample_size else None
        limit = con.execute("SELECT count(*) FROM pool").fetchall()[0][0]  # bounds candidates
        columns = _fill(ordered_map(scan, queries), limit, keep_ids=drawn is not None)
        sample = None
        if drawn is not None:
            sample = _uniform_sample(columns["sample_id"], columns["score"], drawn.result(),
                                     sample_size, seed)
    return _Candidates(columns["score"], columns["chars"], columns["has_text"], sample)


def _fill(chunks: Iterator[dict[str, np.ndarray]], limit: int,
          keep_ids: bool) -> dict[str, np.ndarray]:
    """The scanned chunks' columns written into arrays allocated once for ``limit`` rows and
    cut to the rows found (concatenating Arrow chunks, then converting, held every column twice;
    the sample ids only when ``keep_ids``)."""
    out: dict[str, np.ndarray] = {}
    filled = 0
    for chunk in chunks:
        if not keep_ids:
            del chunk["sample_id"]
        if not out:
            out = {name: np.empty(limit, dtype=values.dtype) for name, values in chunk.items()}
        rows = len(chunk["score"])
        if filled + rows > limit:
            raise RuntimeError(f"more candidates than the pool's {limit} rows")
        for name, values in chunk.items():
            if values.dtype != out[name].dtype:  # a later part stored another type
                out[name] = out[name].astype(np.result_type(out[name], values))
            out[name][filled:filled + rows] = values
        filled += rows
    return {name: values[:filled] for name, values in out.items()}


def fraction_thresholds(scores: np.ndarray, fractions: tuple[float, ...],
                        bins: ScoreBins | None = None) -> dict[float, float]:
    """DataComp's threshold per fraction: descending scores at index int(N * F) (clamped).

    Descending index i is ascending index N - 1 - i, an order statistic of ``bins`` (built
    from ``scores`` when not given).
    """
    total = len(scores)
    if not fractions or total == 0:
        return {}
    bins = bins if bins is not None else ScoreBins.build(scores)
    ascending = [total - 1 - min(int(total * f), total - 1) for f in fractions]
    values = bins.order_statistics(ascending)
    return {f: float(v) for f, v in zip(fractions, values, strict=True)}


def _exact_stats(candidates: _Candidates, bins: ScoreBins,
                 thresholds: list[float]) -> list[tuple]:
    """Kept count (``score >= t``) and mean caption length per threshold, exact."""
    if not thresholds:
        return []
    kept, (chars, texts) = bins.reached(thresholds, [candidates.chars, candidates.has_text])
    return [(int(k), float(c / n) if n else None)
            for k, c, n in zip(kept, chars, texts, strict=True)]


def _share_filters(con: duckdb.DuckDBPyConnection) -> tuple[ResolvedFilter, ResolvedFilter]:
    """The filters behind the sampled shares, resolved (language ID loads its model)."""
    return (
        FilterSpec("language", {"lang": "en"}).resolve(con),
        FilterSpec("text_match").resolve(con),
    )


def _sample_masks(
    filters: Future[tuple[ResolvedFilter, ResolvedFilter]], sample: pa.Table | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per sampled row, English or not and a class name or not (None without a sample)."""
    if sample is None or sample.num_rows == 0:
        return None
    english, matched = (f.mask(sample) for f in filters.result())
    return english, matched


def _sampled_shares(
    sample: pa.Table | None, masks: tuple[np.ndarray, np.ndarray] | None, thresholds: list[float]
) -> list[tuple[float | None, float | None]]:
    """English share and class-name match share among kept rows of a uniform sample."""
    if sample is None or masks is None:
        return [(None, None)] * len(thresholds)
    scores = sample.column("score").to_numpy()
    english, matched = masks
    shares = []
    for t in thresholds:
        kept = scores >= t
        count = int(kept.sum())
        shares.append((float(english[kept].mean()) if count else None,
                       float(matched[kept].mean()) if count else None))
    return shares


def _import_pyplot() -> None:
    import matplotlib.figure  # noqa: F401


def _plot(path: Path, table: pa.Table, edges: np.ndarray, counts: np.ndarray,
          column: str) -> None:
    # Figure directly, not pyplot: a sweep run from a notebook leaves its backend alone
    from matplotlib.figure import Figure

    thresholds = table.column("threshold").to_numpy()
    kept = table.column("kept_fraction").to_numpy()
    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    order = np.argsort(thresholds)
    left.plot(thresholds[order], kept[order], marker="o")
    left.set_xlabel(f"threshold on {column}")
    left.set_ylabel("kept fraction")
    left.set_title("kept fraction against threshold")
    left.grid(alpha=0.3)
    if len(counts):
        right.stairs(counts, edges, fill=True, alpha=0.6)
    # one collection for every threshold (a 100-point sweep drew 100 artists)
    right.vlines(thresholds, 0, 1, transform=right.get_xaxis_transform(), colors="crimson",
                 linestyles="--", linewidth=1)
    right.set_xlabel(column)
    right.set_ylabel("samples")
    right.set_title("score histogram, thresholds marked")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def _finished(name: str, column: str, target: Path, request: dict[str, Any]) -> SweepResult:
    """The existing sweep when made with the same settings from the same tables, else a
    UserError naming what differs."""
    record_file = target / SWEEP_RECORD
    if not record_file.is_file():
        raise UserError(f"sweep {target} exists; pass --overwrite or another --name")
    record = json.loads(record_file.read_text())
    refuse_other_settings(f"sweep {target}", record["request"], request,
                          "pass --overwrite or another --name")
    logger.info("sweep %s: made with the same settings, reused", name)
    return SweepResult(name, column, record["candidates"], pq.read_table(target / "sweep.parquet"),
                       target, sorted(p.name for p in target.iterdir()), reused=True)


def sweep(config: SweepConfig) -> SweepResult:
    """Compute the sweep table; write ``sweeps/<name>/sweep.parquet`` and ``sweep.png`` (one
    writer per sweep name: another stops with a message naming it)."""
    con = connect(config.run)
    column = resolve_score_column(con, config.by)
    name = config.name or column
    with run_output(config.run, f"sweep-{name}", f"sweep '{name}'") as pulled_again:
        if pulled_again:  # a run on S3: the tables may have changed under the views
            con = connect(config.run)
        return _sweep_into(config, con, column, name)


def _sweep_into(config: SweepConfig, con: Any, column: str, name: str) -> SweepResult:
    paths = RunPaths(config.run)
    target = paths.sweep_dir(name)
    request = {
        "column": column, "fractions": config.fractions, "thresholds": config.thresholds,
        "filters": [{"name": f.name, "params": dict(f.params)} for f in config.filters],
        "where": config.where, "stats_sample": config.stats_sample, "seed": config.seed,
        "plot": config.plot, "inputs": fingerprint_inputs(paths, table_names(config.run)),
    }
    if target.exists() and not config.overwrite:
        return _finished(name, column, target, request)
    check_replaceable(target, (SWEEP_RECORD, "sweep.parquet"), "sweep", "--name")
    queries, tables = _candidate_queries(con, config, column)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Python-heavy set-up (matplotlib's import, the language model) while DuckDB scans,
        # then language ID on the sample while NumPy bins and counts
        if config.plot:
            pool.submit(_import_pyplot)
        share_filters = pool.submit(_share_filters, con.cursor()) if config.stats_sample else None
        candidates = _load_candidates(con, RunPaths(config.run), queries, config.stats_sample,
                                      config.seed, tables)
        total = len(candidates.scores)
        if total == 0:
            raise UserError(f"no sample has a {column} value after the filters; nothing to sweep")
        sample = candidates.sample
        masks = pool.submit(_sample_masks, share_filters, sample) if share_filters else None
        bins = ScoreBins.build(candidates.scores)
        by_fraction = fraction_thresholds(candidates.scores, config.fractions, bins)
        rows = [(f, t) for f, t in by_fraction.items()] + [(None, t) for t in config.thresholds]
        thresholds = [t for _, t in rows]
        exact = _exact_stats(candidates, bins, thresholds)
        edges, counts = bins.histogram(HISTOGRAM_BINS)
        del candidates, bins
        shares = _sampled_shares(sample, masks.result() if masks else None, thresholds)
    table = pa.table({
        "fraction": pa.array([f for f, _ in rows], pa.float64()),
        "threshold": pa.array(thresholds, pa.float64()),
        "kept": pa.array([k for k, _ in exact], pa.int64()),
        "kept_fraction": pa.array([k / total for k, _ in exact], pa.float64()),
        "mean_caption_chars": pa.array([m for _, m in exact], pa.float64()),
        "english_share": pa.array([e for e, _ in shares], pa.float64()),
        "class_match_share": pa.array([c for _, c in shares], pa.float64()),
    })
    with staged_directory(target) as staging:
        pq.write_table(table, staging / "sweep.parquet")
        write_json_atomic(staging / SWEEP_RECORD, {"request": request, "candidates": total})
        if config.plot:
            _plot(staging / "sweep.png", table, edges, counts, column)
    return SweepResult(name, column, total, table, target,
                       sorted(p.name for p in target.iterdir()))
