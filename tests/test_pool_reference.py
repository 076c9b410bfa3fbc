"""Runs that reference DataComp metadata instead of copying it (issue 25): the run holds what
ingest derives, reads url/text/... from the metadata by row position, and refuses to read a
metadata file that moved or changed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.dedup.stage import DedupConfig, dedup_run
from curate.filters.registry import parse_filter_spec
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.pool_table import SourceChanged, pool_reference, read_pool_part
from curate.io.shards import PoolError
from curate.io.workspace import RunPaths
from curate.select.subset import SelectConfig, select_subset
from curate.select.sweep import SweepConfig, sweep
from curate.tables.views import connect, run_query
from tests.generators.datacomp import write_datacomp_metadata

runner = CliRunner()
QUERIES = ("SELECT * FROM pool", "SELECT * FROM samples", "SELECT * FROM clip_l14",
           "SELECT * FROM clip_b32", "DESCRIBE samples")


def _ingest(pool: Path, run: Path, copy: bool) -> Path:
    ingest_pool(IngestConfig(pool=pool, run=run, copy_pool=copy))
    return run


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    write_datacomp_metadata(tmp_path / "pool", num_files=3, rows_per_file=300, seed=3,
                            embed_dim_b32=8, embed_dim_l14=12)
    return tmp_path / "pool"


@pytest.fixture()
def runs(pool: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The same pool ingested twice: copied, referenced."""
    return _ingest(pool, tmp_path / "copied", True), _ingest(pool, tmp_path / "referenced", False)


def test_a_referencing_run_holds_only_what_ingest_derives(runs: tuple[Path, Path]) -> None:
    copied, referenced = runs
    assert pool_reference(copied) is None and pool_reference(referenced) is not None
    part = pq.read_schema(RunPaths(referenced).pool_part(0))
    assert set(part.names) == {"uid_high", "uid_low", "shard", "text_chars", "width", "height",
                               "status", "error_message"}
    assert not {"uid", "url", "text", "sha256"} & set(part.names)
    scores = pq.read_schema(RunPaths(referenced).scores_dir("clip_l14") / "part-00000.parquet")
    assert scores.names == ["clip_l14_score", "status", "error"]
    pool_bytes = {name: sum(f.stat().st_size for f in (run / "pool").iterdir())
                  for name, run in (("copied", copied), ("referenced", referenced))}
    assert pool_bytes["referenced"] < pool_bytes["copied"] / 3


def test_both_layouts_show_the_same_tables(runs: tuple[Path, Path]) -> None:
    copied, referenced = runs
    for query in QUERIES:
        assert run_query(referenced, query).equals(run_query(copied, query)), query
    for part in RunPaths(copied).pool_parts():
        other = RunPaths(referenced).pool_dir / part.name
        whole = pq.read_table(part)
        assert read_pool_part(other).equals(whole)
        assert read_pool_part(other, ["text", "uid_low", "uid"]).equals(
            whole.select(["text", "uid_low", "uid"]))


def test_both_layouts_select_and_dedup_the_same(runs: tuple[Path, Path]) -> None:
    filters = (parse_filter_spec("basic"),)
    sweeps = []
    for run in runs:
        select_subset(SelectConfig(run, name="top", by="clip_l14", fraction=0.3, filters=filters))
        dedup_run(DedupConfig(run, "exact"))
        sweeps.append(sweep(SweepConfig(run, by="clip_b32", fractions=(0.1, 0.5), plot=False,
                                        stats_sample=200)).table)
    assert sweeps[0].equals(sweeps[1])
    copied, referenced = (RunPaths(run).subset_dir("top") for run in runs)
    assert np.array_equal(np.load(copied / "uids.npy"), np.load(referenced / "uids.npy"))
    for name in ("manifest.parquet", "dropped.parquet"):
        assert pq.read_table(copied / name).equals(pq.read_table(referenced / name)), name
    query = "SELECT * FROM samples ORDER BY sample_id"
    assert run_query(runs[1], query).equals(run_query(runs[0], query))


def test_carried_and_renamed_columns_read_through(tmp_path: Path) -> None:
    """Columns the project does not know travel as they do when copied, renamed on a clash."""
    (tmp_path / "pool").mkdir()
    n = 50
    table = pa.table({
        "uid": [f"{i:032X}" for i in range(n)],  # upper case: the run's uids are lower-cased
        "url": [f"http://x/{i}.jpg" for i in range(n)],
        "text": [None if i % 7 == 0 else f"caption {i}" for i in range(n)],
        "original_width": pa.array(range(100, 100 + n), pa.int64()),
        "status": ["from the pool"] * n,  # clashes with a derived column: status_pool
        "licence": ["cc-by"] * n,
        "clip_l14_similarity_score": np.linspace(0, 1, n, dtype=np.float32),
    })
    pq.write_table(table, tmp_path / "pool" / "00000000.parquet")
    copied = _ingest(tmp_path / "pool", tmp_path / "copied", True)
    referenced = _ingest(tmp_path / "pool", tmp_path / "referenced", False)
    assert pool_reference(referenced) is not None
    for query in QUERIES[:3]:
        assert run_query(referenced, query).equals(run_query(copied, query)), query
    row = run_query(referenced, "SELECT uid, key, status, status_pool, licence, sha256 "
                                "FROM pool LIMIT 1").to_pylist()[0]
    assert row == {"uid": "0" * 32, "key": "0" * 32, "status": "success",
                   "status_pool": "from the pool", "licence": "cc-by", "sha256": None}


def test_a_column_that_does_not_cast_fails_ingest_naming_it(tmp_path: Path) -> None:
    (tmp_path / "pool").mkdir()
    table = pa.table({"uid": ["a" * 32], "url": ["u"], "text": ["t"],
                      "original_width": ["wide"]})
    pq.write_table(table, tmp_path / "pool" / "0.parquet")
    with pytest.raises(PoolError, match="0.parquet: column original_width cannot be read as "
                                        "int32"):
        _ingest(tmp_path / "pool", tmp_path / "run", False)
    assert not (tmp_path / "run").exists()


def test_a_changed_or_missing_metadata_file_is_refused_in_one_line(
        runs: tuple[Path, Path], pool: Path) -> None:
    _, referenced = runs
    source = sorted(pool.glob("*.parquet"))[1]
    rows = pq.read_table(source)
    pq.write_table(rows.slice(1).append_column("x", pa.array(range(rows.num_rows - 1))), source)
    for args in (["query", str(referenced), "SELECT count(*) FROM pool"],
                 ["select", str(referenced), "--out", "s", "--by", "clip_l14",
                  "--fraction", "0.5"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert "\n" not in message and f"{source} changed since ingest" in message
    with pytest.raises(SourceChanged):
        read_pool_part(RunPaths(referenced).pool_part(1), ["text"])
    assert read_pool_part(RunPaths(referenced).pool_part(1), ["status"]).num_rows == 300
    source.unlink()
    result = runner.invoke(app, ["query", str(referenced), "SELECT 1"])
    assert result.exit_code == 2 and f"{source}: the metadata file" in result.output


def test_a_touched_file_with_the_same_bytes_is_still_refused(runs: tuple[Path, Path],
                                                              pool: Path) -> None:
    """Size and modification time are the fingerprint: rewriting a file counts as a change."""
    source = sorted(pool.glob("*.parquet"))[0]
    stat = source.stat()
    os.utime(source, (stat.st_atime, stat.st_mtime + 10))
    with pytest.raises(SourceChanged, match="changed since ingest"):
        connect(runs[1])


def test_a_run_naming_a_file_outside_its_pool_is_refused(runs: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """run.json may come from someone else: a shard pointing outside the pool is not read."""
    _, referenced = runs
    outside = tmp_path / "elsewhere.parquet"
    shutil.copy(sorted((tmp_path / "pool").glob("*.parquet"))[0], outside)
    record = json.loads((referenced / "run.json").read_text())
    record["shards"][0]["parquet"] = str(tmp_path / "pool" / ".." / "elsewhere.parquet")
    record["shards"][0]["fingerprint"]["parquet"] = {"size": outside.stat().st_size,
                                                     "mtime": outside.stat().st_mtime}
    (referenced / "run.json").write_text(json.dumps(record))
    with pytest.raises(SourceChanged, match="outside the pool"):
        connect(referenced)
    with pytest.raises(SourceChanged, match="outside the pool"):
        read_pool_part(RunPaths(referenced).pool_part(0), ["url"])


def test_ingest_keeps_a_run_in_the_layout_it_was_made_in(runs: tuple[Path, Path],
                                                         pool: Path) -> None:
    copied, referenced = runs
    ingest_pool(IngestConfig(pool=pool, run=referenced))  # finished: nothing to do
    with pytest.raises(PoolError, match="referenced, this ingest would have them copied"):
        ingest_pool(IngestConfig(pool=pool, run=referenced, copy_pool=True))
    result = runner.invoke(app, ["ingest", str(pool), "--run", str(copied)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    ingest_pool(IngestConfig(pool=pool, run=copied, overwrite=True))
    assert pool_reference(copied) is not None
    assert run_query(copied, QUERIES[1]).equals(run_query(referenced, QUERIES[1]))


def test_a_scorer_view_without_uids_takes_them_from_the_pool(runs: tuple[Path, Path]) -> None:
    """Row-aligned score parts carry no uid; the scorer's view joins it from the pool, by
    position, or by (part, row) when a part is missing."""
    copied, referenced = runs
    for run in runs:
        (run / "scores" / "clip_b32" / "part-00001.parquet").unlink()
    query = "SELECT * FROM clip_b32"
    table = run_query(referenced, query)
    assert table.num_rows == 600 and table.equals(run_query(copied, query))
    uids = run_query(referenced, "SELECT uid FROM pool").column("uid").to_pylist()
    assert table.column("uid").to_pylist() == uids[:300] + uids[600:]
