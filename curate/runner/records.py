"""Completion records: ``<done_dir>/<part>.json``, a shard's stats, written after its outputs."""

from __future__ import annotations

import json
from pathlib import Path

from curate.io.workspace import DONE_DIR, write_json_atomic
from curate.runner.stats import S, Stats


def record_path(output_dir: Path | str, part: str) -> Path:
    """Where the completion record of ``part`` lives: ``OUTPUT_DIR/_done/PART.json``."""
    return Path(output_dir) / DONE_DIR / f"{part}.json"


def write_record(path: Path | str, stats: Stats) -> None:
    """Write a shard's completion record (atomically); call it after its outputs are in place."""
    write_json_atomic(Path(path), stats.to_dict())


def read_record(path: Path | str, stats_type: type[S]) -> S | None:
    """The stats a completion record holds, or None when the shard has not finished."""
    path = Path(path)
    if not path.is_file():
        return None
    return stats_type.from_dict(json.loads(path.read_text()))
