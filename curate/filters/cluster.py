"""The ``image_based`` filter: keep the samples that ``filter-pool cluster`` kept (caption
pre-filter passed and nearest centroid in the target set), read from ``<name>_keep``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.compute as pc

from curate.errors import UserError
from curate.filters.registry import Batch, Param, register_filter
from curate.filters.sqltext import ident
from curate.io.workspace import SCORER_NAME


def _name_check(value: str) -> str | None:
    return None if SCORER_NAME.match(value) else "must be a table name (a-z, 0-9, _)"


def _resolve(con: Any, p: dict[str, Any]) -> dict[str, Any]:
    column = f"{p['name']}_keep"
    if con is not None:
        columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
        if column not in columns:
            raise UserError(f"image_based: the run has no cluster table '{p['name']}' (column "
                            f"{column}); make it with `filter-pool cluster RUN --name "
                            f"{p['name']} --centroids FILE|--clusters K --reference FILE`")
    return p


@register_filter(
    "image_based",
    params=[Param("name", str, "image_based", "the cluster table written by `filter-pool "
                  "cluster --name`", check=_name_check)],
    columns=lambda p: (f"{p['name']}_keep",),
    sql=lambda p: ident(f"{p['name']}_keep"),
    resolve=_resolve,
)
def image_based(batch: Batch, p: Mapping[str, Any]) -> np.ndarray:
    """DataComp's image-based filter: keep samples in a target cluster (filter-pool cluster)."""
    column = pc.fill_null(batch.column(f"{p['name']}_keep"), False)
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)
