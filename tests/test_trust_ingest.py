"""Trust, inputs and outputs of ingest: all or nothing, one line naming the bad file, exit 2;
a run never overlaps its pool; --overwrite replaces only a run that ingest made."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest.stage import IngestConfig, ingest_pool
from tests.generators.datacomp import write_datacomp_metadata
from tests.generators.synthetic import SyntheticPool

runner = CliRunner()


def _rewrite(parquet: Path, change: Callable[[pa.Table], pa.Table]) -> None:
    pq.write_table(change(pq.read_table(parquet)), parquet)


def _replace(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


BREAKAGES = {
    "wrong_type": lambda p: _rewrite(p, lambda t: _replace(
        t, "width", pa.array(["wide"] * t.num_rows))),
    "non_utf8_caption": lambda p: _rewrite(p, lambda t: _replace(
        t, "caption", pa.array([b"\xff\xfe caption"] * t.num_rows, pa.binary()))),
    "malformed_parquet": lambda p: p.write_bytes(b"PAR1 this is not parquet PAR1"),
    "missing_column": lambda p: _rewrite(p, lambda t: t.drop_columns(["url"])),
}


def _ingest(pool: Path, run: Path, *extra: str):
    return runner.invoke(app, ["ingest", str(pool), "--run", str(run), *extra])


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_bad_shard_anywhere_leaves_no_run(tmp_path: Path, pool: SyntheticPool,
                                             breakage: str) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(pool.root, bad)
    last = sorted(bad.glob("*.parquet"))[-1]  # the earlier shards ingest fine first
    BREAKAGES[breakage](last)
    run = tmp_path / "run"
    result = _ingest(bad, run)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and str(last) in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no run, no staging
    assert _ingest(pool.root, run).exit_code == 0  # the good pool, the same path
    assert len(list((run / "pool").glob("part-*.parquet"))) == 3


def test_a_broken_datacomp_npz_leaves_no_run(tmp_path: Path) -> None:
    files = write_datacomp_metadata(tmp_path / "meta", num_files=2, rows_per_file=20,
                                    embed_dim_b32=8, embed_dim_l14=8)
    npz = files[1].with_suffix(".npz")
    npz.write_bytes(npz.read_bytes()[:100])
    result = _ingest(tmp_path / "meta", tmp_path / "run")
    assert result.exit_code == 2 and str(npz) in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.ingest").exists()


def test_a_killed_ingest_resumes_and_a_stale_one_is_replaced(tmp_path: Path,
                                                             pool: SyntheticPool) -> None:
    staging = tmp_path / ".run.ingest"
    staging.mkdir()
    (staging / "_ingest.json").write_text('{"source": "/elsewhere"}')
    (staging / "junk").write_text("left by a killed ingest of another pool")
    assert _ingest(pool.root, tmp_path / "run").exit_code == 0
    assert not staging.exists() and not (tmp_path / "run" / "junk").exists()


@pytest.mark.parametrize("where", ["same", "inside", "above"])
def test_a_run_that_overlaps_its_pool_is_refused(tmp_path: Path, pool: SyntheticPool,
                                                  where: str) -> None:
    copy = tmp_path / "data" / "pool"
    shutil.copytree(pool.root, copy)
    before = sorted(p.name for p in copy.iterdir())
    run = {"same": copy, "inside": copy / "run", "above": tmp_path / "data"}[where]
    for extra in ([], ["--overwrite"]):
        result = _ingest(copy, run, *extra)
        assert result.exit_code == 2 and "the pool" in result.stderr
    assert sorted(p.name for p in copy.iterdir()) == before


def test_overwrite_never_deletes_a_folder_ingest_did_not_make(tmp_path: Path,
                                                              pool: SyntheticPool) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = _ingest(pool.root, precious, "--overwrite")
    assert result.exit_code == 2 and "left untouched" in result.stderr
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_overwrite_of_a_run_with_other_outputs_is_refused(tmp_path: Path,
                                                          pool: SyntheticPool) -> None:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=pool.root, run=run))
    (run / "subsets" / "mine").mkdir(parents=True)
    other = tmp_path / "other"
    shutil.copytree(pool.root, other)
    result = _ingest(other, run, "--overwrite")
    assert result.exit_code == 2 and "subsets" in result.stderr
    assert (run / "subsets" / "mine").is_dir()
    shutil.rmtree(run / "subsets")
    assert _ingest(other, run, "--overwrite").exit_code == 0
    assert str(other.resolve()) in (run / "run.json").read_text()
