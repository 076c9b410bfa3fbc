"""The command line through Typer's CliRunner; results checked through the library."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from curate.cli import app
from curate.io.workspace import RunPaths
from tests.generators.synthetic import SyntheticPool

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_ingest_then_score(tmp_path: Path, pool: SyntheticPool, tiny_checkpoint: Path) -> None:
    run = tmp_path / "run"
    result = invoke("ingest", pool.root, "--run", run)
    assert result.exit_code == 0, result.output
    assert f"ingested {len(pool.keys)} samples from 3 shards" in result.output
    result = invoke("score", run, "--model", "fp-tiny-vit", "--pretrained", tiny_checkpoint,
                    "--workers", "0", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["samples"] == len(pool.keys)
    assert summary["ok"] == len(pool.keys) - len(pool.planted)
    assert summary["by_status"]["corrupt_image"] == 1
    scores = pl.read_parquet(RunPaths(run).scores_dir("dfn") / "part-*.parquet")
    assert scores.height == len(pool.keys)
    again = invoke("score", run, "--model", "fp-tiny-vit", "--pretrained", tiny_checkpoint,
                   "--workers", "0", "--no-progress")
    assert again.exit_code == 0
    assert "(3 already done)" in again.output


def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, pool: SyntheticPool,
                                                tiny_checkpoint: Path) -> None:
    result = invoke("ingest", tmp_path / "missing", "--run", tmp_path / "run")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: pool {tmp_path / 'missing'} does not exist"
    assert invoke("ingest", pool.root, "--run", tmp_path / "run").exit_code == 0
    cases = [
        (["--model", "ViT-B-99", "--pretrained", "openai"], "unknown model 'ViT-B-99'"),
        (["--model", "fp-tiny-vit"], "has no weights"),
        (["--model", "fp-tiny-rn", "--pretrained", tiny_checkpoint], "does not match"),
        (["--model", "fp-tiny-vit", "--random-init", "--name", "Bad-Name"], "--name"),
    ]
    for args, message in cases:
        result = invoke("score", tmp_path / "run", *args, "--workers", "0", "--no-progress")
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "scores").exists()


def test_failed_shard_exits_nonzero_naming_it(tmp_path: Path, pool: SyntheticPool,
                                               tiny_checkpoint: Path) -> None:
    import shutil

    from tests.generators.synthetic import truncate_file

    copy = tmp_path / "pool"
    shutil.copytree(pool.root, copy)
    truncate_file(copy / "00002.tar", 0.3)
    assert invoke("ingest", copy, "--run", tmp_path / "run").exit_code == 0
    result = invoke("score", tmp_path / "run", "--model", "fp-tiny-vit", "--pretrained",
                    tiny_checkpoint, "--workers", "0", "--no-progress")
    assert result.exit_code == 1
    assert "FAILED shard 00002: 00002.tar" in result.output


def test_models_lists_packaged_configs() -> None:
    result = invoke("models", "--json")
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert "fp-tiny-vit" in payload["packaged"]
    assert "dfn2b" in payload["pretrained"]["ViT-L-14"]
