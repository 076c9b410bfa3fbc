"""Rendering and writing query results: table, csv, json or parquet, to stdout or a file."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from curate.errors import UserError

FORMATS = ("table", "csv", "json", "parquet")


def _render(result: pa.Table, output_format: str) -> bytes:
    if output_format == "csv":
        buffer = io.BytesIO()
        pacsv.write_csv(result, buffer)
        return buffer.getvalue()
    if output_format == "json":
        return (json.dumps(result.to_pylist(), default=str, indent=1) + "\n").encode()
    if output_format == "parquet":
        buffer = io.BytesIO()
        pq.write_table(result, buffer)
        return buffer.getvalue()
    with pl.Config(tbl_rows=50, tbl_cols=-1, fmt_str_lengths=60):
        return (str(pl.from_arrow(result)) + "\n").encode()


def write_result(result: pa.Table, output_format: str, out: Path | None,
                 overwrite: bool = False) -> str | None:
    """Write ``result`` to ``out`` atomically and return None, or return it as text."""
    if output_format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got '{output_format}'")
    if output_format == "parquet" and out is None:
        raise UserError("--format parquet needs --out FILE")
    payload = _render(result, output_format)
    if out is None:
        return payload.decode().rstrip("\n")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, out)
    return None
