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
        "demo_compare.png",
        "run/compare/demo/compare.json",
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


def test_the_demo_checks_and_reports_its_claims(demo: tuple[Path, str]) -> None:
    out, printed = demo
    results = json.loads((out / "demo_results.json").read_text())
    rows = {row["name"]: row for row in results["subsets"]}
    claims = {c["claim"]: c for c in results["claims"]}
    assert len(claims) == 5
    report = (out / "demo_report.md").read_text()
    for name, claim in claims.items():
        assert f"claim: {name}: " in printed and name in report
        assert isinstance(claim["holds"], bool) and claim["detail"]
    # the claim the small scale's budgets support: the DFN's subset is cleaner than random and
    # than no filter (its accuracy claims need the full scale's budgets, see README)
    cleaner = claims["dfn_30 is cleaner than random and no_filter"]
    assert cleaner["holds"]
    assert rows["dfn_30"]["precision"] > max(rows["random"]["precision"],
                                             rows["no_filter"]["precision"])
    # each claim says what the numbers say
    dfn_top1 = results["filters"]["dfn"]["metrics"]["zero_shot_top1"]
    assert claims["the DFN reaches zero-shot top-1 >= 0.5"]["holds"] == (dfn_top1 >= 0.5)
    ratio = rows["dfn_30"]["top1_mean"] / rows["no_filter"]["top1_mean"]
    assert claims["dfn_30's mean top-1 is at least 2x no_filter's"]["holds"] == (ratio >= 2)
    baseline_best = max(max(rows[n]["top1"]) for n in SUBSETS[:4])
    assert (claims["every dfn_30 seed beats every baseline seed"]["holds"]
            == (min(rows["dfn_30"]["top1"]) > baseline_best))
    comparison = results["comparison"]
    assert sorted(comparison["means"]) == ["dfn_30", "no_filter", "web_clip_30"]
    assert comparison["budgets"] == [160, 320, 480, 640]
    assert all(list(m) == ["160", "320", "480", "640"] for m in comparison["means"].values())
    # the comparison's largest budget reuses the evaluate stages' students
    for name in comparison["means"]:
        assert comparison["means"][name]["640"] == pytest.approx(rows[name]["top1_mean"])
    above = all(comparison["means"]["dfn_30"][b] > max(m[b] for n, m in comparison["means"].items()
                                                        if n != "dfn_30")
                for b in comparison["means"]["dfn_30"])
    assert claims["dfn_30's curve is above the others at every budget"]["holds"] == above
    assert "## Scaling comparison" in report and "demo_compare.png" in report


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
