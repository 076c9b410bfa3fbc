"""filter-pool report: one self-contained HTML file, checked in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli import app
from curate.executor import ExecutorConfig
from curate.filters import parse_filter_spec
from curate.models import ModelSpec
from curate.report import ReportConfig, build_report
from curate.score.stage import ScoreConfig, score_run
from curate.select.subset import SelectConfig, select_subset

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]


@pytest.fixture()
def scored_run(run_dir: Path, tiny_checkpoint: Path) -> Path:
    score_run(
        ScoreConfig(
            run=run_dir,
            model=ModelSpec("fp-tiny-vit", str(tiny_checkpoint)),
            executor=ExecutorConfig(workers=0),
            batch_size=8,
            progress=False,
        )
    )
    select_subset(
        SelectConfig(
            run=run_dir,
            name="top",
            by="dfn",
            fraction=0.5,
            filters=(parse_filter_spec("caption_length:min_words=12"),),
        )
    )
    return run_dir


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_is_self_contained_with_grids_and_reasons(scored_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    summary = build_report(ReportConfig(run=scored_run, out=out, subset="top", grid_size=4))
    page = out.read_text()
    assert summary.cut and summary.cut["from"] == "subset top"
    assert not re.search(r'(src|href)="(?!data:)', page), "every resource is inline"
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert summary.images == page.count("<img ") > 4 * 3
    assert all(0 < n <= 4 for title, n in summary.grids.items() if "another" not in title)
    # samples above the cut dropped by caption_length show that reason under their image
    assert summary.grids["Dropped by another filter despite a score above the cut"] > 0
    assert "caption_length(min_words=12" in page
    for section in ("Pool", "Scorer dfn", "Subset top", "Images around the cut"):
        assert f"<h2>{section}</h2>" in page


def test_report_cli_json_and_bad_input(scored_run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(scored_run), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert '"images"' in result.output and out.is_file()
    for args, message in [
        (["--out", str(out)], "exists; pass --overwrite"),
        (["--out", str(tmp_path / "x.html"), "--subset", "nope"], "subset 'nope' not found"),
        (["--out", str(tmp_path / "x.txt")], "is an .html file"),
        (["--out", str(tmp_path / "x.html"), "--scorer", "clip"], "the run's scorers are dfn"),
    ]:
        result = runner.invoke(app, ["report", str(scored_run), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "x.html").exists()


def test_report_renders_with_its_images_in_headless_chromium(
    scored_run: Path, tmp_path: Path
) -> None:
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs it (Debian: chromium)")
        pytest.skip("chromium not installed (make test installs it)")
    out = tmp_path / "report.html"
    summary = build_report(ReportConfig(run=scored_run, out=out, subset="top"))
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", out.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    total = re.search(r'data-images-total="(\d+)"', dom)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    assert total and loaded, "the page's load handler did not run"
    assert int(total.group(1)) == summary.images
    assert int(loaded.group(1)) == summary.images, "some embedded images did not decode"


def test_report_shows_duplicate_groups_and_clusters(scored_run: Path, tmp_path: Path) -> None:
    """Derived tables get a section each: the largest duplicate groups (the representative
    first) and the largest kept and dropped clusters, with thumbnails from the tars."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curate.io.workspace import RunPaths
    from curate.tables.derived import write_derived_table

    dedup, clusters = [], []
    for index, part in enumerate(RunPaths(scored_run).pool_parts()):
        uids = pq.read_table(part, columns=["uid"]).column("uid")
        n = len(uids)
        rows = np.arange(n)
        ids = (index << 32) + (rows // 3) * 3  # groups of three: the first row represents
        common = {"uid": uids, "status": pa.array(["ok"] * n),
                  "error": pa.array([None] * n, pa.string())}
        dedup.append((part.stem, pa.table({
            **common, "dup_group": pa.array(ids, pa.int64()),
            "dup_group_size": pa.array(np.minimum(3, n - (rows // 3) * 3), pa.int32()),
            "dup_keep": pa.array(rows % 3 == 0),
            "dup_reason": pa.array(["representative" if r % 3 == 0 else "duplicate"
                                    for r in rows])})))
        clusters.append((part.stem, pa.table({
            **common, "clu_cluster": pa.array(rows % 4, pa.int32()),
            "clu_keep": pa.array(rows % 4 < 2),
            "clu_similarity": pa.array(1.0 - rows / 100, pa.float32())})))
    write_derived_table(scored_run, "dup", "dedup", {"level": "test"}, dedup, {})
    write_derived_table(scored_run, "clu", "cluster", {}, clusters, {})
    out = tmp_path / "derived.html"
    summary = build_report(ReportConfig(run=scored_run, out=out, grid_size=3))
    document = out.read_text()
    assert "Table dup" in document and "Table clu" in document
    group_grids = [t for t in summary.grids if t.startswith("dup: group ")]
    cluster_grids = [t for t in summary.grids if t.startswith("clu: cluster ")]
    assert len(group_grids) == 4 and all(summary.grids[t] == 3 for t in group_grids)
    assert len(cluster_grids) == 4 and {"kept)" in t for t in cluster_grids} == {True, False}
    assert summary.scorers == ["dfn"]
    assert document.count("representative") >= 4
