"""Completion records: ``<done_dir>/<part>.json``, a shard's stats, written after its outputs.

A record may also name the ``attempt`` that wrote it (one token per run of a stage), so that a
second execution of the same job within that run can tell the shard is already done.
"""

from __future__ import annotations

import json
from pathlib import Path

from curate.io.workspace import DONE_DIR, write_json_atomic
from curate.runner.stats import S, Stats


def record_path(output_dir: Path | str, part: str) -> Path:
    """Where the completion record of ``part`` lives: ``OUTPUT_DIR/_done/PART.json``."""
    return Path(output_dir) / DONE_DIR / f"{part}.json"


def write_record(path: Path | str, stats: Stats, attempt: str | None = None) -> None:
    """Write a shard's completion record (atomically); call it after its outputs are in place."""
    payload = stats.to_dict()
    if attempt is not None:
        payload["attempt"] = attempt
    write_json_atomic(Path(path), payload)


def read_record(path: Path | str, stats_type: type[S], attempt: str | None = None) -> S | None:
    """The stats a completion record holds, or None when the shard has not finished (with
    ``attempt``: None too when the record was written by another attempt)."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = json.loads(path.read_text())
    if attempt is not None and payload.get("attempt") != attempt:
        return None
    return stats_type.from_dict(payload)
