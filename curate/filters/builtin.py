"""DataComp's rules as filters: caption length, image size, aspect ratio, score cuts, basic.

Exactly DataComp's ``baselines`` semantics (mlfoundations/datacomp): words are
``len(text.split())``, characters ``len(text)``; sizes are ``original_width`` and
``original_height``; ``fraction`` keeps ``score >= sorted_descending[int(N * F)]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import UserError
from curate.filters.registry import (
    Batch,
    FilterSpec,
    Param,
    at_least,
    existing_file,
    register_composite,
    register_filter,
)
from curate.filters.sqltext import RE2_NONSPACE, RE2_SPACE, double, floats, ident, strings
from curate.io.schema import canonical_score_column
from curate.tables.views import aligned_source

logger = logging.getLogger(__name__)

MAX_WORDS = 100  # RE2 repetition bound for the SQL form of min_words
NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _words_check(value: int) -> str | None:
    return None if 0 <= value <= MAX_WORDS else f"must be between 0 and {MAX_WORDS}"


def _caption_sql(p: Mapping[str, Any]) -> str:
    words = p["min_words"]
    rules = ["text IS NOT NULL", f"length(text) >= {p['min_chars']}"]
    if words > 0:
        repeat = f"(?:{RE2_NONSPACE}+{RE2_SPACE}+){{{words - 1}}}" if words > 1 else ""
        rules.append(f"regexp_matches(text, '^{RE2_SPACE}*{repeat}{RE2_NONSPACE}')")
    return " AND ".join(rules)


@register_filter(
    "caption_length",
    params=[
        Param("min_words", int, 3, "keep captions with at least this many words "
              "(len(text.split()))", check=_words_check),
        Param("min_chars", int, 6, "keep captions with at least this many characters",
              check=at_least(0)),
    ],
    columns=("text",),
    sql=_caption_sql,
)
def caption_length(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Caption has at least min_words words and min_chars characters (DataComp: > 2 and > 5)."""
    words, chars = p["min_words"], p["min_chars"]
    return np.fromiter(
        (t is not None and len(t) >= chars and len(t.split()) >= words
         for t in strings(batch, "text")),
        dtype=bool,
    )


SIZE_COLUMNS = ("original_width", "original_height", "width", "height")
_ORIGINAL_MISSING = "original_width IS NULL OR original_height IS NULL"
SQL_W = f"(CASE WHEN {_ORIGINAL_MISSING} THEN width ELSE original_width END)"
SQL_H = f"(CASE WHEN {_ORIGINAL_MISSING} THEN height ELSE original_height END)"


def _sides(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(w, h) as float64: original sizes, or width/height where either original is null."""
    ow, oh, w, h = (floats(batch, c) for c in SIZE_COLUMNS)
    original = ~(np.isnan(ow) | np.isnan(oh))
    return np.where(original, ow, w), np.where(original, oh, h)


@register_filter(
    "image_size",
    params=[Param("min_side", int, 200, "keep images whose shorter side is at least this",
                  check=at_least(0))],
    columns=SIZE_COLUMNS,
    sql=lambda p: f"{SQL_W} >= {p['min_side']} AND {SQL_H} >= {p['min_side']}",
)
def image_size(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Shorter side of the original image >= min_side (width/height when original_* is null)."""
    w, h = _sides(batch)
    return np.minimum(w, h) >= p["min_side"]


@register_filter(
    "aspect_ratio",
    params=[Param("max_ratio", float, 3.0, "keep images with longer/shorter side at most this",
                  check=at_least(1.0))],
    columns=SIZE_COLUMNS,
    sql=lambda p: (f"(CASE WHEN {SQL_W} >= {SQL_H} THEN CAST({SQL_W} AS DOUBLE) / {SQL_H} "
                   f"ELSE CAST({SQL_H} AS DOUBLE) / {SQL_W} END) <= {double(p['max_ratio'])}"),
)
def aspect_ratio(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """max(w, h) / min(w, h) <= max_ratio over the original size (DataComp: 3.0)."""
    w, h = _sides(batch)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(w, h) / np.minimum(w, h) <= p["max_ratio"]


def score_column(con: Any, column: str, filter_name: str) -> str:
    """``column`` (or ``column_score``) as a numeric column of ``samples``; UserError naming
    the score columns otherwise."""
    column = canonical_score_column(column)  # DataComp's clip_l14_similarity_score too
    if con is None:
        return column
    types = {row[0]: str(row[1]) for row in con.execute("DESCRIBE samples").fetchall()}
    for candidate in (column, f"{column}_score"):
        if candidate in types:
            if not types[candidate].upper().startswith(NUMERIC_TYPES):
                raise UserError(f"{filter_name}: column '{candidate}' is {types[candidate]}, "
                                "not a number")
            return candidate
    scores = ", ".join(c for c in types if c.endswith("_score")) or "none"
    raise UserError(f"{filter_name}: unknown column '{column}'; score columns: {scores}")


def _at_least_sql(column: str, threshold: float) -> str:
    value = f"CAST({ident(column)} AS DOUBLE)"
    return f"{value} >= {double(threshold)} AND NOT isnan({value})"


def _at_least_mask(batch: Batch, column: str, threshold: float | None) -> np.ndarray:
    values = floats(batch, column)
    if threshold is None:
        return np.zeros(len(values), dtype=bool)
    return values >= threshold


def _not_nan(value: float) -> str | None:
    return "must be a number" if math.isnan(value) else None


def _resolve_threshold(con: Any, p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "column": score_column(con, p["column"], "threshold")}


@register_filter(
    "threshold",
    params=[
        Param("column", str, None, "score column (dfn or dfn_score)", required=True),
        Param("min", float, None, "keep samples with column >= min", required=True,
              check=_not_nan),
    ],
    columns=lambda p: (p["column"],),
    sql=lambda p: _at_least_sql(p["column"], p["min"]),
    resolve=_resolve_threshold,
)
def threshold(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Keep samples whose score is >= min (null and NaN fail)."""
    return _at_least_mask(batch, p["column"], p["min"])


NUMPY_EXACT_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                               "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE"})


def fraction_threshold(con: Any, column: str, fraction: float) -> tuple[float | None, int, int]:
    """DataComp's threshold for keeping ``fraction`` of the non-null values of ``column``:
    the value at index ``int(N * F)`` of the values sorted descending (null and NaN are not
    among the N). One scan of the column into NumPy and an order statistic
    (``numpy.partition``, no sort); a column NumPy cannot hold exactly (DECIMAL, HUGEINT)
    goes through DuckDB's top-N instead. Returns (threshold or None if N = 0, N, index)."""
    col = ident(column)
    valid = f"{col} IS NOT NULL AND NOT isnan(CAST({col} AS DOUBLE))"
    source = aligned_source(con, [column])  # a scorer's column: its parts alone
    relation = con.sql(f"SELECT {col} AS v FROM {source} WHERE {valid}")
    exact = str(relation.types[0]) in NUMPY_EXACT_TYPES
    # DuckDB's NumPy result is one array of its own (Arrow's to_numpy would load pandas)
    array = np.asarray(relation.fetchnumpy()["v"]) if exact else None
    total = len(array) if exact else \
        con.execute(f"SELECT count(*) FROM {source} WHERE {valid}").fetchall()[0][0]
    if total == 0:
        return None, 0, 0
    index = min(int(total * fraction), total - 1)  # F = 1 keeps every non-null value
    ascending = total - 1 - index
    if exact:
        if not array.flags.writeable:
            array = array.copy()
        array.partition(ascending)
        return float(array[ascending]), int(total), int(total * fraction)
    from_top = index <= ascending
    offset, order = (index, "DESC") if from_top else (ascending, "ASC")
    value = con.execute(
        f"SELECT {col} FROM {source} WHERE {valid} ORDER BY {col} {order} LIMIT 1 OFFSET {offset}"
    ).fetchall()[0][0]
    return float(value), int(total), int(total * fraction)


def _resolve_fraction(con: Any, p: dict[str, Any]) -> dict[str, Any]:
    if con is None:
        raise UserError("fraction: needs the samples table to find its threshold")
    column = score_column(con, p["column"], "fraction")
    value, total, index = fraction_threshold(con, column, p["fraction"])
    logger.info("fraction %s of %s: threshold %s (index %d of %d non-null values)",
                p["fraction"], column, value, index, total)
    return {**p, "column": column, "threshold": value, "count": total, "index": index}


def _fraction_check(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@register_filter(
    "fraction",
    params=[
        Param("column", str, None, "score column (dfn or dfn_score)", required=True),
        Param("fraction", float, None, "keep this top fraction of the non-null scores "
              "(DataComp --fraction; ties kept)", required=True, check=_fraction_check),
    ],
    columns=lambda p: (p["column"],),
    sql=lambda p: "false" if p["threshold"] is None else _at_least_sql(p["column"],
                                                                      p["threshold"]),
    resolve=_resolve_fraction,
)
def fraction(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Keep the top fraction of scores: >= sorted-descending score at index int(N * F)."""
    return _at_least_mask(batch, p["column"], p["threshold"])


@register_composite(
    "basic",
    params=[
        Param("fasttext_model", Path, None, "fastText lid.176.bin for the language rule "
              "(DataComp's exact model); default: the packaged py3langid model",
              check=existing_file),
        Param("min_side", int, 200, "image_size's shorter-side minimum (DataComp: 200; lower it "
              "for pools of small images)", check=at_least(0)),
    ],
)
def basic(p: Mapping[str, Any]) -> list[FilterSpec]:
    """DataComp's basic filter: caption_length, image_size, aspect_ratio, then language en."""
    language = {"fasttext_model": p["fasttext_model"]} if p["fasttext_model"] else {}
    size = {"min_side": p["min_side"]} if p["min_side"] != 200 else {}
    return [FilterSpec("caption_length"), FilterSpec("image_size", size),
            FilterSpec("aspect_ratio"), FilterSpec("language", language)]
