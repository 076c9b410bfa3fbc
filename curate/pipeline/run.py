"""Run a recipe: its stages in order, each resumable, the whole recorded in the run.

The record is ``RUN/recipes/<name>-<digest>.json`` (RUN: the recipe's ``run`` variable or
``--run``; digest: of the resolved stages): the recipe's text, its variables, and per stage
its resolved settings, status (``done``, ``ran``, ``skipped``, ``failed``), seconds and
summary, rewritten after every stage. A stage whose settings the record (or another record of
the same recipe in RUN/recipes/) shows finished is not run again: it is ``done``. Otherwise its
library function runs; a finished output of the same settings is reused (``done``), a killed one
resumes. ``dry_run`` resolves and checks everything, reports what is done and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from curate.errors import UserError
from curate.io.workspace import write_json_atomic
from curate.pipeline.recipe import (
    Recipe,
    RecipeError,
    ResolvedStage,
    load_recipe,
    resolve_stages,
    resolve_variables,
)
from curate.pipeline.stages import get_stage_kind

logger = logging.getLogger(__name__)

RECIPES_DIR = "recipes"  # RUN/recipes/<name>-<digest>.json
FINISHED = ("done", "ran")


@dataclass
class StageReport:
    """One stage of a recipe run."""

    id: str
    kind: str
    status: str  # done, ran, skipped, failed, pending (dry run)
    settings: dict[str, Any]
    digest: str
    seconds: float = 0.0
    text: str = ""
    summary: dict[str, Any] | None = None
    error: str | None = None

    def line(self) -> str:
        detail = self.text or self.error or ""
        return f"{self.status:<7} {self.id} ({self.kind}){': ' + detail if detail else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "status": self.status,
                "settings": self.settings, "digest": self.digest, "seconds": self.seconds,
                "text": self.text, "summary": self.summary, "error": self.error}


@dataclass
class RecipeResult:
    """A recipe run (or its plan): per stage what happened, and where it is recorded."""

    name: str
    path: Path
    record: Path
    variables: dict[str, Any]
    stages: list[StageReport] = field(default_factory=list)
    dry_run: bool = False
    stages_shown: bool = False  # each stage's line was reported as it ended (on_stage)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)

    def stage(self, stage_id: str) -> StageReport:
        return next(s for s in self.stages if s.id == stage_id)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.stages:
            counts[s.status] = counts.get(s.status, 0) + 1
        return counts

    def final_line(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts().items())
        if self.dry_run:
            return f"plan of recipe '{self.name}': {len(self.stages)} stages ({counts}); " \
                   "nothing run"
        state = "finished" if self.ok else "FAILED"
        return f"recipe '{self.name}' {state}: {counts}; record {self.record}"

    def text(self) -> str:
        if self.stages_shown and not self.dry_run:
            return self.final_line()
        lines = []
        for s in self.stages:
            lines.append(s.line())
            if self.dry_run:
                lines += [f"    {k} = {json.dumps(v)}" for k, v in s.settings.items()]
        return "\n".join([*lines, self.final_line()])

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.name, "file": str(self.path), "record": str(self.record),
                "dry_run": self.dry_run, "ok": self.ok, "variables": self.variables,
                "stages": [s.to_dict() for s in self.stages]}


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished_digests(recipes_dir: Path, name: str) -> dict[str, dict[str, Any]]:
    """Stage digest -> its finished entry, over every record of this recipe in the run."""
    finished: dict[str, dict[str, Any]] = {}
    for path in sorted(recipes_dir.glob(f"{name}-*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for entry in record.get("stages", []):
            if entry.get("status") in FINISHED and entry.get("digest"):
                finished[entry["digest"]] = entry
    return finished


def _with_progress(stage: ResolvedStage, progress: bool | None) -> dict[str, Any]:
    settings = dict(stage.settings)
    if progress is not None and "progress" in get_stage_kind(stage.kind).params:
        settings.setdefault("progress", progress)
    return settings


def run_recipe(
    path: Path | str,
    overrides: Mapping[str, Any] | None = None,
    *,
    dry_run: bool = False,
    progress: bool | None = None,
    on_stage: Callable[[StageReport], None] | None = None,
) -> RecipeResult:
    """Run (or with ``dry_run`` plan) the recipe at ``path`` with ``overrides`` of its
    variables; ``progress`` sets the stages' progress bars unless the recipe does;
    ``on_stage`` is called after each stage. A stage raising UserError is recorded as failed
    and the error re-raised naming the stage; a stage reporting failure stops the recipe."""
    recipe = load_recipe(path)
    variables = resolve_variables(recipe, dict(overrides or {}))
    stages = resolve_stages(recipe, variables)
    run = variables.get("run")
    if not isinstance(run, str) or not run:
        raise RecipeError(f"{recipe.path}: the recipe has no 'run' variable (where it is "
                          "recorded); pass --run RUN")
    plan_digest = _digest([recipe.name, [s.to_dict() for s in stages]])
    recipes_dir = Path(run) / RECIPES_DIR
    record = recipes_dir / f"{recipe.name}-{plan_digest}.json"
    result = RecipeResult(recipe.name, recipe.path, record, variables, dry_run=dry_run,
                          stages_shown=on_stage is not None)
    finished = _finished_digests(recipes_dir, recipe.name)
    for stage in stages:
        digest = _digest([stage.kind, dict(stage.settings)])
        report = StageReport(stage.id, stage.kind, "pending", dict(stage.settings), digest)
        if stage.skip:
            report.status = "skipped"
        elif digest in finished:
            report.status = "done"
            report.summary = finished[digest].get("summary")
            report.text = finished[digest].get("text", "")
        result.stages.append(report)
    if dry_run:
        for report in result.stages:
            if on_stage:
                on_stage(report)
        return result
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for stage, report in zip(stages, result.stages, strict=True):
        if report.status == "pending":
            _run_stage(stage, report, progress)
            _write_record(result, recipe, started)
        if on_stage:
            on_stage(report)
        if report.status == "failed":
            if report.summary is None:  # raised: one line naming the stage
                raise UserError(f"recipe {recipe.name}, stage {stage.id} ({stage.kind}): "
                                f"{report.error}; fix it and run the recipe again to resume")
            break
    _write_record(result, recipe, started)
    return result


def _run_stage(stage: ResolvedStage, report: StageReport, progress: bool | None) -> None:
    kind = get_stage_kind(stage.kind)
    logger.info("recipe stage %s (%s): %s", stage.id, stage.kind, dict(stage.settings))
    begin = time.perf_counter()
    try:
        outcome = kind.run(_with_progress(stage, progress))
    except UserError as exc:
        report.status, report.error = "failed", str(exc)
        report.seconds = round(time.perf_counter() - begin, 1)
        return
    report.seconds = round(time.perf_counter() - begin, 1)
    report.summary = json.loads(json.dumps(outcome.summary, default=str))
    report.text = outcome.text
    report.status = ("done" if outcome.reused else "ran") if outcome.ok else "failed"
    if not outcome.ok:
        report.error = outcome.text


def _write_record(result: RecipeResult, recipe: Recipe, started: str) -> None:
    write_json_atomic_mkdir(result.record, {
        "recipe": recipe.name,
        "description": recipe.description,
        "file": str(recipe.path.resolve()),
        "text": recipe.text,
        "variables": result.variables,
        "started": started,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stages": [s.to_dict() for s in result.stages],
    })


def write_json_atomic_mkdir(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)
