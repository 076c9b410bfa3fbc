"""``dedup``: keep the representatives (and unique samples) of a dedup table.

``dedup:level=phash`` reads ``dedup_phash_keep`` (``filter-pool dedup RUN --level phash``
makes it); ``name=`` picks a table made with ``--name``. Rows the table could not hash
(keep is null) are dropped like any null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import UserError
from curate.filters.registry import Batch, Param, register_filter
from curate.filters.sqltext import ident
from curate.io.workspace import SCORER_NAME

LEVELS = ("exact", "phash", "semantic")


def _level_check(value: str) -> str | None:
    return None if value in LEVELS else f"must be one of {', '.join(LEVELS)}"


def _name_check(value: str) -> str | None:
    return None if SCORER_NAME.match(value) else "must be lower-case letters, digits and '_'"


def _table(p: Mapping[str, Any]) -> str:
    return p["name"] or f"dedup_{p['level']}"


def _keep_column(p: Mapping[str, Any]) -> str:
    return f"{_table(p)}_keep"


def _resolve(con: Any, p: dict[str, Any]) -> dict[str, Any]:
    if con is not None:
        columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
        if _keep_column(p) not in columns:
            name = f" --name {p['name']}" if p["name"] else ""
            raise UserError(f"dedup: the run has no dedup table '{_table(p)}'; make it with "
                            f"`filter-pool dedup RUN --level {p['level']}{name}`")
    return p


@register_filter(
    "dedup",
    params=[
        Param("level", str, None, "exact, phash or semantic", required=True, check=_level_check),
        Param("name", str, None, "the table's --name (default dedup_<level>)",
              check=_name_check),
    ],
    columns=lambda p: (_keep_column(p),),
    sql=lambda p: ident(_keep_column(p)),
    resolve=_resolve,
)
def dedup(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """Keep one representative per duplicate group (a `filter-pool dedup` table's keep)."""
    column = pc.fill_null(pc.cast(batch.column(_keep_column(p)), pa.bool_()), False)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)
