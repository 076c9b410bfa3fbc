"""Arrow schemas of the run's tables (DESIGN.md, "Run workspace")."""

from __future__ import annotations

import pyarrow as pa

POOL_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("shard", pa.string()),
        ("key", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("original_width", pa.int32()),
        ("original_height", pa.int32()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


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
