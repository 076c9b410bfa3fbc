"""Deduplication: each level finds its planted kind (pair recall and precision printed and
asserted), representatives follow the stated rule and do not depend on worker counts, every
pool row gets one row with a status, the dedup filter keeps the representatives."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.dedup.bands import near_pairs
from curate.dedup.hashes import hamming
from curate.dedup.stage import DedupConfig, dedup_run
from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.filters import parse_filter_spec
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.uids import read_uid_file
from curate.io.workspace import RunPaths
from curate.select.subset import SelectConfig, select_subset
from curate.select.sweep import SweepConfig, sweep
from curate.tables import connect
from curate.tables.derived import read_table_record, write_derived_table
from tests.generators.datacomp import write_datacomp_metadata
from tests.generators.duplicates import EXACT_KINDS, KINDS, DuplicatePool, write_duplicate_pool

runner = CliRunner()


@pytest.fixture(scope="module")
def dup_pool(tmp_path_factory: pytest.TempPathFactory) -> DuplicatePool:
    return write_duplicate_pool(tmp_path_factory.mktemp("dups"))


@pytest.fixture()
def dup_run(tmp_path: Path, dup_pool: DuplicatePool) -> Path:
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=dup_pool.root, run=run))
    return run


def dedup(run: Path, level: str, **settings) -> object:
    settings.setdefault("executor", ExecutorConfig(workers=0))
    return dedup_run(DedupConfig(run=run, level=level, progress=False, **settings))


def table(run: Path, name: str) -> pa.Table:
    paths = RunPaths(run)
    return pa.concat_tables(pq.read_table(paths.scores_dir(name) / f"{part.stem}.parquet")
                            for part in paths.pool_parts())


def keys_of(run: Path) -> list[str]:
    return pa.concat_tables(pq.read_table(p, columns=["key"]) for p in
                            RunPaths(run).pool_parts()).column("key").to_pylist()


def found_pairs(run: Path, name: str) -> set[frozenset[str]]:
    """Pairs of keys that the table puts in one group."""
    t = table(run, name)
    groups: dict[int, list[str]] = {}
    for key, group in zip(keys_of(run), t.column(f"{name}_group").to_pylist(), strict=True):
        if group is not None:
            groups.setdefault(group, []).append(key)
    return {frozenset(p) for members in groups.values()
            for p in itertools.combinations(members, 2)}


def true_pairs(pool: DuplicatePool, kinds: Iterable[str]) -> set[frozenset[str]]:
    """Pairs of keys that share an original, among originals and copies of ``kinds``."""
    by_source: dict[int, list[str]] = {}
    for key, planted in pool.truth.items():
        if planted.kind == "original" or planted.kind in kinds:
            by_source.setdefault(planted.source, []).append(key)
    return {frozenset(p) for keys in by_source.values() for p in itertools.combinations(keys, 2)}


def recall_precision(found: set, truth: set, label: str) -> tuple[float, float]:
    hits = len(found & truth)
    recall = hits / len(truth) if truth else 1.0
    precision = hits / len(found) if found else 1.0
    print(f"{label}: recall {recall:.3f} precision {precision:.3f} "
          f"({hits} of {len(truth)} true pairs, {len(found)} found)")
    return recall, precision


def test_exact_finds_byte_copies_and_pixel_identical_resaves(dup_run: Path,
                                                            dup_pool: DuplicatePool) -> None:
    summary = dedup(dup_run, "exact")
    recall, precision = recall_precision(found_pairs(dup_run, "dedup_exact"),
                                         true_pairs(dup_pool, EXACT_KINDS), "exact")
    assert recall == 1.0 and precision == 1.0
    t = table(dup_run, "dedup_exact")
    reasons = [r for r in t.column("dedup_exact_reason").to_pylist() if r]
    assert any(r.startswith("same bytes as") for r in reasons)
    assert any(r.startswith("same pixels as") for r in reasons)
    assert summary.duplicates == 2 * 5 and summary.groups == summary.duplicates  # 1 copy each


def test_perceptual_finds_reencoded_resized_and_cropped_copies(dup_run: Path,
                                                               dup_pool: DuplicatePool) -> None:
    dedup(dup_run, "phash")
    found = found_pairs(dup_run, "dedup_phash")
    recall, precision = recall_precision(found, true_pairs(dup_pool, ("byte_copy", "png_resave",
                                                                      "reencode", "resize")),
                                         "phash d<=4 without crops")
    assert recall == 1.0
    recall_precision(found, true_pairs(dup_pool, ("crop",)), "phash d<=4 crops")
    _, precision = recall_precision(found, true_pairs(dup_pool, KINDS), "phash d<=4 all kinds")
    assert precision == 1.0
    dedup(dup_run, "phash", name="phash8", max_distance=8)
    recall, precision = recall_precision(found_pairs(dup_run, "phash8"),
                                         true_pairs(dup_pool, KINDS), "phash d<=8 all kinds")
    assert recall == 1.0 and precision == 1.0
    t = table(dup_run, "phash8")
    distance = np.array(t.column("phash8_distance").drop_null().to_numpy())
    assert distance.max() <= 8 and (distance > 0).any()
    dedup(dup_run, "phash", name="dhash4", hash="dhash")
    recall, precision = recall_precision(found_pairs(dup_run, "dhash4"),
                                         true_pairs(dup_pool, ("byte_copy", "reencode")),
                                         "dhash d<=4 bytes and re-encodes")
    assert recall == 1.0


def test_bands_find_every_pair_within_the_distance() -> None:
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    for i in range(0, 60, 2):  # plant near pairs at distances 0..6 (0 becomes a distinct flip)
        bits = rng.choice(64, size=1 + i % 6, replace=False)
        hashes[i + 1] = hashes[i] ^ np.uint64(sum(1 << int(b) for b in bits))
    left, right = near_pairs(hashes, 4)
    found = {frozenset((int(a), int(b))) for a, b in zip(left, right, strict=True)}
    brute = {frozenset((i, j)) for i, j in itertools.combinations(range(len(hashes)), 2)
             if hamming(hashes[i], hashes[j])[0] <= 4}
    assert found == brute and len(brute) >= 20


def test_every_pool_row_gets_one_row_and_unhashable_rows_a_status(dup_run: Path,
                                                                 dup_pool: DuplicatePool
                                                                 ) -> None:
    dedup(dup_run, "exact")
    t = table(dup_run, "dedup_exact")
    pool_uids = pa.concat_tables(pq.read_table(p, columns=["uid"]) for p in
                                 RunPaths(dup_run).pool_parts()).column("uid")
    assert t.column("uid").to_pylist() == pool_uids.to_pylist()
    by_key = dict(zip(keys_of(dup_run), t.to_pylist(), strict=True))
    for key, planted in dup_pool.truth.items():
        row = by_key[key]
        if planted.kind in ("failed", "corrupt"):
            assert row["status"] == {"failed": "not_downloaded",
                                     "corrupt": "corrupt_image"}[planted.kind]
            assert row["dedup_exact_keep"] is None and row["error"]
        else:
            assert row["status"] == "ok" and row["dedup_exact_keep"] is not None
    record = read_table_record(dup_run, "dedup_exact")
    assert "smallest uid" in record["summary"]["rule"]


def test_representatives_are_the_same_with_0_or_2_workers(tmp_path: Path,
                                                          dup_pool: DuplicatePool) -> None:
    tables = []
    for workers in (0, 2):
        run = tmp_path / f"run{workers}"
        ingest_pool(IngestConfig(pool=dup_pool.root, run=run))
        dedup(run, "phash", executor=ExecutorConfig(workers=workers))
        tables.append(table(run, "dedup_phash"))
    assert tables[0].equals(tables[1])
    t = tables[0]
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in RunPaths(run).pool_parts()]
    sample_ids = [(part << 32) | row for part, size in enumerate(sizes) for row in range(size)]
    uid_of = dict(zip(sample_ids, t.column("uid").to_pylist(), strict=True))
    members: dict[int, list[str]] = {}
    for uid, group in zip(t.column("uid").to_pylist(), t.column("dedup_phash_group").to_pylist(),
                          strict=True):
        if group is not None:
            members.setdefault(group, []).append(uid)
    assert sum(len(m) > 1 for m in members.values()) >= 10
    for group, uids in members.items():  # no --prefer: the smallest uid represents its group
        assert uid_of[group] == min(uids)
    keep = t.column("dedup_phash_keep").to_pylist()
    assert all(k == (sid in members) for sid, k in zip(sample_ids, keep, strict=True)
               if k is not None)


def test_prefer_keeps_the_highest_score(dup_run: Path) -> None:
    paths = RunPaths(dup_run)
    rng = np.random.default_rng(7)
    parts = []
    for part in paths.pool_parts():
        uids = pq.read_table(part, columns=["uid"]).column("uid")
        scores = rng.random(len(uids)).astype(np.float32)
        parts.append((part.stem, pa.table({"uid": uids, "pref_score": scores,
                                           "status": ["ok"] * len(uids),
                                           "error": pa.nulls(len(uids), pa.string())})))
    write_derived_table(dup_run, "pref", "test", {}, parts, {})
    dedup(dup_run, "phash", prefer="pref")
    t = table(dup_run, "dedup_phash")
    score = pa.concat_tables(p for _, p in parts).column("pref_score").to_numpy()
    groups = np.array(t.column("dedup_phash_group").fill_null(-1).to_numpy())
    keep = np.array(t.column("dedup_phash_keep").fill_null(False).to_numpy())
    checked = 0
    for group in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == group)
        if len(members) > 1:
            assert keep[members].sum() == 1
            assert score[members[keep[members]]][0] == score[members].max()
            checked += 1
    assert checked >= 10


def _write_embeddings(run: Path, name: str, planted: int = 12, dim: int = 32
                      ) -> set[frozenset[int]]:
    """Random unit embeddings with ``planted`` near copies (cosine > 0.999); NaN rows where
    the image is missing. Returns the planted pairs as global row indices."""
    paths = RunPaths(run)
    sizes = [pq.ParquetFile(p).metadata.num_rows for p in paths.pool_parts()]
    rng = np.random.default_rng(11)
    values = rng.normal(size=(sum(sizes), dim)).astype(np.float32)
    pairs = set()
    for i in range(planted):
        source, copy = 2 * i, 2 * i + 41
        values[copy] = values[source] + rng.normal(scale=0.01, size=dim)
        pairs.add(frozenset((source, copy)))
    values[5] = np.nan  # a row without an embedding
    directory = paths.embeddings_dir(name)
    directory.mkdir(parents=True)
    offset = 0
    for part, size in zip(paths.pool_parts(), sizes, strict=True):
        np.save(directory / f"{part.stem}.image.npy", values[offset:offset + size]
                .astype(np.float16))
        offset += size
    return pairs


def test_semantic_finds_planted_near_duplicate_embeddings(dup_run: Path) -> None:
    truth = _write_embeddings(dup_run, "emb")
    summary = dedup(dup_run, "semantic", embeddings="emb", clusters=4, eps=0.05)
    t = table(dup_run, "dedup_semantic")
    groups = t.column("dedup_semantic_group").to_pylist()
    found = {frozenset((i, j)) for i, j in itertools.combinations(range(len(groups)), 2)
             if groups[i] is not None and groups[i] == groups[j]}
    recall, precision = recall_precision(found, truth, "semantic eps=0.05")
    assert recall == 1.0 and precision == 1.0
    assert t.column("status")[5].as_py() == "missing_embedding"
    assert t.column("dedup_semantic_keep")[5].as_py() is None
    removed = [row["removed"] for row in summary.eps_table]
    assert len(removed) == 7 and removed == sorted(removed)
    assert summary.duplicates == len(truth)
    similarity = np.array(t.column("dedup_semantic_similarity").drop_null().to_numpy())
    assert similarity.max() > 0.999
    assert "eps" in summary.text() and read_table_record(dup_run, "dedup_semantic")[
        "summary"]["eps_table"] == summary.eps_table


def test_select_with_the_dedup_filter_keeps_the_representatives(dup_run: Path) -> None:
    summary = dedup(dup_run, "phash")
    kept = select_subset(SelectConfig(run=dup_run, name="unique",
                                      filters=(parse_filter_spec("dedup:level=phash"),)))
    assert kept.kept == summary.hashed - summary.duplicates
    result = runner.invoke(app, ["select", str(dup_run), "--out", "cli_unique", "--filter",
                                 "dedup:level=phash"])
    assert result.exit_code == 0, result.output


def test_cli_errors_reuse_and_refusal(dup_run: Path) -> None:
    run = str(dup_run)
    missing = runner.invoke(app, ["select", run, "--out", "x", "--filter", "dedup:level=exact"])
    assert missing.exit_code == 2
    assert "filter-pool dedup RUN --level exact" in missing.output
    no_embeddings = runner.invoke(app, ["dedup", run, "--level", "semantic", "--embeddings",
                                        "nope"])
    assert no_embeddings.exit_code == 2 and "--save-embeddings" in no_embeddings.output
    first = runner.invoke(app, ["dedup", run, "--level", "exact", "--workers", "0", "--json",
                                "--no-progress"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["dedup", run, "--level", "exact", "--workers", "0", "--json",
                                "--no-progress"])
    assert again.exit_code == 0 and json.loads(again.output)["reused"] is True
    other = runner.invoke(app, ["dedup", run, "--level", "exact", "--with-caption",
                                "--workers", "0"])
    assert other.exit_code == 2 and "with_caption: was False, now True" in other.output
    replaced = runner.invoke(app, ["dedup", run, "--level", "exact", "--with-caption",
                                   "--overwrite", "--workers", "0", "--no-progress"])
    assert replaced.exit_code == 0, replaced.output
    assert read_table_record(dup_run, "dedup_exact")["settings"]["with_caption"] is True


def test_a_metadata_pool_dedups_by_sha256_and_phash_says_it_needs_images(tmp_path: Path
                                                                          ) -> None:
    files = write_datacomp_metadata(tmp_path / "meta", num_files=2, rows_per_file=20,
                                    with_npz=False)
    first = pq.read_table(files[0])
    sha = first.column("sha256").to_pylist()
    sha[3] = sha[0]
    sha[4] = None
    pq.write_table(first.set_column(first.schema.get_field_index("sha256"), "sha256",
                                    pa.array(sha, pa.string())), files[0])
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=tmp_path / "meta", run=run))
    summary = dedup(run, "exact")
    assert summary.duplicates == 1 and summary.by_status.get("no_sha256") == 1
    with pytest.raises(UserError, match="needs img2dataset webdataset shards"):
        dedup(run, "phash")


def test_the_shipped_recipe_keeps_the_best_scored_unique_samples(dup_run: Path) -> None:
    """pipelines/dedup_subset.toml: exact + phash dedup preferring the dfn score, then the
    top fraction of the representatives."""
    rng = np.random.default_rng(3)
    parts = []
    for part in RunPaths(dup_run).pool_parts():
        uids = pq.read_table(part, columns=["uid"]).column("uid")
        parts.append((part.stem, pa.table({
            "uid": uids, "dfn_score": rng.random(len(uids)).astype(np.float32),
            "status": ["ok"] * len(uids), "error": pa.nulls(len(uids), pa.string())})))
    write_derived_table(dup_run, "dfn", "test", {}, parts, {})
    recipe = Path(__file__).parent.parent / "pipelines" / "dedup_subset.toml"
    result = runner.invoke(app, ["run", str(recipe), "--set", f"run={dup_run}", "--set",
                                 "workers=0", "--set", "fraction=0.5", "--json"])
    assert result.exit_code == 0, result.output
    assert read_table_record(dup_run, "dedup_exact")["settings"]["prefer"] == "dfn"
    con = connect(dup_run)
    scores = np.sort(np.concatenate([t.column("dfn_score").to_numpy() for _, t in parts]))[::-1]
    threshold = float(scores[int(len(scores) * 0.5)])  # DataComp's fraction rule
    kept = {row[0] for row in con.execute("SELECT uid FROM samples WHERE dedup_exact_keep AND "
                                          "dedup_phash_keep AND dfn_score >= ?",
                                          [threshold]).fetchall()}
    subset = read_uid_file(RunPaths(dup_run).subset_dir("dfn_unique") / "uids.npy")
    assert 0 < len(subset) == len(kept) < 40
    swept = sweep(SweepConfig(run=dup_run, by="dfn", fractions=(1.0,), stats_sample=0,
                              plot=False, filters=(parse_filter_spec("dedup:level=phash"),)))
    unique = con.execute("SELECT count(*) FROM samples WHERE dedup_phash_keep").fetchone()[0]
    assert swept.candidates == unique


def test_image_hashes_are_computed_once_and_resume_per_shard(dup_run: Path) -> None:
    from curate.dedup.image_hashes import hashes_dir

    dedup(dup_run, "exact")
    parts = sorted(hashes_dir(dup_run).glob("part-*.parquet"))
    assert len(parts) == 3
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    dedup(dup_run, "phash")  # reuses every shard's hashes
    assert {p.name: p.stat().st_mtime_ns for p in parts} == before
    (hashes_dir(dup_run) / "_done" / "part-00001.json").unlink()
    dedup(dup_run, "phash", name="again")
    after = {p.name: p.stat().st_mtime_ns for p in parts}
    assert [name for name in before if after[name] != before[name]] == ["part-00001.parquet"]
    assert table(dup_run, "again").equals(
        table(dup_run, "dedup_phash").rename_columns(table(dup_run, "again").column_names))
