"""Recipes: TOML files of stages in order (``pipelines/*.toml``), parsed and validated.

    name = "dfn_filter"                      # optional; default the file's stem
    description = "..."                      # optional
    [vars]                                   # defaults; ``--set key=value`` overrides
    out = "dfn-run"
    run = "{out}/run"                        # a recipe records itself in {run}/recipes/
    [[stage]]
    kind = "score"                           # a stage kind: the CLI command's name
    id = "score-dfn"                         # optional; default "<n>-<kind>"
    run = "{run}"                            # the command's settings, named as its options
    model = "{out}/dfn"

A value that is exactly ``"{name}"`` takes the variable's value with its type; inside a longer
string ``{name}`` is replaced by its text (``{{`` and ``}}`` are literal braces). Every
problem is one line naming the file and the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from curate.errors import UserError
from curate.pipeline.stages import get_stage_kind

TOP_LEVEL_KEYS = ("name", "description", "vars", "stage")
STAGE_KEYS = ("kind", "id", "skip")  # besides the kind's own settings
VARIABLE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_VARIABLE_DEPTH = 10


class RecipeError(UserError):
    """A recipe that cannot be read, validated or resolved: ``FILE:LINE: problem``."""


@dataclass(frozen=True)
class StageSpec:
    """One ``[[stage]]`` as written (values may hold ``{variables}``)."""

    index: int
    kind: str
    id: str
    settings: Mapping[str, Any]
    skip: Any
    line: int
    key_lines: Mapping[str, int]


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe."""

    path: Path
    name: str
    description: str
    vars: Mapping[str, Any]
    stages: tuple[StageSpec, ...]
    text: str

    def error(self, line: int, problem: str) -> RecipeError:
        return RecipeError(f"{self.path}:{line}: {problem}")


@dataclass(frozen=True)
class ResolvedStage:
    """A stage with every variable replaced and its settings checked against its kind."""

    spec: StageSpec
    settings: Mapping[str, Any]
    skip: bool

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "settings": dict(self.settings),
                "skip": self.skip}


def _stage_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """(first, end) line indexes of each ``[[stage]]`` block, in order."""
    headers = [i for i, line in enumerate(lines) if re.match(r"^\s*\[\[\s*stage\s*\]\]", line)]
    tables = [i for i, line in enumerate(lines) if re.match(r"^\s*\[", line)]
    blocks = []
    for start in headers:
        end = next((t for t in tables if t > start), len(lines))
        blocks.append((start, end))
    return blocks


def _key_line(lines: list[str], start: int, end: int, key: str) -> int | None:
    """1-based line of ``key = ...`` between ``start`` and ``end`` (0-based), else None."""
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for i in range(start, end):
        if pattern.match(lines[i]):
            return i + 1
    return None


def load_recipe(path: Path | str) -> Recipe:
    """Read and validate ``path``: known top-level keys, stage kinds and each kind's settings."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)"
        found = re.search(r"at line (\d+)", str(exc))
        line = found.group(1) if found else len(text.splitlines()) or 1  # "at end of document"
        where = f"{path}:{line}"
        raise RecipeError(f"{where}: invalid TOML ({exc})") from exc
    lines = text.splitlines()
    blocks = _stage_blocks(lines)
    first_table = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("[")),
                       len(lines))
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            line = _key_line(lines, 0, first_table, key) or _table_line(lines, key) or 1
            raise RecipeError(f"{path}:{line}: unknown key '{key}' (a recipe has "
                              f"{', '.join(TOP_LEVEL_KEYS)})")
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise RecipeError(f"{path}:{_table_line(lines, 'vars') or 1}: [vars] must be a table")
    raw_stages = data.get("stage", [])
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError(f"{path}:1: a recipe needs at least one [[stage]] with a kind")
    if len(blocks) != len(raw_stages):  # written another way ([[stage]] is the documented form)
        blocks = [(0, len(lines))] * len(raw_stages)
    stages, ids = [], set()
    for index, (raw, (start, end)) in enumerate(zip(raw_stages, blocks, strict=True)):
        header = start + 1
        kind = raw.get("kind")
        if not isinstance(kind, str):
            raise RecipeError(f"{path}:{header}: stage {index + 1} has no kind")
        kind_line = _key_line(lines, start, end, "kind") or header
        entry = get_stage_kind(kind, f"{path}:{kind_line}")
        settings, key_lines = {}, {}
        for key, value in raw.items():
            line = _key_line(lines, start, end, key) or header
            if key in STAGE_KEYS:
                continue
            name = key.replace("-", "_")
            if name not in entry.params:
                raise RecipeError(f"{path}:{line}: unknown key '{key}' for stage kind '{kind}' "
                                  f"(its settings: {', '.join(entry.params)})")
            settings[name], key_lines[name] = value, line
        missing = [p for p in entry.required if p not in settings]
        if missing:
            raise RecipeError(f"{path}:{header}: stage '{kind}' needs {', '.join(missing)}")
        stage_id = raw.get("id", f"{index + 1}-{kind}")
        if not isinstance(stage_id, str) or not NAME.match(stage_id) or stage_id in ids:
            line = _key_line(lines, start, end, "id") or header
            raise RecipeError(f"{path}:{line}: stage id {stage_id!r} must be a unique name "
                              "(letters, digits, '_', '-', '.')")
        ids.add(stage_id)
        key_lines["skip"] = _key_line(lines, start, end, "skip") or header
        stages.append(StageSpec(index, kind, stage_id, settings, raw.get("skip", False), header,
                                key_lines))
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not NAME.match(name):
        raise RecipeError(f"{path}:{_key_line(lines, 0, first_table, 'name') or 1}: "
                          f"name {name!r}: use letters, digits, '_', '-' and '.'")
    return Recipe(path, name, str(data.get("description", "")), variables, tuple(stages), text)


def _table_line(lines: list[str], table: str) -> int | None:
    for i, line in enumerate(lines):
        if re.match(rf"^\s*\[\s*{re.escape(table)}\s*\]", line):
            return i + 1
    return None


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``: the value as TOML (``640``, ``true``, ``[0, 1]``,
    ``"a b"``), else the plain string."""
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
        raise UserError(f"--set '{text}': expected key=value")
    try:
        return key, tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key, value


def _substitute(value: Any, variables: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, list):
        return [_substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, where) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    whole = VARIABLE.fullmatch(value)
    if whole and whole.group(1):
        name = whole.group(1)
        if name not in variables:
            raise RecipeError(f"{where}: unknown variable '{{{name}}}' (pass --set {name}=...)")
        return variables[name]

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in variables:
            raise RecipeError(f"{where}: unknown variable '{{{name}}}' (pass --set {name}=...)")
        found = variables[name]
        return found if isinstance(found, str) else json.dumps(found)

    return VARIABLE.sub(replace, value)


def resolve_variables(recipe: Recipe, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``[vars]`` with ``overrides`` applied; variables may use other variables."""
    unknown = [k for k in overrides if k not in recipe.vars and
               not re.search(r"\{" + re.escape(k) + r"\}", recipe.text)]
    if unknown:
        raise RecipeError(f"{recipe.path}: --set {unknown[0]}: the recipe has no variable "
                          f"'{unknown[0]}' (its variables: {', '.join(recipe.vars) or 'none'})")
    variables = {**recipe.vars, **overrides}
    lines = recipe.text.splitlines()
    vars_start = (_table_line(lines, "vars") or 1) - 1
    for _ in range(MAX_VARIABLE_DEPTH):
        resolved = {}
        for key, value in variables.items():
            line = _key_line(lines, vars_start, len(lines), key) or vars_start + 1
            where = f"{recipe.path}:{line}" if key not in overrides else f"--set {key}"
            resolved[key] = _substitute(value, variables, where)
        if resolved == variables:
            return resolved
        variables = resolved
    raise RecipeError(f"{recipe.path}:{vars_start + 1}: [vars] refer to each other in a loop")


def resolve_stages(recipe: Recipe, variables: Mapping[str, Any]) -> list[ResolvedStage]:
    """Every stage with its variables replaced and its settings type-checked."""
    stages = []
    for spec in recipe.stages:
        entry = get_stage_kind(spec.kind, f"{recipe.path}:{spec.line}")
        settings = {}
        for key, value in spec.settings.items():
            where = f"{recipe.path}:{spec.key_lines[key]}"
            settings[key] = entry.check(key, _substitute(value, variables, where), where)
        skip = _substitute(spec.skip, variables, f"{recipe.path}:{spec.key_lines['skip']}")
        if not isinstance(skip, bool):
            raise RecipeError(f"{recipe.path}:{spec.key_lines['skip']}: skip must be true or "
                              f"false, got {skip!r}")
        stages.append(ResolvedStage(spec, settings, skip))
    return stages
