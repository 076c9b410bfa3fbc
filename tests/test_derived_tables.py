"""Derived tables (dedup groups, clusters): published all at once, joined into ``samples`` with
their ``<name>_<field>`` columns; saved embeddings are found or named as missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import UserError
from curate.io.embeddings import normalised, open_embeddings
from curate.io.workspace import RunPaths
from curate.tables import connect
from curate.tables.derived import finished_table, write_derived_table


def _groups(run: Path) -> list[tuple[str, pa.Table]]:
    parts = []
    for part in RunPaths(run).pool_parts():
        uids = pq.read_table(part, columns=["uid"]).column("uid")
        n = len(uids)
        parts.append((part.stem, pa.table({
            "uid": uids,
            "grp_group": pa.array(np.arange(n) // 2, pa.int64()),
            "grp_keep": pa.array(np.arange(n) % 2 == 0),
            "status": pa.array(["ok"] * n),
            "error": pa.array([None] * n, pa.string()),
        })))
    return parts


def test_a_derived_table_joins_with_its_fields(run_dir: Path) -> None:
    write_derived_table(run_dir, "grp", "testgroup", {"k": 1}, _groups(run_dir), {"groups": 3})
    con = connect(run_dir)
    columns = [row[0] for row in con.execute("DESCRIBE samples").fetchall()]
    assert {"grp_group", "grp_keep", "grp_status", "grp_error"} <= set(columns)
    kept, total = con.execute("SELECT count(*) FILTER (WHERE grp_keep), count(*) "
                              "FROM samples").fetchone()
    assert total == con.execute("SELECT count(*) FROM pool").fetchone()[0]
    assert 0 < kept < total
    assert finished_table(run_dir, "grp", "testgroup", {"k": 1}, overwrite=False)
    with pytest.raises(UserError, match="k: was 1, now 2"):
        finished_table(run_dir, "grp", "testgroup", {"k": 2}, overwrite=False)
    with pytest.raises(UserError, match="not `filter-pool other`"):
        finished_table(run_dir, "grp", "other", {"k": 1}, overwrite=False)


def test_a_derived_table_refuses_foreign_columns_and_missing_parts(run_dir: Path) -> None:
    parts = _groups(run_dir)
    stem, table = parts[0]
    bad = [(stem, table.append_column("url", pa.array(["x"] * table.num_rows))), *parts[1:]]
    with pytest.raises(ValueError, match="url"):
        write_derived_table(run_dir, "grp", "testgroup", {}, bad, {})
    with pytest.raises(ValueError, match="no part for"):
        write_derived_table(run_dir, "grp", "testgroup", {}, parts[1:], {})
    assert not RunPaths(run_dir).scores_dir("grp").exists()


def test_missing_embeddings_say_how_to_make_them(run_dir: Path) -> None:
    with pytest.raises(UserError, match="no image embeddings named 'clip_l14'.*--save-embeddings"):
        open_embeddings(run_dir, "clip_l14")
    paths = RunPaths(run_dir)
    directory = paths.embeddings_dir("mine")
    directory.mkdir(parents=True)
    for part in paths.pool_parts():
        rows = pq.ParquetFile(part).metadata.num_rows
        np.save(directory / f"{part.stem}.image.npy", np.ones((rows, 4), np.float16))
    embeddings = open_embeddings(run_dir, "mine")
    assert embeddings.dim == 4 and embeddings.rows == sum(p.load().shape[0] for p in embeddings)


def test_normalised_marks_unusable_rows() -> None:
    values, usable = normalised(np.array([[3, 4], [np.nan, 1], [0, 0]], np.float16))
    assert usable.tolist() == [True, False, False]
    assert np.allclose(values[0], [0.6, 0.8]) and not values[1:].any()


def test_select_and_sweep_read_a_derived_table_beside_a_scorer(run_dir: Path) -> None:
    from curate.io.uids import read_uid_file
    from curate.select.subset import SelectConfig, select_subset
    from curate.tables.views import derived_names, score_names

    write_derived_table(run_dir, "grp", "testgroup", {}, _groups(run_dir), {})
    assert derived_names(run_dir) == ["grp"] and score_names(run_dir) == []
    summary = select_subset(SelectConfig(run=run_dir, name="kept", where="grp_keep"))
    con = connect(run_dir)
    expected = con.execute("SELECT count(*) FROM samples WHERE grp_keep").fetchone()[0]
    assert summary.kept == expected
    uids = read_uid_file(RunPaths(run_dir).subset_dir("kept") / "uids.npy")
    assert len(uids) == expected
    manifest = pq.read_table(RunPaths(run_dir).subset_dir("kept") / "manifest.parquet")
    assert not [c for c in manifest.column_names if c.startswith("grp_")]
