"""Trust, full disks and bad paths: a write that fails (EFBIG under a file size limit, the
same path as ENOSPC), an output whose parent is a file: one line naming the path, a non-zero
exit, no partial output, no traceback. Runs the real CLI in a subprocess with RLIMIT_FSIZE."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest.stage import IngestConfig, ingest_pool

CLI = Path(sys.executable).parent / "filter-pool"


def _metadata(folder: Path, rows: int = 3000) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(rows)]
    pq.write_table(pa.table({
        "uid": uids, "url": [f"http://127.0.0.1/{u}.jpg" for u in uids],
        "text": [f"caption number {i} of a long enough text" for i in range(rows)],
        "clip_b32_similarity_score": rng.normal(size=rows)}), folder / "00000.parquet")
    return folder


def _limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([str(CLI), *args], capture_output=True, text=True, preexec_fn=preexec,
                          timeout=120)


@pytest.mark.parametrize("command", ["ingest", "select"])
def test_a_write_that_fails_is_one_line_and_leaves_nothing(tmp_path: Path, command: str) -> None:
    meta = _metadata(tmp_path / "meta")
    run = tmp_path / "run"
    if command == "ingest":
        args, output = ["ingest", str(meta), "--run", str(run)], run
    else:
        ingest_pool(IngestConfig(pool=meta, run=run))
        args = ["select", str(run), "--out", "top", "--by", "clip_b32", "--fraction", "0.9"]
        output = run / "subsets" / "top"
    before = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    result = _limited(args, 16 * 1024)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "too large" in lines[0].lower()
    assert not output.exists()
    after = sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert after == before  # no file added: nothing half-written


def test_an_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    meta = _metadata(tmp_path / "meta", rows=10)
    (tmp_path / "file").write_text("a file, not a folder")
    result = CliRunner().invoke(app, ["ingest", str(meta), "--run", str(tmp_path / "file" / "run")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert str(tmp_path / "file") in result.stderr
