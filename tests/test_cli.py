"""The command line through Typer's CliRunner; results checked through the library."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
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


def _bad_inputs(tmp: Path) -> dict[str, list]:
    """One command line per command that fails with a UserError before any real work."""
    missing = tmp / "missing"
    return {
        "ingest": ["ingest", missing, "--run", tmp / "run"],
        "score": ["score", missing, "--model", "fp-tiny-vit", "--random-init", "--workers", "0"],
        "query": ["query", missing, "SELECT 1"],
        "sweep": ["sweep", missing, "--by", "dfn"],
        "sweep-fractions": ["sweep", missing, "--by", "dfn", "--fractions", "a,b"],
        "select": ["select", missing, "--out", "s", "--by", "dfn", "--fraction", "0.1"],
        "export": ["export", missing, "--subset", "s", "--out", tmp / "export"],
        "report": ["report", missing, "--out", tmp / "report.html"],
        "download": ["download", tmp / "missing.parquet", "--out", tmp / "dl"],
        "download-folder": ["download", tmp / "not-a-world", "--out", tmp / "dl"],
        "toyworld": ["toyworld", "--out", tmp / "world", "--scale", "huge"],
        "demo": ["demo", "--out", tmp / "demo", "--scale", "huge"],
        "train-dfn": ["train-dfn", missing, "--out", tmp / "model"],
        "evaluate": ["evaluate", missing, "--subset", "s", "--eval", missing],
        "evaluate-options": ["evaluate", missing, "--subset", "s", "--eval", missing,
                             "--clip-weight", "0.5"],
        "reinforce": ["reinforce", missing, "--out", tmp / "rf", "--teachers", "a,,b",
                      "--augmentations", "2"],
        "validate-reinforced": ["validate-reinforced", missing],
        "run": ["run", tmp / "missing.toml"],
        "dedup": ["dedup", missing, "--level", "exact", "--workers", "0"],
        "dedup-level": ["dedup", missing, "--level", "fuzzy"],
        "cluster": ["cluster", missing, "--clusters", "10"],
        "train-head": ["train-head", missing, "--labels", missing, "--embeddings", "clip_l14",
                       "--out", tmp / "head.safetensors"],
        "score-head": ["score", missing, "--kind", "head", "--head", missing, "--workers", "0"],
        "compare": ["compare", missing, "--subset", "a", "--subset", "b", "--eval", missing,
                    "--budgets", "8,16"],
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs(Path("/unused"))))
def test_user_error_in_any_command_is_one_stderr_line_and_exit_2(tmp_path: Path,
                                                                  case: str) -> None:
    (tmp_path / "not-a-world").mkdir()
    result = invoke(*_bad_inputs(tmp_path)[case])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > 10, lines
    assert not (tmp_path / "run").exists() and not (tmp_path / "world").exists()


def test_every_command_turns_user_errors_into_exit_2() -> None:
    """A command added later gets the same error handling: each one is wrapped."""
    import typer.main

    commands = typer.main.get_command(app).commands
    assert len(commands) >= 16
    assert set(_bad_inputs(Path("/unused"))) >= set(commands) - {"filters", "models"}
    unwrapped = [name for name, c in commands.items()
                 if getattr(c.callback, "__wrapped__", None) is None]
    assert unwrapped == []


def test_json_output_is_the_summary_to_dict(tmp_path: Path, pool: SyntheticPool) -> None:
    from curate.filters import describe_filters
    from curate.ingest.stage import IngestConfig, ingest_pool

    result = invoke("filters", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(describe_filters().to_dict()))
    assert invoke("filters").stdout.rstrip("\n") == describe_filters().text()

    result = invoke("ingest", pool.root, "--run", tmp_path / "cli", "--json")
    assert result.exit_code == 0, result.output
    summary = ingest_pool(IngestConfig(pool=pool.root, run=tmp_path / "library"))
    assert json.loads(result.stdout) == summary.to_dict()
    text = invoke("ingest", pool.root, "--run", tmp_path / "text").stdout.rstrip("\n")
    assert text == summary.text().replace(str(tmp_path / "library"), str(tmp_path / "text"))


def test_commands_print_what_the_library_returns(tmp_path: Path, monkeypatch) -> None:
    """The CLI adds nothing: --json is to_dict(), plain output is text(), for any result."""
    from collections import Counter

    import curate.export.stage
    import curate.select.subset
    from curate.export.stage import ExportSummary
    from curate.select.subset import SelectSummary

    chosen = SelectSummary(name="top", path=tmp_path / "subsets" / "top", total=10, kept=3,
                           dropped_first=Counter({"dfn": 5, "basic": 2}))
    monkeypatch.setattr(curate.select.subset, "select_subset", lambda config: chosen)
    args = ("select", tmp_path, "--out", "top", "--by", "dfn", "--fraction", "0.3")
    assert json.loads(invoke(*args, "--json").stdout) == chosen.to_dict()
    assert invoke(*args).stdout.rstrip("\n") == chosen.text()
    assert chosen.text().splitlines()[0] == f"subset 'top': kept 3 of 10 (30.00%) -> {chosen.path}"

    exported = ExportSummary(out=tmp_path / "out", selected=4, exported=3, shards=1,
                             missing=Counter({"not_ok": 1}))
    monkeypatch.setattr(curate.export.stage, "export_subset", lambda config: exported)
    args = ("export", tmp_path, "--subset", "top", "--out", tmp_path / "out")
    result = invoke(*args, "--json")
    assert result.exit_code == 1  # missing samples: exit 1, as before
    assert json.loads(result.stdout) == exported.to_dict()
    assert invoke(*args).stdout.rstrip("\n") == exported.text()
