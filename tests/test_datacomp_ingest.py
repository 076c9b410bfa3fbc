"""Ingest of DataComp metadata (parquet + npz) into pool, score and embedding tables."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.ingest.datacomp import FACE_BBOXES, MISSING_SCORE
from curate.ingest.stage import IngestConfig, IngestSummary, ingest_pool
from curate.io.pool_table import read_pool_part
from curate.io.schema import POOL_SCHEMA, score_schema
from curate.io.shards import PoolError
from curate.io.uids import is_valid_uid
from curate.io.workspace import RunPaths
from curate.models import ModelSpec
from curate.runner.run import plan
from curate.score.stage import ScoreConfig, score_stage
from tests.generators.datacomp import write_datacomp_metadata

DIMS = {"embed_dim_b32": 8, "embed_dim_l14": 12}
SCORERS = {"clip_b32": "b32", "clip_l14": "l14"}


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_datacomp_metadata(tmp_path_factory.mktemp("datacomp"), num_files=3,
                                   rows_per_file=40, seed=1, **DIMS)


@pytest.fixture()
def copy(tmp_path: Path, metadata: list[Path]) -> Path:
    """A private copy of the metadata folder, for tests that damage it."""
    target = tmp_path / "metadata"
    shutil.copytree(metadata[0].parent, target)
    return target


def _ingest(folder: Path, run: Path, copy_pool: bool = False) -> IngestSummary:
    return ingest_pool(IngestConfig(pool=folder, run=run, copy_pool=copy_pool))


def _file_hashes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".npy")
    }


def test_generator_is_deterministic_with_unique_uids(tmp_path: Path, metadata: list[Path]) -> None:
    again = write_datacomp_metadata(tmp_path, num_files=3, rows_per_file=40, seed=1, **DIMS)
    for first, second in zip(metadata, again, strict=True):
        assert first.read_bytes() == second.read_bytes()
        assert first.with_suffix(".npz").read_bytes() == second.with_suffix(".npz").read_bytes()
    uids = [u for p in metadata for u in pq.read_table(p).column("uid").to_pylist()]
    assert len(set(uids)) == len(uids) == 120 and all(is_valid_uid(u) for u in uids)
    with np.load(metadata[0].with_suffix(".npz")) as npz:
        assert npz["l14_img"].shape == (40, 12) and npz["b32_txt"].dtype == np.float16
        norms = np.linalg.norm(npz["b32_img"].astype(np.float32), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-2)


@pytest.mark.parametrize("copy_pool", [False, True], ids=["referenced", "copied"])
def test_metadata_rows_become_pool_rows(tmp_path: Path, metadata: list[Path],
                                        copy_pool: bool) -> None:
    summary = _ingest(metadata[0].parent, tmp_path / "run", copy_pool)
    assert (summary.shards, summary.samples, summary.duplicate_uids) == (3, 120, 0)
    paths = RunPaths(tmp_path / "run")
    for index, source in enumerate(metadata):
        part = paths.pool_part(index)
        assert ("url" in pq.read_schema(part).names) == copy_pool
        pool = read_pool_part(part)
        assert pool.schema.names == [*POOL_SCHEMA.names, FACE_BBOXES]
        pool = pool.to_pylist()
        given = pq.read_table(source).to_pylist()
        assert [r["uid"] for r in pool] == [r["uid"] for r in given]
        assert [r["key"] for r in pool] == [r["uid"] for r in given]
        assert [(r["uid_high"], r["uid_low"]) for r in pool] == [
            (int(r["uid"][:16], 16), int(r["uid"][16:], 16)) for r in given]
        for field in ("url", "text", "original_width", "original_height", "sha256", FACE_BBOXES):
            assert [r[field] for r in pool] == [r[field] for r in given]
        assert [r["text_chars"] for r in pool] == [
            len(r["text"]) if r["text"] is not None else None for r in given]
        assert {r["shard"] for r in pool} == {source.stem}
        assert {(r["status"], r["error_message"], r["width"]) for r in pool} == {
            ("success", None, None)
        }
    record = paths.read_run()
    assert record["source"]["kind"] == "datacomp"
    assert [s["parquet"] for s in record["shards"]] == [str(p.resolve()) for p in metadata]
    assert [s["samples"] for s in record["shards"]] == [40, 40, 40]


@pytest.mark.parametrize("copy_pool", [False, True], ids=["referenced", "copied"])
def test_score_tables_equal_the_metadata_columns(tmp_path: Path, metadata: list[Path],
                                                 copy_pool: bool) -> None:
    """Copied runs' score parts carry the uid; referencing runs' are row-aligned without it."""
    run = tmp_path / "run"
    _ingest(metadata[0].parent, run, copy_pool)
    paths = RunPaths(run)
    for scorer in SCORERS:
        scores_dir = paths.scores_dir(scorer)
        record = json.loads((scores_dir / "_scorer.json").read_text())
        assert record["model"] == f"datacomp:{scorer}_similarity_score"
        for index, source in enumerate(metadata):
            table = pq.read_table(scores_dir / f"part-{index:05d}.parquet")
            schema = score_schema(scorer)
            assert table.schema == (schema if copy_pool else schema.remove(0))
            given = pq.read_table(source)
            if copy_pool:
                assert table.column("uid").equals(given.column("uid"))
            expected = given.column(f"{scorer}_similarity_score").cast(pa.float32())
            assert table.column(f"{scorer}_score").equals(expected)
            assert set(table.column("status").to_pylist()) == {"ok"}
            done = json.loads((scores_dir / "_done" / f"part-{index:05d}.json").read_text())
            assert (done["samples"], done["ok"], done["failed_shards"]) == (40, 40, {})
        config = ScoreConfig(run=run, model=ModelSpec("fp-tiny-vit", random_init=True),
                             name=scorer, save_embeddings=True)
        jobs, done_stats = plan(score_stage(config, paths.read_run()["shards"]))
        assert jobs == [] and done_stats.samples == 120  # the score stage sees them finished


def test_null_or_nan_score_is_missing_score(tmp_path: Path, copy: Path) -> None:
    source = sorted(copy.glob("*.parquet"))[0]
    table = pq.read_table(source)
    values = table.column("clip_b32_similarity_score").to_pylist()
    values[3], values[5] = None, float("nan")
    table = table.set_column(5, "clip_b32_similarity_score", pa.array(values, pa.float32()))
    pq.write_table(table, source)
    _ingest(copy, tmp_path / "run")
    scores = RunPaths(tmp_path / "run").scores_dir("clip_b32")
    rows = pq.read_table(scores / "part-00000.parquet").to_pylist()
    assert [(r["clip_b32_score"], r["status"]) for r in rows[3:6:2]] == [(None, MISSING_SCORE)] * 2
    assert rows[3]["error"] and rows[4]["status"] == "ok" and rows[4]["error"] is None
    done = json.loads((scores / "_done" / "part-00000.json").read_text())
    assert done["by_status"] == {"ok": 38, MISSING_SCORE: 2}


def test_embeddings_equal_the_npz_arrays(tmp_path: Path, metadata: list[Path]) -> None:
    _ingest(metadata[0].parent, tmp_path / "run")
    paths = RunPaths(tmp_path / "run")
    for index, source in enumerate(metadata):
        with np.load(source.with_suffix(".npz")) as npz:
            for scorer, prefix in SCORERS.items():
                for kind, member in (("image", "img"), ("text", "txt")):
                    saved = np.load(paths.embeddings_dir(scorer) / f"part-{index:05d}.{kind}.npy")
                    assert saved.dtype == np.float16
                    np.testing.assert_array_equal(saved, npz[f"{prefix}_{member}"])


def test_float32_npz_is_stored_as_float16(tmp_path: Path, copy: Path) -> None:
    source = sorted(copy.glob("*.parquet"))[0]
    with np.load(source.with_suffix(".npz")) as npz:
        arrays = {k: npz[k].astype(np.float32) for k in npz.files}
    np.savez(source.with_suffix(".npz"), **arrays, dedup=np.zeros((40, 3)))
    _ingest(copy, tmp_path / "run")
    saved = np.load(RunPaths(tmp_path / "run").embeddings_dir("clip_l14") / "part-00000.text.npy")
    np.testing.assert_array_equal(saved, arrays["l14_txt"].astype(np.float16))


def test_file_without_npz_has_no_embeddings(tmp_path: Path, copy: Path) -> None:
    sorted(copy.glob("*.npz"))[1].unlink()
    summary = _ingest(copy, tmp_path / "run")
    assert summary.samples == 120
    paths = RunPaths(tmp_path / "run")
    for scorer in SCORERS:
        names = sorted(p.name for p in paths.embeddings_dir(scorer).iterdir())
        assert names == [f"part-0000{i}.{k}.npy" for i in (0, 2) for k in ("image", "text")]
        assert (paths.scores_dir(scorer) / "_done" / "part-00001.json").is_file()
    assert paths.read_run()["shards"][1]["npz"] is None


def test_npz_with_other_row_count_names_both_files(tmp_path: Path, copy: Path) -> None:
    source = sorted(copy.glob("*.parquet"))[2]
    with np.load(source.with_suffix(".npz")) as npz:
        arrays = {k: npz[k][:-1] for k in npz.files}
    np.savez(source.with_suffix(".npz"), **arrays)
    with pytest.raises(PoolError, match=rf"{source.stem}\.npz.*39 rows.*{source.stem}\.parquet"):
        _ingest(copy, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_columns_are_named(tmp_path: Path, copy: Path) -> None:
    source = sorted(copy.glob("*.parquet"))[1]
    pq.write_table(pq.read_table(source).drop_columns(["uid", "text"]), source)
    with pytest.raises(PoolError, match=rf"{source.stem}\.parquet: missing column\(s\) uid, text"):
        _ingest(copy, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_uids_are_lower_cased_and_checked(tmp_path: Path, copy: Path) -> None:
    source = sorted(copy.glob("*.parquet"))[0]
    table = pq.read_table(source)
    upper = table.set_column(0, "uid", pc.utf8_upper(table.column("uid")))
    pq.write_table(upper, source)
    _ingest(copy, tmp_path / "run")
    pool = read_pool_part(RunPaths(tmp_path / "run").pool_part(0), ["uid", "key"])
    assert pool.column("uid").equals(table.column("uid"))
    assert pool.column("key").equals(table.column("uid"))
    uids = table.column("uid").to_pylist()
    uids[7] = "not-a-uid"
    pq.write_table(table.set_column(0, "uid", pa.array(uids)), source)
    with pytest.raises(PoolError, match=rf"{source.stem}\.parquet: .*'not-a-uid'"):
        _ingest(copy, tmp_path / "other")


def test_reingest_is_idempotent_and_completes_missing_parts(tmp_path: Path, copy: Path) -> None:
    run = tmp_path / "run"
    _ingest(copy, run)
    before = _file_hashes(run)
    assert _ingest(copy, run).skipped_shards == 3
    assert _file_hashes(run) == before
    paths = RunPaths(run)
    (paths.scores_dir("clip_l14") / "part-00001.parquet").unlink()
    (paths.embeddings_dir("clip_b32") / "part-00002.image.npy").unlink()
    (paths.scores_dir("clip_b32") / "_done" / "part-00000.json").unlink()
    summary = _ingest(copy, run)
    assert (summary.skipped_shards, summary.samples) == (0, 120)
    assert _file_hashes(run) == before


def test_duckdb_reads_the_score_tables(tmp_path: Path, metadata: list[Path]) -> None:
    """A copied run's files are plain Parquet that any DuckDB joins by uid."""
    run = tmp_path / "run"
    _ingest(metadata[0].parent, run, copy_pool=True)
    query = (
        f"SELECT count(*), count(DISTINCT p.shard), avg(s.clip_l14_score) "
        f"FROM '{run}/scores/clip_l14/part-*.parquet' s "
        f"JOIN '{run}/pool/part-*.parquet' p USING (uid) WHERE s.status = 'ok'"
    )
    rows, shards, mean = duckdb.connect().execute(query).fetchone()
    assert (rows, shards) == (120, 3)
    expected = np.mean([pq.read_table(p).column("clip_l14_similarity_score").to_numpy()
                        for p in metadata])
    assert mean == pytest.approx(expected, abs=1e-6)


def test_folder_without_tars_or_uid_parquet_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    pq.write_table(pa.table({"url": ["u"], "text": ["t"]}), folder / "a.parquet")
    with pytest.raises(PoolError, match="no shards"):
        _ingest(folder, tmp_path / "run")


def test_cli_ingests_a_datacomp_folder(tmp_path: Path, metadata: list[Path]) -> None:
    result = CliRunner().invoke(
        app, ["ingest", str(metadata[0].parent), "--run", str(tmp_path / "run"), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert (payload["source"], payload["samples"]) == ("datacomp", 120)
    assert payload["score_tables"] == ["clip_b32", "clip_l14"]
