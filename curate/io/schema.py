"""Arrow schemas of the run's tables (DESIGN.md, "Run workspace")."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from curate.io.uids import uids_to_array

POOL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("uid_high", pa.uint64()),
        ("uid_low", pa.uint64()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("text_chars", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


# Derived at ingest, not read from the source: the caption's length in Unicode code points
# (Python's len, DuckDB's length), null when the caption is. A sweep's mean caption length
# reads these 4 bytes per row instead of every caption.
TEXT_CHARS = "text_chars"


# DataComp's names for its precomputed scores, accepted wherever a score column is asked for
# (select, sweep, report, recipes): ingest stores them as the score tables clip_l14, clip_b32.
SCORE_COLUMN_ALIASES = {
    "clip_l14_similarity_score": "clip_l14_score",
    "clip_b32_similarity_score": "clip_b32_score",
}


def canonical_score_column(name: str) -> str:
    """DataComp's column name to ours (``clip_l14_similarity_score`` -> ``clip_l14_score``)."""
    return SCORE_COLUMN_ALIASES.get(name, name)


# Derived at ingest: the uid as DataComp's pair (int(uid[:16], 16), int(uid[16:], 16)), the
# values a subset's uids.npy holds. A select reads these 16 bytes per row instead of parsing
# every kept uid's 32 hex characters.
UID_HIGH, UID_LOW = "uid_high", "uid_low"


# Names the project derives or reserves in a run's views: DuckDB's read_parquet options
# (filename, file_row_number), the (part, row) identity and the derived pool columns. A pool
# column with one of these names, or ending like a scorer's columns, is renamed at ingest.
RESERVED_COLUMNS = frozenset({"sample_id", "filename", "file_row_number", "_part", "_row",
                              "uid_high", "uid_low", "text_chars", "shard"})
# A table a stage adds under RUN/scores/<name>/ (a scorer, dedup, clustering, a head) has uid,
# status, error and columns named <name>_<field> for these fields only; ``samples`` carries them.
TABLE_FIELDS = ("score", "keep", "group", "group_size", "reason", "cluster", "similarity",
                "distance")
SCORER_SUFFIXES = ("_status", "_error", *(f"_{field}" for field in TABLE_FIELDS))
RENAME_SUFFIX = "_pool"


def clash_renames(carried: list[str], taken: list[str]) -> dict[str, str]:
    """New names for pool columns carried into the run (``carried``) that would clash with a
    reserved or derived name, or with a column already ``taken``; DuckDB compares names
    without case, so this does too. Renamed columns get ``_pool`` appended (again if needed)."""
    used = {name.lower() for name in taken}
    renames: dict[str, str] = {}
    for name in carried:
        lower = name.lower()
        clashes = (lower in RESERVED_COLUMNS or lower.endswith(SCORER_SUFFIXES)
                   or lower in used)
        new = name
        while clashes:
            new += RENAME_SUFFIX
            lower = new.lower()
            clashes = lower in RESERVED_COLUMNS or lower in used
        if new != name:
            renames[name] = new
        used.add(new.lower())
    return renames


RENAMED_KEY = b"curate.renamed_columns"  # pool part metadata: {source name: run name}


def with_renames(table: pa.Table, renames: dict[str, str]) -> pa.Table:
    """``table`` recording ``renames`` in its schema metadata (kept in its Parquet footer)."""
    if not renames:
        return table
    metadata = {**(table.schema.metadata or {}), RENAMED_KEY: json.dumps(renames).encode()}
    return table.replace_schema_metadata(metadata)


def read_renames(schema: pa.Schema) -> dict[str, str]:
    """The renames a pool part's schema records."""
    raw = (schema.metadata or {}).get(RENAMED_KEY)
    return json.loads(raw) if raw else {}


def uid_halves(uids: pa.Array | pa.ChunkedArray) -> dict[str, pa.Array]:
    """``uid_high`` and ``uid_low`` for a column of (checked, non-null) uids."""
    pairs = uids_to_array(uids)
    return {UID_HIGH: pa.array(pairs["f0"]), UID_LOW: pa.array(pairs["f1"])}


def text_chars(text: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """``text_chars`` for a caption column."""
    return pc.utf8_length(text.cast(pa.string())).cast(pa.int32())


def score_column(scorer: str) -> str:
    """Name of a scorer's score column: ``dfn`` gives ``dfn_score``."""
    return f"{scorer}_score"


def score_schema(scorer: str) -> pa.Schema:
    """Schema of ``scores/<scorer>/part-NNNNN.parquet``."""
    return pa.schema(
        [
            ("uid", pa.string()),
            (score_column(scorer), pa.float32()),
            ("status", pa.string()),
            ("error", pa.string()),
        ]
    )


def table_field_columns(name: str, columns: list[str]) -> list[str]:
    """The columns of table ``name`` that ``samples`` carries: ``<name>_<field>`` for the
    fields in ``TABLE_FIELDS``, in the order given."""
    wanted = {f"{name}_{field}" for field in TABLE_FIELDS}
    return [column for column in columns if column in wanted]


def check_table_schema(name: str, schema: pa.Schema) -> None:
    """Refuse a derived table whose columns are not uid, status, error and ``<name>_<field>``
    columns, at least one (anything else could shadow a pool column in ``samples``)."""
    allowed = {"uid", "status", "error"}
    extra = [c for c in schema.names if c not in allowed and not table_field_columns(name, [c])]
    if extra or not table_field_columns(name, schema.names):
        raise ValueError(f"table {name}: columns {extra} are not <name>_<field> for a field in "
                         f"{', '.join(TABLE_FIELDS)}")
