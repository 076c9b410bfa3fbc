"""Trust, outputs: what a killed command left beside its output is removed the next time the
same command writes that output, and nothing else is touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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


def _foreign(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("not made by filter-pool")
    return path


def _run_with_scores(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    meta = tmp_path / "meta"
    meta.mkdir()
    uids = [f"{rng.integers(2**63):016x}{rng.integers(2**63):016x}" for _ in range(30)]
    pq.write_table(pa.table({"uid": uids, "url": ["http://127.0.0.1/x"] * 30,
                             "text": ["a cat on a mat"] * 30,
                             "clip_b32_similarity_score": rng.normal(size=30)}),
                   meta / "00000.parquet")
    ingest_pool(IngestConfig(pool=meta, run=tmp_path / "run"))
    return tmp_path / "run"


def test_overwrite_leaves_what_the_command_did_not_make(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    run = _run_with_scores(tmp_path)
    (tmp_path / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/x.jpg,x\n")
    cases = {
        "select": (_foreign(run / "subsets" / "s"),
                   ["select", run, "--out", "s", "--by", "clip_b32", "--fraction", "0.5"]),
        "sweep": (_foreign(run / "sweeps" / "w"), ["sweep", run, "--by", "clip_b32",
                                                   "--name", "w"]),
        "download": (_foreign(tmp_path / "dl"), ["download", tmp_path / "urls.csv", "--out",
                                                 tmp_path / "dl"]),
        "train-dfn": (_foreign(tmp_path / "model"), ["train-dfn", tmp_path / "meta", "--out",
                                                     tmp_path / "model"]),
        "toyworld": (_foreign(tmp_path / "world"), ["toyworld", "--out", tmp_path / "world"]),
    }
    runner = CliRunner()
    for name, (folder, args) in cases.items():
        result = runner.invoke(app, [str(a) for a in args] + ["--overwrite"])
        assert result.exit_code == 2, (name, result.output)
        assert result.stderr.count("\n") == 1, (name, result.stderr)
        assert (folder / "notes.txt").read_text() == "not made by filter-pool", name
    page = tmp_path / "page.html"
    page.write_text("<html>my own page</html>")
    result = runner.invoke(app, ["report", str(run), "--out", str(page), "--overwrite"])
    assert result.exit_code == 2 and "left untouched" in result.stderr
    assert page.read_text() == "<html>my own page</html>"


def test_outputs_inside_inputs_are_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from curate.cli import app

    run = _run_with_scores(tmp_path)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "urls.csv").write_text("url,caption\nhttp://127.0.0.1:9/x.jpg,x\n")
    cases = [
        ["report", run, "--out", run / "report.html"],
        ["download", tmp_path / "lists" / "urls.csv", "--out", tmp_path / "lists"],
        ["train-dfn", tmp_path / "meta", "--out", tmp_path / "meta" / "model"],
        ["train-dfn", tmp_path / "meta", "--out", tmp_path],
        ["ingest", tmp_path / "meta", "--run", tmp_path / "meta"],
    ]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    runner = CliRunner()
    for args in cases:
        for extra in ([], ["--overwrite"]):
            result = runner.invoke(app, [str(a) for a in args] + extra)
            assert result.exit_code == 2, (args, result.output)
            assert "input" in result.stderr or "pool" in result.stderr, result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_reinforce_refuses_outputs_over_its_shards_and_foreign_folders(tmp_path: Path) -> None:
    from curate.errors import UserError
    from curate.executor import ExecutorConfig
    from curate.models import ModelSpec
    from curate.reinforce.stage import ReinforceConfig, reinforce
    from tests.test_reinforce import write_handoff

    shards = write_handoff(tmp_path / "data" / "shards")

    def config(out: Path, **extra) -> ReinforceConfig:
        return ReinforceConfig(shards=shards, out=out, augmentations=1, progress=False,
                               teachers=(ModelSpec("fp-tiny-vit", random_init=True),),
                               executor=ExecutorConfig(workers=0), **extra)

    for out in (shards, shards / "out", tmp_path / "data"):
        with pytest.raises(UserError, match="the input"):
            config(out, overwrite=True)
    foreign = _foreign(tmp_path / "foreign")
    with pytest.raises(UserError, match="was not made by `filter-pool reinforce`"):
        reinforce(config(foreign, overwrite=True))
    assert (foreign / "notes.txt").is_file()
