"""The run workspace: where each table of a run lives, and atomic writes into it."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import UserError

RUN_FILE = "run.json"
SCORER_FILE = "_scorer.json"  # scores/<name>/_scorer.json: what made the scores
TABLE_FILE = "_table.json"  # scores/<name>/_table.json: a derived table (dedup, clusters)
DONE_DIR = "_done"  # scores/<name>/_done/part-NNNNN.json: completion records, written last
# A subset folder, RUN/subsets/NAME/ (written by select, read by export, evaluate, report, ...)
SUBSET_UIDS = "uids.npy"
SUBSET_MANIFEST = "manifest.parquet"
SUBSET_DROPPED = "dropped.parquet"
SUBSET_RECORD = "selection.json"


SCORER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # becomes SQL columns: <name>_score, ...
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # subsets, sweeps: one path component


def check_name(name: str, kind: str, pattern: re.Pattern[str] = OUTPUT_NAME) -> str:
    """``name`` when it is a valid name of ``kind`` (never a path: no '/', no '..' alone, no
    leading '.' or '-'), else a one-line error naming it."""
    if not isinstance(name, str) or not pattern.match(name) or name in {".", ".."}:
        allowed = ("lower-case letters, digits and '_', starting with a letter"
                   if pattern is SCORER_NAME else "letters, digits, '_', '.' and '-', "
                   "starting with a letter or digit")
        raise UserError(f"{kind} {name!r} is not a valid name (use {allowed})")
    return name


def check_apart(output: Path, inputs: Iterable[Path], option: str = "--out",
                inside_ok: Iterable[Path] = ()) -> None:
    """Refuse an output that is, contains or lies inside one of the command's inputs (with or
    without --overwrite): writing or replacing it would destroy what the command reads. An
    input in ``inside_ok`` (a run, whose own folders a stage writes by design) may hold it."""
    out = Path(output).resolve()
    workspaces = {Path(p).resolve() for p in inside_ok}
    for source in inputs:
        held = Path(source).resolve()
        inside = held in out.parents and held not in workspaces
        if out == held or inside or out in held.parents:
            relation = ("is" if out == held else "lies inside" if held in out.parents
                        else "contains")
            raise UserError(f"{option} {output} {relation} the input {source}; choose an "
                            "output apart from the inputs")


def check_replaceable(output: Path, markers: Iterable[str], command: str,
                      option: str = "--out") -> None:
    """With --overwrite, an existing non-empty output is replaced only when it holds one of
    ``markers`` (what ``filter-pool command`` writes there); anything else is left untouched."""
    out = Path(output)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if out.is_dir() and any((out / marker).exists() for marker in markers):
        return
    raise UserError(f"{option} {out} exists and was not made by `filter-pool {command}`; "
                    "--overwrite replaces only that command's own output, so it is left "
                    "untouched (choose another output)")


def part_name(shard_index: int) -> str:
    """File stem of the per-shard part for shard ``shard_index``: ``part-00042``."""
    return f"part-{shard_index:05d}"


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run directory (see DESIGN.md, "Run workspace")."""

    root: Path

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def pool_dir(self) -> Path:
        return self.root / "pool"

    def scores_dir(self, scorer: str) -> Path:
        return self.root / "scores" / check_name(scorer, "scorer", SCORER_NAME)

    def embeddings_dir(self, scorer: str) -> Path:
        return self.root / "embeddings" / check_name(scorer, "scorer", SCORER_NAME)

    def subset_dir(self, name: str) -> Path:
        """``RUN/subsets/NAME``: ``name`` must be a name, not a path."""
        return self.root / "subsets" / check_name(name, "subset")

    def sweep_dir(self, name: str) -> Path:
        return self.root / "sweeps" / check_name(name, "sweep")

    def pool_part(self, shard_index: int) -> Path:
        return self.pool_dir / f"{part_name(shard_index)}.parquet"

    def pool_parts(self) -> list[Path]:
        return sorted(self.pool_dir.glob("part-*.parquet"))

    def read_run(self) -> dict[str, Any]:
        """The run's record; a clear error when RUN is not an ingested run."""
        if not self.run_file.is_file():
            raise UserError(
                f"{self.root} is not a run (no {RUN_FILE}); create it with `filter-pool ingest`"
            )
        return json.loads(self.run_file.read_text())

    def pool_storage_options(self) -> dict[str, Any] | None:
        """The fsspec options of the run's pool when it lies on a URL (run.json keeps them,
        without secrets); None for a local pool or a folder that is not a run yet."""
        if not self.run_file.is_file():
            return None
        return json.loads(self.run_file.read_text())["source"].get("storage_options")


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; on success it replaces ``target``
    (the old one is moved aside first, then deleted), on failure it is removed. Staging and
    set-aside folders that a killed command left beside ``target`` are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    staging.mkdir()
    try:
        yield staging
        replace_directory(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def replace_directory(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` folder to ``target``; an existing ``target`` is moved
    aside first and deleted after (a kill in between leaves a ``.old`` that the next
    staged_directory of ``target`` removes)."""
    previous = None
    if target.exists():
        previous = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, previous)
    os.replace(staging, target)
    if previous is not None:
        shutil.rmtree(previous)


_STAGING_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.(tmp|old)$")


def remove_stale_staging(target: Path) -> int:
    """Delete ``.<name>.<8 hex>.tmp`` / ``.old`` siblings of ``target`` (what staged_directory
    and atomic_path leave when killed); return how many. Nothing else is touched."""
    removed = 0
    if target.parent.is_dir():
        for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):
            match = _STAGING_NAME.match(leftover.name)
            if match is None or match["target"] != target.name:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed += 1
    return removed


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, read in blocks (the file may be larger than memory allows)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def file_md5(path: Path | str) -> str:
    """MD5 of a file's bytes, read in blocks: what an object store's plain ETag holds."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def remove_stale_temporaries(directory: Path) -> int:
    """Delete leftovers of interrupted atomic writes in ``directory``; return how many."""
    removed = 0
    if directory.is_dir():
        for leftover in directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def setting_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: was X, now Y`` for every setting that differs (JSON-normalised: tuples are lists)."""
    recorded = json.loads(json.dumps(dict(recorded), default=str))
    current = json.loads(json.dumps(dict(current), default=str))
    return [
        f"{key}: was {recorded.get(key)!r}, now {current.get(key)!r}"
        for key in sorted(set(recorded) | set(current))
        if recorded.get(key) != current.get(key)
    ]


def refuse_other_settings(what: str, recorded: Mapping[str, Any], current: Mapping[str, Any],
                          hint: str = "pass --overwrite to replace it") -> None:
    """Reuse-when-identical: a finished output made with the same settings is reused by the
    caller; with other settings this raises a UserError naming each difference."""
    differences = setting_differences(recorded, current)
    if differences:
        raise UserError(f"{what} was made with other settings ({'; '.join(differences)}); {hint}")
