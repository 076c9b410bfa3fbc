"""The stage-kind registry: a kind is a function whose keyword parameters are its settings.

A kind's function builds the stage's own config dataclass from the settings, calls the stage's
library function and returns a :class:`StageOutcome`. Parameter names are the CLI command's
option names (``--batch-size`` is ``batch_size``; a recipe may write ``batch-size``); their
annotations are what a recipe's values are checked against; parameters without a default are
required. Kinds register with :func:`register_stage` (the engine's in
``curate.pipeline.builtin``; the toy world's in ``curate.toyworld.stages``).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from curate.errors import UserError


@dataclass
class StageOutcome:
    """What one stage did: its library summary (``to_dict``), a line of text, whether it
    failed (exit 1, the recipe stops) and whether the library reused a finished output."""

    summary: dict[str, Any]
    text: str
    ok: bool = True
    reused: bool = False


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind: its function and settings (name -> annotation, default)."""

    name: str
    function: Callable[..., StageOutcome]
    params: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    description: str = ""

    @property
    def required(self) -> list[str]:
        return [k for k, (_, default) in self.params.items() if default is inspect.Parameter.empty]

    def check(self, key: str, value: Any, where: str) -> Any:
        """``value`` converted to the setting's type; a UserError naming ``where`` if it is not
        one."""
        hint = self.params[key][0]
        try:
            return _convert(value, hint)
        except (TypeError, ValueError):
            raise UserError(f"{where}: {key} = {value!r}: expected {_type_name(hint)}") from None

    def run(self, settings: dict[str, Any]) -> StageOutcome:
        return self.function(**settings)


_KINDS: dict[str, StageKind] = {}


StageFunction = Callable[..., StageOutcome]


def register_stage(name: str) -> Callable[[StageFunction], StageFunction]:
    """Register ``function`` as stage kind ``name`` (its keyword parameters are the settings)."""

    def decorate(function: StageFunction) -> StageFunction:
        hints = typing.get_type_hints(function)
        params = {
            p.name: (hints.get(p.name, Any), p.default)
            for p in inspect.signature(function).parameters.values()
        }
        doc = (function.__doc__ or "").strip().splitlines()
        _KINDS[name] = StageKind(name, function, params, doc[0] if doc else "")
        return function

    return decorate


def get_stage_kind(name: str, where: str = "recipe") -> StageKind:
    """The registered kind ``name``; a UserError naming ``where`` and the known kinds."""
    if name not in _KINDS:
        known = ", ".join(sorted(_KINDS))
        raise UserError(f"{where}: unknown stage kind '{name}' (known: {known})")
    return _KINDS[name]


def list_stage_kinds() -> list[StageKind]:
    return [_KINDS[k] for k in sorted(_KINDS)]


def _convert(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option)
            except (TypeError, ValueError):
                continue
        raise TypeError(value)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # the CLI's comma-separated form
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise TypeError(value)
        return [_convert(v, item) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(value)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(value)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(value)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(value)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(hint, str(hint))
