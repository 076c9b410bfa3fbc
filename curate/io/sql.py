"""SQL quoting shared by every module that builds DuckDB statements from names and values."""

from __future__ import annotations


def ident(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A SQL string literal (DuckDB reads backslashes literally)."""
    return "'" + value.replace("'", "''") + "'"
