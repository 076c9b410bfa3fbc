"""Trust, outputs: what a killed command left beside its output is removed the next time the
same command writes that output, and nothing else is touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.workspace import remove_stale_staging, staged_directory
from curate.select.subset import SelectConfig, select_subset


def test_stale_staging_beside_an_output_is_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "out"
    stale = [tmp_path / ".out.0123abcd.tmp", tmp_path / ".out.deadbeef.old",
             tmp_path / ".out.89abcdef.tmp"]
    stale[0].mkdir()
    (stale[0] / "half.parquet").write_text("half")
    stale[1].mkdir()
    stale[2].write_text("an atomic write that was killed")
    kept = [tmp_path / ".out.notours", tmp_path / ".other.0123abcd.tmp", tmp_path / "out2"]
    for path in kept:
        path.write_text("someone else's")
    with staged_directory(target) as staging:
        (staging / "new").write_text("new")
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "someone else's" for p in kept)
    assert (target / "new").read_text() == "new"
    assert remove_stale_staging(target) == 0


def test_select_cleans_what_a_killed_select_left(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    meta = tmp_path / "meta"
    meta.mkdir()
    uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(20)]
    pq.write_table(pa.table({"uid": uids, "url": ["http://127.0.0.1/x"] * 20,
                             "text": ["a cat"] * 20,
                             "clip_b32_similarity_score": rng.normal(size=20)}),
                   meta / "00000.parquet")
    ingest_pool(IngestConfig(pool=meta, run=tmp_path / "run"))
    left = tmp_path / "run" / "subsets" / ".top.0badc0de.tmp"
    left.mkdir(parents=True)
    select_subset(SelectConfig(run=tmp_path / "run", name="top", by="clip_b32_score",
                               fraction=0.5))
    assert not left.exists()
    assert sorted(p.name for p in (tmp_path / "run" / "subsets").iterdir()) == ["top"]
