"""Trust, pool columns: a pool column that clashes with a name filter-pool derives or reserves
is renamed at ingest (and reported), never shadows a derived column, and loses no values."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.uids import read_uid_file
from curate.tables.views import connect
from tests.generators.synthetic import SyntheticPool

runner = CliRunner()
ROWS = 40
HOSTILE = {  # column: values that must survive, under a new name
    "sample_id": lambda n: list(range(1000, 1000 + n)),
    "filename": lambda n: ["evil.parquet"] * n,
    "file_row_number": lambda n: [7] * n,
    "uid_high": lambda n: [0] * n,
    "text_chars": lambda n: [-1] * n,
    "clip_b32_score": lambda n: [9.0] * n,
    "dfn_status": lambda n: ["ok"] * n,
    "clip_l14_error": lambda n: ["x"] * n,
    "STATUS": lambda n: ["shadow"] * n,
}


def _hostile_metadata(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(ROWS)]
    columns = {
        "uid": uids, "url": [f"http://127.0.0.1/{u}.jpg" for u in uids],
        "text": ["a photo of a dog"] * ROWS,
        "original_width": [300] * ROWS, "original_height": [200] * ROWS,
        "clip_b32_similarity_score": rng.normal(0.3, 0.05, ROWS),
        "clip_l14_similarity_score": rng.normal(0.2, 0.05, ROWS),
        "sha256": ["0" * 64] * ROWS,
        **{name: make(ROWS) for name, make in HOSTILE.items()},
    }
    pq.write_table(pa.table(columns), folder / "00000.parquet")
    return folder


def test_clashing_metadata_columns_are_renamed_and_reported(tmp_path: Path) -> None:
    folder = _hostile_metadata(tmp_path / "meta")
    result = runner.invoke(app, ["ingest", str(folder), "--run", str(tmp_path / "run"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    renamed = json.loads(result.stdout)["renamed_columns"]
    assert set(renamed) == set(HOSTILE)
    assert all(new == old + "_pool" for old, new in renamed.items())
    con = connect(tmp_path / "run")
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    assert len(columns) == len({c.lower() for c in columns})  # nothing shadowed or doubled
    row = con.execute("SELECT sample_id, clip_b32_score, text_chars, uid_high, status, "
                      "sample_id_pool, clip_b32_score_pool, text_chars_pool, uid_high_pool, "
                      "filename_pool, STATUS_pool FROM samples ORDER BY sample_id LIMIT 1"
                      ).fetchone()
    assert row[0] == 0 and row[1] < 1.0 and row[2] == len("a photo of a dog")
    assert row[3] != 0 and row[4] == "success"
    assert row[5:] == (1000, 9.0, -1, 0, "evil.parquet", "shadow")


def test_select_counts_match_its_files_on_a_hostile_pool(tmp_path: Path) -> None:
    folder = _hostile_metadata(tmp_path / "meta")
    ingest_pool(IngestConfig(pool=folder, run=tmp_path / "run"))
    result = runner.invoke(app, ["select", str(tmp_path / "run"), "--out", "top", "--by",
                                 "clip_b32_score", "--fraction", "0.25", "--json"])
    assert result.exit_code == 0, result.output
    kept = json.loads(result.stdout)["kept"]
    subset = tmp_path / "run" / "subsets" / "top"
    assert kept == int(ROWS * 0.25) or kept == int(ROWS * 0.25) + 1
    assert len(read_uid_file(subset / "uids.npy")) == kept
    assert pq.read_metadata(subset / "manifest.parquet").num_rows == kept


@pytest.mark.parametrize("column", ["filename", "sample_id", "uid_low", "dfn_score", "Key"])
def test_clashing_shard_columns_are_renamed(tmp_path: Path, pool: SyntheticPool,
                                            column: str) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool.root, copy)
    for parquet in sorted(copy.glob("*.parquet")):
        table = pq.read_table(parquet)
        pq.write_table(table.append_column(column, pa.array(["x"] * table.num_rows)), parquet)
    summary = ingest_pool(IngestConfig(pool=copy, run=tmp_path / "run"))
    assert summary.renamed_columns == {column: column + "_pool"}
    con = connect(tmp_path / "run")
    values = con.execute(f'SELECT DISTINCT "{column}_pool" FROM samples').fetchall()
    assert values == [("x",)]
    ids = con.execute("SELECT count(DISTINCT sample_id), count(*) FROM samples").fetchone()
    assert ids[0] == ids[1] == len(pool.keys)
