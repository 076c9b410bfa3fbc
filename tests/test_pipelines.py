"""Recipes (pipelines/*.toml) run end to end on tiny generated pools: each shipped recipe, a
recipe stopped part-way resumes to the same tables, a finished one runs nothing, bad recipes
give one line naming the file and line, --dry-run writes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.io.uids import read_uid_file
from curate.select.subset import SelectConfig, select_subset
from tests.generators.datacomp import write_datacomp_metadata
from tests.generators.shapes import write_shapes_pool

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
BASELINES = ["no_filter", "basic", "clip_score_l14_30", "clip_score_b32_028", "laion2b",
             "text_based"]
runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["run", *args, "--no-progress"])
    return result.exit_code, result.output


def statuses(output: str) -> list[str]:
    return [line.split()[0] for line in output.strip().splitlines()[:-1]]


@pytest.fixture(scope="module")
def metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("datacomp") / "metadata"
    write_datacomp_metadata(folder, num_files=2, rows_per_file=300, embed_dim_b32=8,
                            embed_dim_l14=8)
    return folder


def _uids(run: Path, subset: str) -> np.ndarray:
    return read_uid_file(run / "subsets" / subset / "uids.npy")


def test_datacomp_baselines_recipe_and_a_rerun_runs_nothing(metadata: Path, tmp_path: Path):
    recipe = str(PIPELINES / "datacomp_baselines.toml")
    code, output = run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={tmp_path}")
    assert code == 0, output
    assert statuses(output) == ["ran"] * 7 and "finished" in output
    run = tmp_path / "run"
    for name in BASELINES:
        assert len(_uids(run, name)) > 0, name
    # the L/14 top 30% is DataComp's --fraction rule over clip_l14 (its own name accepted)
    select_subset(SelectConfig(run=run, name="check", by="clip_l14", fraction=0.3))
    assert np.array_equal(_uids(run, "clip_score_l14_30"), _uids(run, "check"))
    assert set(_uids(run, "laion2b").tolist()) <= set(_uids(run, "clip_score_b32_028").tolist())
    records = list((run / "recipes").glob("datacomp_baselines-*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["text"] == (PIPELINES / "datacomp_baselines.toml").read_text()
    assert [s["status"] for s in record["stages"]] == ["ran"] * 7
    assert record["stages"][3]["settings"]["by"] == "clip_l14_similarity_score"

    before = {p: p.stat().st_mtime_ns for p in (run / "subsets").rglob("*") if p.is_file()}
    code, output = run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={tmp_path}")
    assert code == 0, output
    assert statuses(output) == ["done"] * 7
    assert {p: p.stat().st_mtime_ns for p in (run / "subsets").rglob("*") if p.is_file()} == before
    # a stage asked again by hand with the same settings is done; other settings are refused
    again = runner.invoke(app, ["select", str(run), "--out", "laion2b", "--by", "clip_b32",
                                "--threshold", "0.28", "--filter", "language:lang=en"])
    assert again.exit_code == 0 and "done" in again.output, again.output
    other = runner.invoke(app, ["select", str(run), "--out", "laion2b", "--by", "clip_b32",
                                "--threshold", "0.3"])
    assert other.exit_code == 2 and "threshold: was 0.28, now 0.3" in other.output


def _tables(run: Path) -> dict[str, bytes]:
    return {name: (run / "subsets" / name / "uids.npy").read_bytes() for name in BASELINES}


def test_a_stopped_recipe_resumes_to_the_same_tables(metadata: Path, tmp_path: Path):
    recipe = str(PIPELINES / "datacomp_baselines.toml")
    straight = tmp_path / "straight"
    assert run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={straight}")[0] == 0

    # stopped by a failing stage (a class list that does not exist), fixed, run again
    stopped = tmp_path / "stopped"
    code, output = run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={stopped}",
                           "--set", f"text_filter=text_match:classes={tmp_path / 'none.txt'}")
    assert code == 2 and "stage text_based (select)" in output and "resume" in output
    assert statuses(output) == ["ran"] * 6 + ["failed"]  # every stage before it finished
    code, output = run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={stopped}")
    assert code == 0, output
    assert statuses(output) == ["done"] * 6 + ["ran"]
    assert _tables(stopped / "run") == _tables(straight / "run")

    # killed in a subprocess once the first stage is recorded, then run again
    killed = tmp_path / "killed"
    command = [sys.executable, "-c", "from curate.cli import app; app()", "run", recipe,
               "--set", f"pool={metadata}", "--set", f"out={killed}", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(PIPELINES.parent)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if list((killed / "run" / "recipes").glob("*.json")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    code, output = run_cli(recipe, "--set", f"pool={metadata}", "--set", f"out={killed}")
    assert code == 0, output
    assert statuses(output)[0] == "done"  # the ingest recorded before the kill is not redone
    assert _tables(killed / "run") == _tables(straight / "run")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_pool(tmp_path_factory.mktemp("shapes"), num_shards=2,
                             samples_per_shard=40)


def test_dfn_filter_recipe(shapes: Path, tmp_path: Path) -> None:
    settings = ["--set", f"hq={shapes}", "--set", f"pool={shapes}", "--set", f"out={tmp_path}",
                "--set", "model=fp-tiny-vit", "--set", "samples=64", "--set", "batch_size=16",
                "--set", "workers=0", "--set", "shard_size=20"]
    code, output = run_cli(str(PIPELINES / "dfn_filter.toml"), *settings)
    assert code == 0, output
    assert statuses(output) == ["ran"] * 7
    run = tmp_path / "run"
    kept15, kept30 = (len(_uids(run, n)) for n in ("dfn_15", "dfn_30"))
    assert 0 < kept15 < kept30
    info = json.loads((tmp_path / "handoff_dfn_30" / "info.json").read_text())
    assert info["num_samples"] == kept30 and info["num_shards"] == -(-kept30 // 20)
    assert (run / "sweeps" / "dfn" / "sweep.parquet").is_file()

    # train-dfn by hand on the finished filter: done (exit 0); another configuration refused
    train = ["train-dfn", str(shapes), "--out", str(tmp_path / "dfn"), "--model", "fp-tiny-vit",
             "--samples", "64", "--batch-size", "16", "--lr", "0.0005", "--no-progress"]
    result = runner.invoke(app, train)
    assert result.exit_code == 0 and result.output.startswith("done"), result.output
    result = runner.invoke(app, [*train[:-2], "0.001", "--no-progress"])
    assert result.exit_code == 2 and "lr: checkpoint 0.0005, now 0.001" in result.output

    code, output = run_cli(str(PIPELINES / "dfn_filter.toml"), *settings)
    assert code == 0 and statuses(output) == ["done"] * 7, output


def test_reinforce_dr_recipe(make_shapes_run, tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = make_shapes_run(tmp_path, 2, 12)
    teachers = json.dumps([f"fp-tiny-vit:{tiny_checkpoint}"])
    code, output = run_cli(str(PIPELINES / "reinforce_dr.toml"), "--run", str(run),
                           "--set", "subset=all", "--set", f"out={tmp_path / 'dr'}",
                           "--set", f"teachers={teachers}", "--set", "augmentations=2",
                           "--set", "workers=0", "--set", "shard_size=10")
    assert code == 0, output
    assert statuses(output) == ["ran"] * 3 and "valid" in output
    reinforced = tmp_path / "dr" / "reinforced"
    config = json.loads((reinforced / "config.json").read_text())
    assert config
    kept = pq.read_metadata(run / "subsets" / "all" / "manifest.parquet").num_rows
    assert sum(1 for _ in reinforced.glob("*.tar")) == -(-kept // 10)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, output = run_cli(str(PIPELINES / "demo.toml"), "--set", f"out={out}",
                           "--set", "filter_samples=640", "--dry-run")
    assert code == 0, output
    assert "pending world (toyworld)" in output and "samples = 640" in output
    assert f'data = "{out}/world/hq"' in output
    assert output.strip().splitlines()[-1].endswith("nothing run")
    assert not out.exists()
    result = runner.invoke(app, ["run", str(PIPELINES / "demo.toml"), "--set", f"out={out}",
                                 "--dry-run", "--json"])
    plan = json.loads(result.output)
    assert plan["dry_run"] and len(plan["stages"]) == 23 and not out.exists()
    assert [s["id"] for s in plan["stages"]][-2:] == ["compare", "report"]


def test_dry_run_after_a_partial_run_shows_what_is_done(metadata: Path, tmp_path: Path):
    recipe = str(PIPELINES / "datacomp_baselines.toml")
    args = ["--set", f"pool={metadata}", "--set", f"out={tmp_path}"]
    assert run_cli(recipe, *args, "--set", "text_filter=text_match:classes=/nope")[0] == 2
    listing = sorted(p.name for p in tmp_path.rglob("*"))
    code, output = run_cli(recipe, *args, "--dry-run")
    assert code == 0
    lines = [line for line in output.splitlines() if not line.startswith("    ")]
    assert [line.split()[0] for line in lines[:-1]] == ["done"] * 6 + ["pending"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == listing


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ('[vars]\nrun = "r"\n\n[[stage]]\nkind = "ingest"\npool = "p"\nrun = "{run}"\n\n'
         '[[stage]]\n# a comment\nkind = "nope"\n', 11, "unknown stage kind 'nope'"),
        ('[vars]\nrun = "r"\n\n[[stage]]\nkind = "select"\nrun = "{run}"\nout = "a"\n'
         'fracton = 0.3\n', 8, "unknown key 'fracton' for stage kind 'select'"),
        ('[vars]\nrun = "r"\n\n[[stage]]\nkind = "select"\nrun = "{run}"\nout = "a"\n'
         'by = "dfn"\nfraction = "lots"\n', 9, "fraction = 'lots': expected a number"),
        ('[vars]\nrun = "r"\n\n[[stage]]\nkind = "select"\nrun = "{rnu}"\nout = "a"\n', 6,
         "unknown variable '{rnu}'"),
        ('runs = 1\n[[stage]]\nkind = "select"\nrun = "r"\nout = "a"\n', 1,
         "unknown key 'runs'"),
        ('[[stage]]\nkind = "select"\nrun = "r"\nout = [1,\n', 4, "invalid TOML"),
    ],
)
def test_a_bad_recipe_is_one_line_naming_file_and_line(
    tmp_path: Path, body: str, line: int, message: str
) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(body)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert f"{recipe}:{line}: " in result.output and message in result.output
    assert not (tmp_path / "r").exists()


def test_set_of_an_unknown_variable_is_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(PIPELINES / "dfn_filter.toml"), "--set",
                                 "sampels=5", "--dry-run"])
    assert result.exit_code == 2 and "no variable 'sampels'" in result.output
