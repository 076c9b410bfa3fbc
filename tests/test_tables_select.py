"""SQL views, read-only queries, DataComp-exact selection, sweeps and the CLI around them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UserError
from curate.filters import FilterSpec
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.uids import read_uid_file, uids_to_array
from curate.io.workspace import RunPaths
from curate.select.subset import SelectConfig, select_subset
from curate.select.sweep import SweepConfig, sweep
from curate.tables.views import QueryError, aligned_source, connect, run_query

runner = CliRunner()
N_FILES, ROWS = 3, 400


def _datacomp_folder(root: Path, seed: int = 0) -> tuple[Path, pa.Table]:
    """DataComp-format metadata with tied and missing scores, in three files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    tables = []
    for i in range(N_FILES):
        uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(ROWS)]
        l14 = np.round(rng.normal(0.22, 0.05, ROWS), 2).astype(np.float64)  # many ties
        l14[rng.choice(ROWS, 5, replace=False)] = np.nan
        words = rng.integers(1, 12, ROWS)
        table = pa.table({
            "uid": uids,
            "url": [f"http://127.0.0.1/{u}.jpg" for u in uids],
            "text": [" ".join(["cat"] * int(w)) for w in words],
            "original_width": rng.integers(100, 800, ROWS),
            "original_height": rng.integers(100, 800, ROWS),
            "clip_b32_similarity_score": rng.normal(0.3, 0.05, ROWS),
            "clip_l14_similarity_score": l14,
            "face_bboxes": [[] for _ in range(ROWS)],
            "sha256": ["0" * 64] * ROWS,
        })
        pq.write_table(table, root / f"{i:05d}.parquet")
        tables.append(table)
    return root, pa.concat_tables(tables)


def _datacomp_select(scores: np.ndarray, uids: list[str], fraction: float) -> set[str]:
    """DataComp baselines.py --name clip_score --fraction F, written out as it is there."""
    n = int(len(scores) * fraction)
    threshold = -np.sort(-scores)[n]
    return {u for u, s in zip(uids, scores, strict=True) if s >= threshold}


@pytest.fixture(scope="module")
def datacomp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    base = tmp_path_factory.mktemp("dc")
    folder, table = _datacomp_folder(base / "metadata")
    ingest_pool(IngestConfig(pool=folder, run=base / "run"))
    return base / "run", table


def test_views_and_samples(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, table = datacomp_run
    con = connect(run)
    assert con.execute("SELECT count(*) FROM pool").fetchone()[0] == N_FILES * ROWS
    assert con.execute("SELECT count(*) FROM clip_l14").fetchone()[0] == N_FILES * ROWS
    columns = [r[0] for r in con.execute("DESCRIBE samples").fetchall()]
    assert {"sample_id", "clip_l14_score", "clip_l14_status", "clip_b32_score"} <= set(columns)
    got = con.execute("SELECT uid, clip_b32_score FROM samples ORDER BY sample_id").fetchall()
    assert [u for u, _ in got] == table.column("uid").to_pylist()
    np.testing.assert_allclose([s for _, s in got],
                               table.column("clip_b32_similarity_score").to_numpy(), rtol=1e-6)
    # aligned.<scorer>: samples' rows and order, read from the scorer's parts alone
    for name in ("clip_b32", "clip_l14"):
        columns = f"sample_id, {name}_score, {name}_status, {name}_error"
        assert con.sql(f"SELECT {columns} FROM aligned.{name}").fetchall() == \
            con.sql(f"SELECT {columns} FROM samples").fetchall()
    assert aligned_source(con, ["sample_id", "clip_l14_score"]) == 'aligned."clip_l14"'
    assert aligned_source(con, ["clip_l14_score", "clip_b32_score"]) == "samples"
    assert aligned_source(con, ["text"]) == "samples"


def test_queries_are_read_only(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, _ = datacomp_run
    assert run_query(run, "SELECT count(*) AS n FROM samples").column("n")[0].as_py() == 1200
    for sql in ["CREATE TABLE t AS SELECT 1", "COPY pool TO 'x.csv'", "INSERT INTO pool "
                "SELECT * FROM pool", "ATTACH 'x.db'", "SELECT 1; SELECT 2"]:
        with pytest.raises(QueryError):
            run_query(run, sql)
    with pytest.raises(QueryError, match="Parser Error"):
        run_query(run, "SELEC 1")


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3, 0.5, 0.9, 1.0])
def test_fraction_selection_equals_datacomp(
    tmp_path: Path, datacomp_run: tuple[Path, pa.Table], fraction: float
) -> None:
    run, table = datacomp_run
    scores = table.column("clip_l14_similarity_score").to_numpy(zero_copy_only=False)
    uids = table.column("uid").to_pylist()
    valid = ~np.isnan(scores)
    if fraction < 1.0:
        scored = [u for u, v in zip(uids, valid, strict=True) if v]
        expected = _datacomp_select(scores[valid], scored, fraction)
    else:  # DataComp indexes past the end at F = 1; filter-pool keeps every scored sample
        expected = {u for u, v in zip(uids, valid, strict=True) if v}
    name = f"f{int(fraction * 100)}"
    select_subset(SelectConfig(run=run, name=name, by="clip_l14", fraction=fraction,
                               overwrite=True))
    pairs = read_uid_file(run / "subsets" / name / "uids.npy")
    assert len(pairs) == len(expected)
    assert (pairs == np.sort(uids_to_array(sorted(expected)))).all()


def test_threshold_filters_and_provenance(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, table = datacomp_run
    summary = select_subset(SelectConfig(
        run=run, name="cut", by="clip_b32_score", threshold=0.3,
        filters=(FilterSpec("caption_length"), FilterSpec("image_size")), overwrite=True,
        command="filter-pool select ...",
    ))
    b32 = table.column("clip_b32_similarity_score").to_numpy()
    words = np.array([len(t.split()) for t in table.column("text").to_pylist()])
    side = np.minimum(table.column("original_width").to_numpy(),
                      table.column("original_height").to_numpy())
    keep = (b32 >= 0.3) & (words >= 3) & (side >= 200)
    assert summary.kept == int(keep.sum())
    folder = run / "subsets" / "cut"
    manifest = pq.read_table(folder / "manifest.parquet")
    dropped = pq.read_table(folder / "dropped.parquet")
    assert manifest.num_rows + dropped.num_rows == len(b32)
    assert {"uid", "shard", "key", "url", "text", "clip_b32_score", "clip_l14_score"} <= set(
        manifest.column_names)
    first = dict(zip(dropped.column("uid").to_pylist(),
                     dropped.column("first_failed_filter").to_pylist(), strict=True))
    uids = table.column("uid").to_pylist()
    for i in np.nonzero(words < 3)[0][:20]:
        assert first[uids[i]].startswith("caption_length")
    record = json.loads((folder / "selection.json").read_text())
    assert record["kept"] == summary.kept and record["command"] == "filter-pool select ..."
    assert record["scorers"]["clip_b32"]["name"] == "clip_b32"
    assert {"run.json", "pool", "scores/clip_b32"} <= set(record["inputs"])
    import hashlib

    assert record["uids_sha256"] == hashlib.sha256(
        (folder / "uids.npy").read_bytes()).hexdigest()


def test_dropped_rows_name_every_failing_filter_in_order(
    datacomp_run: tuple[Path, pa.Table],
) -> None:
    run, table = datacomp_run
    summary = select_subset(SelectConfig(
        run=run, name="reasons", by="clip_b32_score", threshold=0.3,
        filters=(FilterSpec("caption_length"), FilterSpec("image_size")),
        where="original_width < 700", overwrite=True,
    ))
    b32 = table.column("clip_b32_similarity_score").to_numpy()
    words = np.array([len(t.split()) for t in table.column("text").to_pylist()])
    width = table.column("original_width").to_numpy()
    side = np.minimum(width, table.column("original_height").to_numpy())
    labels = [f["label"] for f in summary.filters] + ["where"]
    assert labels[0].startswith("caption_length") and labels[2].startswith("threshold")
    passes = [words >= 3, side >= 200, b32 >= 0.3, width < 700]
    failing = [[label for label, ok in zip(labels, row, strict=True) if not ok]
               for row in zip(*passes, strict=True)]
    uids = table.column("uid").to_pylist()
    expected = [(u, f[0], f) for u, f in zip(uids, failing, strict=True) if f]
    folder = run / "subsets" / "reasons"
    dropped = pq.read_table(folder / "dropped.parquet")
    assert dropped.column_names == ["uid", "first_failed_filter", "failed_filters"]
    got = list(zip(*(dropped.column(c).to_pylist() for c in dropped.column_names),
                   strict=True))
    assert got == expected  # pool order, every failing filter in filter order
    kept = [u for u, f in zip(uids, failing, strict=True) if not f]
    assert pq.read_table(folder / "manifest.parquet").column("uid").to_pylist() == kept
    assert np.array_equal(read_uid_file(folder / "uids.npy"), np.sort(uids_to_array(kept)))
    assert summary.dropped_first == Counter(f[0] for f in failing if f)


def test_bad_selections_write_nothing(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, _ = datacomp_run
    with pytest.raises(UserError, match="unknown column 'nope'"):
        select_subset(SelectConfig(run=run, name="bad", by="nope", fraction=0.3))
    with pytest.raises(UserError, match="keeps no sample"):
        select_subset(SelectConfig(run=run, name="bad", where="text = 'no such caption'"))
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        SelectConfig(run=run, name="bad", by="clip_l14", fraction=0.0)
    assert not (run / "subsets" / "bad").exists()


def test_sweep_is_monotonic_and_matches_selection(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, _ = datacomp_run
    result = sweep(SweepConfig(run=run, by="clip_l14", fractions=(0.1, 0.2, 0.3, 0.5),
                               thresholds=(0.1, 0.2, 0.25), overwrite=True, stats_sample=500))
    rows = sorted(result.table.to_pylist(), key=lambda r: r["threshold"])
    kept = [r["kept"] for r in rows]
    assert kept == sorted(kept, reverse=True)
    assert (result.path / "sweep.parquet").is_file() and (result.path / "sweep.png").is_file()
    at_30 = next(r for r in rows if r["fraction"] == 0.3)
    summary = select_subset(SelectConfig(run=run, name="s30", by="clip_l14", fraction=0.3,
                                         overwrite=True))
    assert at_30["kept"] == summary.kept
    assert all(r["english_share"] is not None for r in rows)


def test_cli_query_select_sweep(tmp_path: Path, datacomp_run: tuple[Path, pa.Table]) -> None:
    run, _ = datacomp_run
    result = runner.invoke(app, ["query", str(run), "SELECT count(*) AS n FROM samples",
                                 "--format", "json"])
    assert result.exit_code == 0 and json.loads(result.output) == [{"n": 1200}]
    out = tmp_path / "q.parquet"
    result = runner.invoke(app, ["query", str(run), "SELECT uid FROM pool", "--format",
                                 "parquet", "--out", str(out)])
    assert result.exit_code == 0 and pq.read_table(out).num_rows == 1200
    result = runner.invoke(app, ["query", str(run), "DROP VIEW pool"])
    assert result.exit_code == 2 and "read-only" in result.output
    result = runner.invoke(app, ["query", str(run), "SELECT nope FROM pool"])
    assert result.exit_code == 2 and "Binder Error" in result.output
    result = runner.invoke(app, ["select", str(run), "--out", "cli30", "--by", "clip_l14",
                                 "--fraction", "0.3", "--filter", "caption_length:min_words=2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["kept"] > 0
    again = runner.invoke(app, ["select", str(run), "--out", "cli30", "--by",
                                "clip_l14_similarity_score", "--fraction", "0.3", "--filter",
                                "caption_length:min_words=2"])  # DataComp's name: the same
    assert again.exit_code == 0 and "done" in again.output, again.output
    other = runner.invoke(app, ["select", str(run), "--out", "cli30", "--by", "clip_l14",
                                "--fraction", "0.2"])
    assert other.exit_code == 2 and "fraction: was 0.3, now 0.2" in other.output
    assert "filters: was" in other.output
    result = runner.invoke(app, ["sweep", str(run), "--by", "clip_l14", "--points", "10",
                                 "--name", "cli", "--stats-sample", "100"])
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 12
    result = runner.invoke(app, ["filters", "--json"])
    names = {f["name"] for f in json.loads(result.output)["filters"]}
    assert {"basic", "caption_length", "image_size", "aspect_ratio", "language", "text_match",
            "threshold", "fraction"} <= names


def test_select_then_export_hands_off_exactly_the_subset(tmp_path: Path, run_dir: Path) -> None:
    import tarfile

    result = runner.invoke(app, ["select", str(run_dir), "--out", "long", "--filter",
                                 "caption_length:min_words=8"])
    assert result.exit_code == 0, result.output
    manifest = pq.read_table(run_dir / "subsets" / "long" / "manifest.parquet")
    out = tmp_path / "handoff"
    result = runner.invoke(app, ["export", str(run_dir), "--subset", "long", "--out", str(out),
                                 "--shard-size", "5", "--no-progress", "--json"])
    summary = json.loads(result.output)
    exported = set()
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as archive:
            exported |= {name.split(".", 1)[0] for name in archive.getnames()}
    missing = set(pq.read_table(out / "missing.parquet").column("uid").to_pylist())
    assert exported | missing == set(manifest.column("uid").to_pylist())
    assert summary["exported"] == len(exported)
    assert result.exit_code == (1 if missing else 0)


def test_sweep_thresholds_are_datacomp_thresholds(datacomp_run: tuple[Path, pa.Table]) -> None:
    run, table = datacomp_run
    scores = table.column("clip_l14_similarity_score").to_numpy(zero_copy_only=False)
    scores = scores[~np.isnan(scores)].astype(np.float32)
    fractions = (0.01, 0.1, 0.15, 0.3, 0.5, 0.99)
    result = sweep(SweepConfig(run=run, by="clip_l14", fractions=fractions, name="dc",
                               overwrite=True, stats_sample=0, plot=False))
    got = dict(zip(result.table.column("fraction").to_pylist(),
                   result.table.column("threshold").to_pylist(), strict=True))
    for f in fractions:
        assert got[f] == float(-np.sort(-scores)[int(len(scores) * f)]), f
    kept = dict(zip(result.table.column("fraction").to_pylist(),
                    result.table.column("kept").to_pylist(), strict=True))
    assert kept[0.3] == int((scores >= got[0.3]).sum())


def test_sweep_sample_is_seeded_uniform_and_paired(datacomp_run: tuple[Path, pa.Table]) -> None:
    from curate.select.sweep import SweepConfig as Config
    from curate.select.sweep import _candidate_queries, _load_candidates

    run, table = datacomp_run
    con, paths = connect(run), RunPaths(run)
    queries, _ = _candidate_queries(con, Config(run=run, by="clip_l14"), "clip_l14_score")
    assert len(queries) > 1  # chunks of pool parts, side by side
    first = _load_candidates(con, paths, queries, 300, seed=1)
    again = _load_candidates(con, paths, queries, 300, seed=1)
    other = _load_candidates(con, paths, queries, 300, seed=2)
    assert first.sample.num_rows == 300 and first.sample.equals(again.sample)
    whole, tables = _candidate_queries(con, Config(run=run, by="clip_l14", where="true"),
                                       "clip_l14_score")
    assert len(whole) == 1
    single = _load_candidates(con, paths, whole, 300, 1, tables)  # one scan of samples: the same
    assert np.array_equal(single.scores, first.scores) and single.sample.equals(first.sample)
    assert np.array_equal(single.chars, first.chars)
    assert not first.sample.equals(other.sample)
    scores = table.column("clip_l14_similarity_score").to_numpy().astype(np.float32)
    pairs = set(zip(table.column("text").to_pylist(), scores.tolist(), strict=True))
    sampled = zip(first.sample.column("text").to_pylist(),
                  first.sample.column("score").to_numpy().astype(np.float32).tolist(), strict=True)
    assert all(pair in pairs for pair in sampled)  # each sampled caption with its own score
    assert _load_candidates(con, paths, queries, 0, seed=1).sample is None
    everything = _load_candidates(con, paths, queries, 10**6, seed=1).sample
    assert everything.num_rows == len(first.scores)  # a sample larger than the pool: all rows


def test_select_on_a_partly_scored_run_joins_and_matches(
    tmp_path: Path, datacomp_run: tuple[Path, pa.Table],
) -> None:
    import shutil

    from curate.tables.views import samples_layout

    source, table = datacomp_run
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("subsets", "sweeps"))
    (run / "scores" / "clip_b32" / "part-00001.parquet").unlink()  # b32 joins by hash now
    con = connect(run)
    assert not samples_layout(con, RunPaths(run)).positional
    assert aligned_source(con, ["clip_b32_score"]) == "samples"  # no aligned view for b32
    summary = select_subset(SelectConfig(run=run, name="top", by="clip_l14", fraction=0.3))
    l14 = table.column("clip_l14_similarity_score").to_numpy()
    valid = ~np.isnan(l14)
    uids = table.column("uid").to_pylist()
    expected = _datacomp_select(l14[valid], [u for u, v in zip(uids, valid, strict=True) if v],
                                0.3)
    folder = run / "subsets" / "top"
    assert set(pq.read_table(folder / "manifest.parquet").column("uid").to_pylist()) == expected
    assert [u for u in uids if u in expected] == pq.read_table(
        folder / "manifest.parquet").column("uid").to_pylist()  # pool order
    dropped = pq.read_table(folder / "dropped.parquet").column("uid").to_pylist()
    assert dropped == [u for u in uids if u not in expected]
    assert np.array_equal(read_uid_file(folder / "uids.npy"),
                          np.sort(uids_to_array(sorted(expected))))
    assert summary.kept == len(expected)


@pytest.mark.parametrize("lookup", [True, False])
def test_failure_groups_name_each_rows_failing_filters(
    monkeypatch: pytest.MonkeyPatch, lookup: bool,
) -> None:
    import curate.select.subset as select_module

    monkeypatch.setattr(select_module, "LOOKUP_FILTERS", 16 if lookup else 0)
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d"]
    passed = [rng.random(2000) < 0.6 for _ in labels]
    group, failing = select_module._failure_groups(passed, labels, 2000)
    for row in range(2000):
        expected = [label for label, ok in zip(labels, passed, strict=True) if not ok[row]]
        assert (failing[group[row] - 1] if group[row] else []) == expected
    everything_kept = [np.ones(5, dtype=bool)]
    group, failing = select_module._failure_groups(everything_kept, ["a"], 5)
    assert not group.any() and failing == []


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_fraction_thresholds_follow_datacomp_with_ties(dtype: type) -> None:
    from curate.select.sweep import fraction_thresholds

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 50, size=1001).astype(dtype)  # many ties
    fractions = (0.001, 0.1, 0.15, 0.3, 0.5, 0.999, 1.0)
    got = fraction_thresholds(scores, fractions)
    descending = -np.sort(-scores)
    for f in fractions:
        assert got[f] == float(descending[min(int(len(scores) * f), len(scores) - 1)]), f
    assert fraction_thresholds(scores[:0], fractions) == {}


def _old_run(run: Path, target: Path) -> Path:
    """The run's pool ingested again as runs before 2026-12 held it: its columns copied."""
    folder = Path(RunPaths(run).read_run()["source"]["path"])
    ingest_pool(IngestConfig(pool=folder, run=target, copy_pool=True))
    return target


def test_sweep_of_a_pool_without_text_chars_reads_the_captions(
    tmp_path: Path, datacomp_run: tuple[Path, pa.Table],
) -> None:
    """Pools ingested before text_chars existed: caption lengths come from the captions, and
    the sweep table is the same."""

    source, table = datacomp_run
    run = _old_run(source, tmp_path / "old")
    for part in RunPaths(run).pool_parts():
        pq.write_table(pq.read_table(part).drop_columns(["text_chars"]), part)
    config = {"by": "clip_l14", "fractions": (0.1, 0.5, 1.0), "stats_sample": 50,
              "plot": False, "name": "s"}
    new = sweep(SweepConfig(run=source, overwrite=True, **config)).table
    old = sweep(SweepConfig(run=run, **config)).table
    assert old.equals(new)
    scores = table.column("clip_l14_similarity_score").to_numpy(zero_copy_only=False)
    texts = [t for t, s in zip(table.column("text").to_pylist(), scores, strict=True)
             if t is not None and not np.isnan(s)]  # fraction 1.0: every scored sample
    assert new.column("mean_caption_chars").to_pylist()[-1] == pytest.approx(
        np.mean([len(t) for t in texts]))


@pytest.mark.parametrize("positional", [True, False])
def test_uids_only_selection_writes_the_same_uids_and_no_tables(
    tmp_path: Path, datacomp_run: tuple[Path, pa.Table], positional: bool,
) -> None:
    import shutil

    source, _ = datacomp_run
    run = tmp_path / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("subsets", "sweeps"))
    if not positional:
        (run / "scores" / "clip_b32" / "part-00001.parquet").unlink()  # joins by hash
    full = select_subset(SelectConfig(run=run, name="full", by="clip_l14", fraction=0.3,
                                      filters=(FilterSpec("caption_length"),)))
    result = CliRunner().invoke(app, ["select", str(run), "--out", "alone", "--by", "clip_l14",
                                      "--fraction", "0.3", "--filter", "caption_length",
                                      "--uids-only"])
    assert result.exit_code == 0, result.output
    alone, whole = run / "subsets" / "alone", run / "subsets" / "full"
    assert (alone / "uids.npy").read_bytes() == (whole / "uids.npy").read_bytes()
    assert sorted(p.name for p in alone.iterdir()) == ["selection.json", "uids.npy"]
    record = json.loads((alone / "selection.json").read_text())
    assert record["uids_only"] and record["files"] == ["selection.json", "uids.npy"]
    assert json.loads((whole / "selection.json").read_text())["files"] == [
        "dropped.parquet", "manifest.parquet", "selection.json", "uids.npy"]
    counts = ("kept", "dropped_by_first_failing_filter", "failing_per_filter", "uids_sha256")
    assert {k: record[k] for k in counts} == {k: full.to_dict()[k] for k in counts}
    result = CliRunner().invoke(app, ["export", str(run), "--subset", "alone",
                                      "--out", str(tmp_path / "shards")])
    assert result.exit_code == 2 and "--uids-only" in result.output
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize("uids_only", [False, True])
def test_select_of_a_pool_without_uid_halves_parses_the_uids(
    tmp_path: Path, datacomp_run: tuple[Path, pa.Table], uids_only: bool,
) -> None:
    """Pools ingested before uid_high/uid_low existed: the kept uids are parsed from the uid
    strings, and every output is byte-identical."""

    source, _ = datacomp_run
    run = _old_run(source, tmp_path / "old")
    for part in RunPaths(run).pool_parts():
        pq.write_table(pq.read_table(part).drop_columns(["uid_high", "uid_low"]), part)
    config = {"name": "s", "by": "clip_l14", "fraction": 0.3, "uids_only": uids_only,
              "filters": (FilterSpec("caption_length"),)}
    select_subset(SelectConfig(run=source, overwrite=True, **config))
    select_subset(SelectConfig(run=run, **config))
    new, old = source / "subsets" / "s", run / "subsets" / "s"
    names = sorted(p.name for p in new.iterdir())
    assert names == sorted(p.name for p in old.iterdir())
    for name in names:
        if name != "selection.json":  # its paths and input fingerprints differ
            assert (old / name).read_bytes() == (new / name).read_bytes(), name
