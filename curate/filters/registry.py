"""The filter registry, configured filters (``FilterSpec``) and their resolved form.

A filter is a pure function ``mask(batch, params) -> np.ndarray[bool]`` (True = keep) over an
Arrow batch holding the columns it declares, optionally also said as a SQL boolean expression
over the ``samples`` view (evaluation prefers the SQL), and optionally with a ``resolve`` step
that prepares what the rule needs once (a global threshold, a loaded model, a compiled
pattern) before any batch is seen. A composite filter (``basic``) is an AND of other filters.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from curate.errors import UserError

Batch = pa.Table | pa.RecordBatch
MaskFn = Callable[[Batch, Mapping[str, Any]], np.ndarray]
SqlFn = Callable[[Mapping[str, Any]], str]
ResolveFn = Callable[[Any, dict[str, Any]], dict[str, Any]]
PartsFn = Callable[[Mapping[str, Any]], "list[FilterSpec]"]
Columns = tuple[str, ...] | Callable[[Mapping[str, Any]], tuple[str, ...]]

PARAM_TYPES = {int: "int", float: "float", str: "str", Path: "path"}


@dataclass(frozen=True)
class Param:
    """One parameter of a filter: ``check`` returns what is wrong with a value, or None."""

    name: str
    type: type
    default: Any = None
    help: str = ""
    required: bool = False
    check: Callable[[Any], str | None] | None = None

    @property
    def type_name(self) -> str:
        return PARAM_TYPES[self.type]

    def convert(self, value: Any, where: str) -> Any:
        """``value`` (a CLI string or a Python value) as this parameter's type, or UserError."""
        converted = _convert(self.type, value)
        problem = "must be " + _A[self.type] if converted is None else None
        if problem is None and self.check is not None:
            problem = self.check(converted)
        if problem is not None:
            raise UserError(f"{where}: {self.name} {problem}, got {value!r}")
        return converted


_A = {int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _convert(kind: type, value: Any) -> Any:
    if isinstance(value, bool):
        return None
    try:
        if kind is int:
            if isinstance(value, float):
                return int(value) if value.is_integer() else None
            return int(value) if isinstance(value, int | str) else None
        if kind is float:
            return float(value) if isinstance(value, int | float | str) else None
        if kind is str:
            return value if isinstance(value, str) else None
        if kind is Path:
            return str(Path(value).expanduser()) if isinstance(value, str | Path) else None
    except (ValueError, OverflowError):
        return None
    raise TypeError(f"unsupported parameter type {kind}")


def at_least(low: float) -> Callable[[Any], str | None]:
    """A check: a finite value >= ``low``."""
    return lambda v: None if math.isfinite(v) and v >= low else f"must be >= {low}"


def existing_file(value: str) -> str | None:
    """A check: the path names an existing file."""
    return None if Path(value).is_file() else "must name an existing file"


@dataclass(frozen=True)
class Filter:
    """A registry entry: what ``list_filters()`` shows and what evaluation calls."""

    name: str
    description: str
    params: tuple[Param, ...]
    mask: MaskFn | None = None
    columns: Columns = ()
    sql: SqlFn | None = None
    resolve: ResolveFn | None = None
    parts: PartsFn | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise UserError(f"filter {self.name} has no parameter '{name}'; parameters: {known}")


_REGISTRY: dict[str, Filter] = {}


def _describe(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def _add(entry: Filter) -> None:
    if entry.name in _REGISTRY:
        raise ValueError(f"filter {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry


def register_filter(
    name: str,
    *,
    params: Sequence[Param] = (),
    columns: Columns = (),
    sql: SqlFn | None = None,
    resolve: ResolveFn | None = None,
) -> Callable[[MaskFn], MaskFn]:
    """Register the decorated ``mask(batch, params)`` under ``name``; its docstring's first
    line is the description. ``sql(params)`` gives the same rule as a SQL expression."""

    def decorate(fn: MaskFn) -> MaskFn:
        _add(Filter(name, _describe(fn), tuple(params), fn, columns, sql, resolve))
        return fn

    return decorate


def register_composite(name: str, *, params: Sequence[Param] = ()) -> Callable[[PartsFn], PartsFn]:
    """Register the decorated ``parts(params) -> [FilterSpec, ...]``: keep when all parts keep;
    a dropped sample's reason is its first failing part."""

    def decorate(fn: PartsFn) -> PartsFn:
        _add(Filter(name, _describe(fn), tuple(params), parts=fn))
        return fn

    return decorate


def get_filter(name: str) -> Filter:
    """The registered filter ``name``; UserError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown filter '{name}'{hint}; known filters: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_filters() -> list[Filter]:
    """Every registered filter, by name: ``.name``, ``.description``, ``.params`` (each with
    ``name``, ``type_name``, ``default``, ``help``, ``required``)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


@dataclass(frozen=True)
class FilterCatalog:
    """The registered filters and their parameters, as ``filter-pool filters`` shows them."""

    filters: list[Filter]

    def to_dict(self) -> dict[str, Any]:
        return {
            "filters": [
                {
                    "name": f.name,
                    "description": f.description,
                    "params": [
                        {"name": p.name, "type": p.type_name, "default": p.default,
                         "help": p.help, "required": p.required}
                        for p in f.params
                    ],
                }
                for f in self.filters
            ]
        }

    def text(self) -> str:
        lines = []
        for entry in self.to_dict()["filters"]:
            lines.append(f"{entry['name']}: {entry['description']}")
            lines += [
                f"    {p['name']} ({p['type']}{', required' if p['required'] else ''}"
                f"{'' if p['default'] is None else ', default ' + str(p['default'])}): "
                f"{p['help']}"
                for p in entry["params"]
            ]
        return "\n".join(lines)


def describe_filters() -> FilterCatalog:
    """Every registered filter with its parameters (``filter-pool filters``)."""
    return FilterCatalog(list_filters())


def _format_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class FilterSpec:
    """A configured filter: a registered name and the parameters the user gave (validated and
    converted on construction; unknown name, parameter or bad value raise UserError)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        entry = get_filter(self.name)
        given = {key: entry.param(key).convert(value, self.name)
                 for key, value in dict(self.params).items()}
        ordered = {p.name: given[p.name] for p in entry.params if p.name in given}
        missing = [p.name for p in entry.params if p.required and p.name not in given]
        if missing:
            raise UserError(f"filter {self.name} needs {', '.join(missing)} "
                            f"(e.g. {self.name}:{missing[0]}=...)")
        object.__setattr__(self, "params", ordered)

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.params.items())))

    @property
    def filter(self) -> Filter:
        return get_filter(self.name)

    @property
    def label(self) -> str:
        """``name`` or ``name(key=value, ...)`` with the given parameters: the drop reason."""
        if not self.params:
            return self.name
        inner = ", ".join(f"{k}={_format_value(v)}" for k, v in self.params.items())
        return f"{self.name}({inner})"

    @property
    def values(self) -> dict[str, Any]:
        """Every parameter's value: the given ones, defaults for the rest."""
        return {p.name: self.params.get(p.name, p.default) for p in self.filter.params}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record: name, label and every parameter's value."""
        return {"name": self.name, "label": self.label, "params": self.values}

    def columns(self) -> tuple[str, ...] | None:
        """The columns of ``samples`` it reads, known before it is resolved; None when that
        cannot be told without resolving it."""
        entry = self.filter
        try:
            if entry.parts is not None:
                parts = [spec.columns() for spec in entry.parts(self.values)]
                if any(p is None for p in parts):
                    return None
                return tuple(dict.fromkeys(c for p in parts for c in p or ()))
            columns = entry.columns
            return tuple(columns(self.values) if callable(columns) else columns)
        except Exception:  # a rule whose columns need resolved values: tell it by resolving
            return None

    def resolve(self, con: Any = None) -> ResolvedFilter:
        """Run the filter's resolve step (and its parts') against ``con`` (a DuckDB
        connection with a ``samples`` view; None when the filter needs no table)."""
        entry = self.filter
        values = self.values
        if entry.parts is not None:
            parts = tuple(spec.resolve(con) for spec in entry.parts(values))
            return ResolvedFilter(self, values, parts)
        if entry.resolve is not None:
            values = entry.resolve(con, dict(values))
        return ResolvedFilter(self, values)


@dataclass(frozen=True)
class ResolvedFilter:
    """A filter ready to run: every parameter's value plus what resolve added (keys that start
    with ``_`` are objects for the mask, such as a loaded model; others go into provenance)."""

    spec: FilterSpec
    params: Mapping[str, Any]
    parts: tuple[ResolvedFilter, ...] = ()

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns of ``samples`` the Python mask reads."""
        if self.parts:
            return tuple(dict.fromkeys(c for part in self.parts for c in part.columns))
        columns = self.spec.filter.columns
        return columns(self.params) if callable(columns) else columns

    @property
    def sql(self) -> str | None:
        """The rule as a SQL boolean (null counts as False), or None if it is Python-only."""
        if self.parts:
            sqls = [part.sql for part in self.parts]
            if any(s is None for s in sqls):
                return None
            return "(" + " AND ".join(sqls) + ")"  # type: ignore[arg-type]
        fn = self.spec.filter.sql
        return None if fn is None else f"coalesce(({fn(self.params)}), false)"

    def mask(self, batch: Batch) -> np.ndarray:
        """Boolean keep-mask over ``batch``; a composite runs each part only where the earlier
        parts kept the sample."""
        if not self.parts:
            fn = self.spec.filter.mask
            assert fn is not None
            return np.asarray(fn(batch, self.params), dtype=bool)
        keep = np.ones(batch.num_rows, dtype=bool)
        for part in self.parts:
            alive = np.flatnonzero(keep)
            if alive.size == 0:
                break
            sub = batch if alive.size == batch.num_rows else batch.take(pa.array(alive))
            keep[alive] = part.mask(sub)
        return keep

    def describe(self) -> dict[str, Any]:
        """The spec's record plus resolved values (e.g. the threshold a fraction gave)."""
        record = self.spec.describe()
        given = record["params"]
        resolved = {k: v for k, v in self.params.items()
                    if not k.startswith("_") and (k not in given or given[k] != v)}
        if resolved:
            record["resolved"] = resolved
        if self.parts:
            record["parts"] = [part.describe() for part in self.parts]
        return record


def parse_filter_spec(text: str) -> FilterSpec:
    """``NAME`` or ``NAME:key=value,key=value`` (the CLI form) as a validated FilterSpec."""
    name, sep, rest = text.strip().partition(":")
    name = name.strip()
    form = "expected NAME or NAME:key=value,..."
    if not name:
        raise UserError(f"bad filter '{text}': {form}")
    params: dict[str, str] = {}
    if sep:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise UserError(f"bad filter '{text}': '{item.strip()}' is not key=value")
            if key in params:
                raise UserError(f"bad filter '{text}': {key} given twice")
            params[key] = value.strip()
    return FilterSpec(name, params)
