"""Ingest of img2dataset webdataset output into the run's pool table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.schema import POOL_SCHEMA
from curate.io.shards import PoolError
from curate.io.uids import uid_from_url_caption
from curate.io.workspace import RunPaths
from tests.generators.synthetic import SyntheticPool, write_synthetic_pool


def _pool_rows(run: Path) -> list[dict]:
    rows: list[dict] = []
    for part in RunPaths(run).pool_parts():
        rows += pq.read_table(part).to_pylist()
    return rows


def test_every_parquet_row_becomes_a_pool_row(run_dir: Path, pool: SyntheticPool) -> None:
    rows = _pool_rows(run_dir)
    assert [r["key"] for r in rows] == pool.keys
    width = len(POOL_SCHEMA.names)
    assert pq.read_schema(RunPaths(run_dir).pool_parts()[0]).names[:width] == POOL_SCHEMA.names
    # text_chars is derived at ingest: the caption's len(), null with the caption
    assert all(r["text_chars"] == (len(r["text"]) if r["text"] is not None else None)
               for r in rows)
    assert any(r["text"] is None for r in rows) and any(r["text_chars"] for r in rows)
    # uid_high, uid_low: the uid as DataComp's pair, what uids.npy holds
    assert all((r["uid_high"], r["uid_low"]) == (int(r["uid"][:16], 16), int(r["uid"][16:], 16))
               for r in rows)
    by_key = {r["key"]: r for r in rows}
    failed = next(k for k, kind in pool.planted.items() if kind == "failed_to_download")
    assert by_key[failed]["status"] == "failed_to_download"
    assert by_key[failed]["error_message"]
    good = next(k for k in pool.keys if k not in pool.planted)
    assert by_key[good]["uid"] == uid_from_url_caption(by_key[good]["url"], by_key[good]["text"])
    assert by_key[good]["shard"] == good[:5]


def test_uid_column_of_the_pool_is_kept(tmp_path: Path) -> None:
    source = write_synthetic_pool(tmp_path / "p", num_shards=1, samples_per_shard=8,
                                  plant_bad=False, with_uid_column=True)
    ingest_pool(IngestConfig(pool=source.root, run=tmp_path / "run"))
    given = pq.read_table(source.root / "00000.parquet").column("uid").to_pylist()
    assert [r["uid"] for r in _pool_rows(tmp_path / "run")] == given


def test_shard_without_parquet_is_read_from_its_tar(tmp_path: Path, pool: SyntheticPool) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool.root, copy)
    (copy / "00001.parquet").unlink()
    ingest_pool(IngestConfig(pool=copy, run=tmp_path / "run"))
    rows = [r for r in _pool_rows(tmp_path / "run") if r["shard"] == "00001"]
    in_tar = [k for k in pool.keys if k.startswith("00001")
              and pool.planted.get(k) != "failed_to_download"]
    assert [r["key"] for r in rows] == in_tar
    assert all(r["url"] for r in rows)


def test_run_record_names_source_and_shards(run_dir: Path, pool: SyntheticPool) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["source"]["path"] == str(pool.root.resolve())
    assert [s["name"] for s in record["shards"]] == pool.shards
    assert sum(s["samples"] for s in record["shards"]) == len(pool.keys)


def test_missing_or_empty_pool_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="does not exist"):
        ingest_pool(IngestConfig(pool=tmp_path / "nope", run=tmp_path / "run"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PoolError, match="no shards"):
        ingest_pool(IngestConfig(pool=tmp_path / "empty", run=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_parquet_without_required_columns_is_named(tmp_path: Path, pool: SyntheticPool) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool.root, copy)
    table = pq.read_table(copy / "00002.parquet").drop_columns(["url"])
    pq.write_table(table, copy / "00002.parquet")
    with pytest.raises(PoolError, match=r"00002\.parquet: missing column\(s\) url"):
        ingest_pool(IngestConfig(pool=copy, run=tmp_path / "run"))


def test_run_of_another_pool_needs_overwrite(tmp_path: Path, run_dir: Path) -> None:
    other = write_synthetic_pool(tmp_path / "other", num_shards=1, samples_per_shard=8,
                                 plant_bad=False, seed=3)
    with pytest.raises(PoolError, match="already holds pool"):
        ingest_pool(IngestConfig(pool=other.root, run=run_dir))
    summary = ingest_pool(IngestConfig(pool=other.root, run=run_dir, overwrite=True))
    assert summary.samples == 8
    assert len(_pool_rows(run_dir)) == 8
