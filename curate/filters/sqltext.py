"""Helpers shared by the filters: SQL quoting, whitespace classes, Arrow column access."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.io.sql import ident, literal  # noqa: F401  (the filters' quoting)

# Every character for which str.isspace() holds: what str.split() splits on (DataComp counts
# words with len(text.split())). tests/test_filters.py checks this list against Python.
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def re2_char(ch: str) -> str:
    """One character as an RE2 class member: ``\\x{..}``."""
    return f"\\x{{{ord(ch):x}}}"


def py_char(ch: str) -> str:
    """One character as a Python ``re`` class member: ``\\U........``."""
    return f"\\U{ord(ch):08x}"


RE2_SPACE = "[" + "".join(re2_char(c) for c in WHITESPACE) + "]"
RE2_NONSPACE = "[^" + RE2_SPACE[1:]
PY_SPACE = "[" + "".join(py_char(c) for c in WHITESPACE) + "]"


def double(value: float) -> str:
    """A SQL DOUBLE literal that round-trips ``value`` exactly (also inf and -inf)."""
    return f"CAST('{float(value)!r}' AS DOUBLE)"


def floats(batch: pa.Table | pa.RecordBatch, name: str) -> np.ndarray:
    """Column ``name`` as float64 with NaN for null."""
    column = pc.cast(batch.column(name), pa.float64())
    return np.asarray(pc.fill_null(column, np.nan).to_numpy(zero_copy_only=False))


def strings(batch: pa.Table | pa.RecordBatch, name: str) -> list[str | None]:
    """Column ``name`` as Python strings (None for null)."""
    return batch.column(name).to_pylist()
