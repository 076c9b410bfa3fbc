"""Trust, SQL and names: queries and ``--where`` are read-only inside a DuckDB sandbox that
reads only the run (and its pool), names from the file system are validated before they reach
SQL, a run path with glob characters reads its own files, and name options take names only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.errors import UserError
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.select.subset import SelectConfig, select_subset
from curate.tables.views import QueryError, connect, run_query

runner = CliRunner()


def _metadata(folder: Path, rows: int, seed: int) -> Path:
    """A one-file DataComp-format metadata pool."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(rows)]
    pq.write_table(pa.table({
        "uid": uids,
        "url": [f"http://127.0.0.1/{u}.jpg" for u in uids],
        "text": ["a photo of a cat"] * rows,
        "original_width": rng.integers(100, 800, rows),
        "original_height": rng.integers(100, 800, rows),
        "clip_b32_similarity_score": rng.normal(0.3, 0.05, rows),
        "clip_l14_similarity_score": rng.normal(0.2, 0.05, rows),
        "face_bboxes": [[] for _ in range(rows)],
        "sha256": ["0" * 64] * rows,
    }), folder / "00000.parquet")
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("trust")
    ingest_pool(IngestConfig(pool=_metadata(base / "meta", 50, 0), run=base / "run"))
    (base / "secret.csv").write_text("secret\n42\n")
    return base / "run"


@pytest.mark.parametrize("sql", [
    "COPY pool TO 'out.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.csv'",
    "explain /* c */ analyze CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE INSERT INTO pool SELECT * FROM pool",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "INSTALL httpfs",
    "LOAD httpfs",
    "ATTACH 'other.db'",
    "PRAGMA threads = 1",
    "CALL pragma_version()",
    "SELECT 1; COPY pool TO 'out.csv'",
])
def test_statements_other_than_select_are_refused(run: Path, sql: str) -> None:
    with pytest.raises(QueryError):
        run_query(run, sql)
    assert not (Path.cwd() / "out.csv").exists()


def test_explain_of_a_select_runs(run: Path) -> None:
    assert run_query(run, "EXPLAIN ANALYZE SELECT count(*) FROM samples").num_rows >= 1
    assert run_query(run, "EXPLAIN SELECT 1").num_rows >= 1


def test_files_outside_the_run_cannot_be_read(run: Path) -> None:
    outside = run.parent / "secret.csv"
    for sql in [f"SELECT * FROM read_csv('{outside}')",
                f"SELECT * FROM read_text('{outside}')",
                f"SELECT * FROM read_csv('{run}/../secret.csv')",
                "SELECT * FROM read_csv('/etc/passwd')"]:
        with pytest.raises(QueryError, match="disabled|Permission"):
            run_query(run, sql)
    own = run_query(run, f"SELECT count(*) AS n FROM read_parquet('{run}/pool/*.parquet')")
    assert own.column("n")[0].as_py() == 50


def test_settings_cannot_be_changed_from_the_connection(run: Path) -> None:
    con = connect(run)
    for sql in ["SET enable_external_access = true", "SET allowed_directories = ['/']",
                "SET autoload_known_extensions = true"]:
        with pytest.raises(Exception, match="lock|configuration"):
            con.execute(sql)


def test_where_cannot_escape_its_condition(run: Path) -> None:
    secret = run.parent / "secret.csv"
    for where in ["true) ; COPY pool TO 'out.csv' ; SELECT (1",
                  f"(SELECT count(*) FROM read_csv('{secret}')) > 0"]:
        with pytest.raises(UserError):
            select_subset(SelectConfig(run=run, name="w", where=where))
        assert not (run / "subsets" / "w").exists()
    result = runner.invoke(app, ["select", str(run), "--out", "w", "--where",
                                 f"(SELECT count(*) FROM read_csv('{secret}')) > 0"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_a_scorer_folder_with_an_invalid_name_is_refused(tmp_path: Path, run: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    bad = copy / "scores" / 'x" FROM pool; --'
    bad.mkdir(parents=True)
    part = next((copy / "scores" / "clip_b32").glob("part-*.parquet"))
    shutil.copy(part, bad / "part-00000.parquet")
    with pytest.raises(UserError, match="not a valid name"):
        connect(copy)
    result = runner.invoke(app, ["query", str(copy), "SELECT 1"])
    assert result.exit_code == 2
    assert "not a valid name" in result.stderr and result.stderr.count("\n") == 1


def test_a_run_path_with_glob_characters_reads_its_own_files(tmp_path: Path) -> None:
    ingest_pool(IngestConfig(pool=_metadata(tmp_path / "m1", 30, 1), run=tmp_path / "run1"))
    ingest_pool(IngestConfig(pool=_metadata(tmp_path / "m2", 7, 2), run=tmp_path / "run[1]"))
    ingest_pool(IngestConfig(pool=_metadata(tmp_path / "m3", 9, 3), run=tmp_path / "run*"))
    for name, rows in [("run[1]", 7), ("run*", 9), ("run1", 30)]:
        table = run_query(tmp_path / name, "SELECT count(*) AS n, count(clip_b32_score) AS s "
                                           "FROM samples")
        assert table.to_pylist() == [{"n": rows, "s": rows}]


@pytest.mark.parametrize("command", [
    ["export", "{run}", "--subset", "../x", "--out", "{tmp}/out"],
    ["report", "{run}", "--subset", "../x", "--out", "{tmp}/r.html"],
    ["evaluate", "{run}", "--subset", "../../x", "--eval", "{tmp}/eval"],
    ["select", "{run}", "--out", "../x", "--fraction", "0.5", "--by", "clip_b32_score"],
    ["sweep", "{run}", "--by", "clip_b32_score", "--name", "../x"],
])
def test_name_options_take_names_not_paths(tmp_path: Path, run: Path, command: list[str]) -> None:
    args = [a.format(run=run, tmp=tmp_path) for a in command]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "'../" in result.stderr  # the message names the value
    assert result.stderr.count("\n") == 1
    assert not (run.parent / "x").exists()
