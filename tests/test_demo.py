"""The demo at small scale: every artifact exists and the comparison table is complete;
the compare_filters notebook runs on its results."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pyarrow.parquet as pq
import pytest
from nbclient import NotebookClient
from typer.testing import CliRunner

from curate.cli import app
from curate.io.uids import read_uid_file

SUBSETS = ["no_filter", "random", "basic", "web_clip_30", "dfn_30", "dfn_15"]
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_filters.ipynb"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    result = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--scale", "small", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_artifact_exists(demo: tuple[Path, str]) -> None:
    out, _ = demo
    for path in [
        "world/world.json",
        "world/eval/eval.json",
        "world/hq",
        "run/run.json",
        "run/sweeps/dfn/sweep.parquet",
        "run/sweeps/dfn/sweep.png",
        "handoff_dfn_30/info.json",
        "handoff_dfn_30/manifest.jsonl",
        "demo_results.json",
        "demo_report.md",
        "demo_top1.png",
        "demo_label_mix.png",
    ]:
        assert (out / path).exists(), path
    assert list((out / "pool").glob("*.tar")) and list((out / "handoff_dfn_30").glob("*.tar"))
    for name in ("dfn", "web_clip"):
        for member in ("open_clip_config.json", "open_clip_model.safetensors", "train.json"):
            assert (out / "filters" / name / member).is_file()
        assert list((out / "run" / "scores" / name).glob("part-*.parquet"))
    for name in SUBSETS:
        folder = out / "run" / "subsets" / name
        for member in ("manifest.parquet", "dropped.parquet", "selection.json", "evaluation.json"):
            assert (folder / member).is_file(), f"{name}/{member}"
        kept = pq.read_metadata(folder / "manifest.parquet").num_rows
        assert len(read_uid_file(folder / "uids.npy")) == kept


def test_results_table_is_complete(demo: tuple[Path, str]) -> None:
    out, printed = demo
    results = json.loads((out / "demo_results.json").read_text())
    rows = {row["name"]: row for row in results["subsets"]}
    assert list(rows) == SUBSETS
    for name, row in rows.items():
        assert row["size"] > 0 and 0.0 <= row["precision"] <= 1.0
        assert len(row["top1"]) == 3 and all(0.0 <= v <= 1.0 for v in row["top1"])
        assert sum(row["label_mix"].values()) == row["size"]
        assert name in printed
    assert rows["random"]["size"] == rows["dfn_30"]["size"]
    assert rows["dfn_15"]["size"] < rows["dfn_30"]["size"] < rows["no_filter"]["size"]
    report = (out / "demo_report.md").read_text()
    assert all(f"| {name} |" in report for name in SUBSETS) and "demo_top1.png" in report


def test_compare_filters_notebook_runs_on_the_results(
    demo: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, _ = demo
    monkeypatch.setenv("FILTER_POOL_DEMO", str(out))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    images = sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert images >= 3
