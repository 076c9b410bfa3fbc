"""A real download of a toy world through img2dataset from 127.0.0.1, then ingest and score."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

import curate
from curate.cli import app
from curate.errors import UserError
from curate.executor import ExecutorConfig
from curate.ingest.stage import IngestConfig, ingest_pool
from curate.io.download import DownloadConfig, DownloadSummary, download_urls
from curate.io.serve import serve_directory
from curate.models import ModelSpec
from curate.score.stage import ScoreConfig, score_run
from curate.tables.views import connect
from curate.toyworld.download import POOL_URLS, download_toy_pool
from curate.toyworld.world import ToyWorld, ToyWorldConfig, write_toy_world

FILTERING_PATH = {
    "filters", "score", "models", "executor", "train", "select", "tables", "export", "ingest",
    "io", "runner", "evaluate", "cli.py",
}  # fmt: skip
LABEL_COLUMNS = {"label", "detail", "true_class", "class_name", "source_path"}


@dataclass
class Downloaded:
    world: ToyWorld
    pool: Path
    summary: DownloadSummary
    labels: list[dict]  # read right after the download, before any test deletes the file
    rows: list[dict]  # img2dataset's parquet rows, all shards


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory: pytest.TempPathFactory) -> Downloaded:
    root = tmp_path_factory.mktemp("download")
    world = write_toy_world(
        root / "world",
        ToyWorldConfig(hq_size=5, pool_size=200, eval_per_class=1),
        progress=False,
    )
    pool = root / "pool"
    summary = download_toy_pool(world.root, pool, processes=1, threads=8, shard_size=100)
    labels = pq.read_table(world.pool_labels).to_pylist()
    rows = pq.read_table(sorted(pool.glob("*.parquet"))).to_pylist()
    return Downloaded(world, pool, summary, labels, rows)


def test_every_url_has_a_row_and_the_noise_survives(downloaded: Downloaded) -> None:
    urls = pq.read_table(downloaded.world.root / POOL_URLS).to_pylist()
    assert len(urls) == 200
    assert all(u["url"].startswith(downloaded.summary.base_url) for u in urls)
    by_url = {r["url"]: r for r in downloaded.rows}
    assert len(downloaded.rows) == 200 and set(by_url) == {u["url"] for u in urls}
    assert downloaded.summary.count == 200 and downloaded.summary.shards == 2
    assert sorted(p.name for p in downloaded.pool.iterdir()) == [
        "00000.parquet", "00000.tar", "00000_stats.json",
        "00001.parquet", "00001.tar", "00001_stats.json",
        "_download.json",  # the list and settings used: a rerun of the same is reused
    ]  # fmt: skip
    for label in downloaded.labels:
        row = by_url[label["url"]]
        assert row["caption"] == label["caption"]
        if label["label"] == "corrupt":
            assert row["status"] != "success" and row["error_message"], row
            continue
        assert row["status"] == "success", row
        # No resize below 512 px: tiny and extreme-aspect images keep their exact sizes.
        assert (row["original_width"], row["original_height"]) == (label["width"], label["height"])
        assert (row["width"], row["height"]) == (label["width"], label["height"])
    kinds = {label["label"] for label in downloaded.labels}
    assert {"corrupt", "tiny_image", "extreme_aspect"} <= kinds


def test_labels_join_the_ingested_pool_by_uid(tmp_path: Path, downloaded: Downloaded) -> None:
    run = tmp_path / "run"
    summary = ingest_pool(IngestConfig(pool=downloaded.pool, run=run))
    assert summary.samples == 200
    uids = set(pq.read_table(sorted((run / "pool").glob("part-*.parquet")))["uid"].to_pylist())
    assert uids == {label["uid"] for label in downloaded.labels}


def test_ingest_and_score_never_need_the_labels(
    tmp_path: Path, downloaded: Downloaded, tiny_checkpoint: Path
) -> None:
    downloaded.world.pool_labels.unlink()  # the ground truth is gone; nothing may miss it
    run = tmp_path / "run"
    ingest_pool(IngestConfig(pool=downloaded.pool, run=run))
    score_run(
        ScoreConfig(
            run=run,
            model=ModelSpec("fp-tiny-vit", pretrained=str(tiny_checkpoint)),
            executor=ExecutorConfig(workers=0),
            batch_size=32,
            name="dfn",
            progress=False,
        )
    )
    con = connect(run)
    columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    assert "dfn_score" in columns
    assert not columns & LABEL_COLUMNS
    scored = con.execute("SELECT count(*) FROM samples WHERE dfn_score IS NOT NULL").fetchone()
    corrupt = sum(label["label"] == "corrupt" for label in downloaded.labels)
    assert scored[0] == 200 - corrupt


def test_no_filter_or_scorer_module_reads_the_labels() -> None:
    """Nothing on the path pool -> ingest -> score -> filter/select/export (or training) may
    name the ground-truth file; only the world's writer, the download (which adds url and
    uid) and reporting code such as the demo may."""
    package = Path(curate.__file__).parent
    pattern = re.compile(r"pool_labels|POOL_LABELS")
    on_the_path = [
        p
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] in FILTERING_PATH
        or str(p.relative_to(package)) in FILTERING_PATH
    ]
    assert len(on_the_path) > 20
    readers = [str(p) for p in on_the_path if pattern.search(p.read_text(encoding="utf-8"))]
    assert readers == []
    assert pattern.search((package / "toyworld" / "world.py").read_text())  # the check can fire


def test_serve_directory_serves_files_then_stops(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 bytes")
    with serve_directory(tmp_path) as base_url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", base_url)
        with urllib.request.urlopen(base_url + "a.jpg", timeout=5) as response:
            assert response.read() == b"\xff\xd8 bytes"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(base_url + "missing.jpg", timeout=5)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base_url + "a.jpg", timeout=2)
    with pytest.raises(UserError, match="not a directory"), serve_directory(tmp_path / "no"):
        pass


def test_bad_url_lists_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        download_urls(DownloadConfig(urls=tmp_path / "none.parquet", out=tmp_path / "out"))
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"link": ["http://127.0.0.1:1/a.jpg"], "caption": ["a"]}), urls)
    with pytest.raises(UserError, match=r"urls.parquet: no column 'url' \(--url-col\)"):
        download_urls(DownloadConfig(urls=urls, out=tmp_path / "out"))
    with pytest.raises(UserError, match="--resize-mode"):
        DownloadConfig(urls=urls, out=tmp_path / "out", resize_mode="stretch")
    assert not (tmp_path / "out").exists()


def test_cli_download_errors_exit_2(tmp_path: Path) -> None:
    urls = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "caption": ["a"]}), urls)
    (tmp_path / "out").mkdir()
    runner = CliRunner()
    result = runner.invoke(app, ["download", str(urls), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "exists; use --overwrite" in result.output
    result = runner.invoke(app, ["download", str(tmp_path), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "not a toy world" in result.output
    result = runner.invoke(
        app, ["download", str(urls), "--out", str(tmp_path / "o3"), "--caption-col", "text"]
    )
    assert result.exit_code == 2 and "no column 'text' (--caption-col)" in result.output


def test_cli_generates_and_downloads_a_toy_world(tmp_path: Path) -> None:
    runner = CliRunner()
    world, pool = tmp_path / "world", tmp_path / "pool"
    result = runner.invoke(
        app,
        ["toyworld", "--out", str(world), "--hq", "4", "--pool", "50", "--eval-per-class", "1",
         "--seed", "3", "--no-progress", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["counts"] == {"hq": 4, "pool": 50, "eval": 22}
    assert sum(made["pool_kinds"].values()) == 50
    result = runner.invoke(
        app, ["download", str(world), "--out", str(pool), "--processes", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # img2dataset's prints went to stderr
    assert summary["count"] == 50 and summary["shards"] == 1
    assert summary["successes"] == 50 - made["pool_kinds"]["corrupt"]
    rows = pq.read_table(pool / "00000.parquet").num_rows
    assert rows == 50
    result = runner.invoke(app, ["download", str(world), "--out", str(pool), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["reused"]  # the same: done
    assert json.loads(result.stdout)["count"] == 50
    result = runner.invoke(app, ["download", str(world), "--out", str(pool),
                                 "--image-size", "256"])
    assert result.exit_code == 2 and "image_size: was 512, now 256" in result.output
    result = runner.invoke(app, ["toyworld", "--out", str(world), "--hq", "4", "--pool", "50",
                                 "--eval-per-class", "1", "--seed", "3", "--no-progress"])
    assert result.exit_code == 0, result.output  # the same world: reused
    result = runner.invoke(app, ["toyworld", "--out", str(world), "--hq", "4", "--pool", "50",
                                 "--eval-per-class", "1", "--seed", "4", "--no-progress"])
    assert result.exit_code == 2 and "seed: was 3, now 4" in result.output


def test_failed_downloads_keep_their_rows_through_ingest(tmp_path: Path) -> None:
    """A plain URL list (csv) with a good image, a 404 and an HTML page served as .jpg."""
    files = tmp_path / "files"
    files.mkdir()
    Image.new("RGB", (70, 50), (200, 30, 30)).save(files / "good.jpg")
    (files / "page.jpg").write_bytes(b"<html>not an image</html>")
    with serve_directory(files) as base_url:
        urls = tmp_path / "urls.csv"
        urls.write_text(
            "link,text\n"
            f"{base_url}good.jpg,a red rectangle\n"
            f"{base_url}missing.jpg,a missing picture\n"
            f"{base_url}page.jpg,an html page\n"
        )
        summary = download_urls(
            DownloadConfig(urls=urls, out=tmp_path / "pool", url_col="link", caption_col="text")
        )
    assert summary.count == 3 and summary.successes == 1
    assert summary.by_status == {"success": 1, "failed_to_download": 1, "failed_to_resize": 1}
    run = tmp_path / "run"
    ingested = ingest_pool(IngestConfig(pool=tmp_path / "pool", run=run))
    assert ingested.samples == 3
    rows = {
        r["text"]: r
        for r in pq.read_table(sorted((run / "pool").glob("part-*.parquet"))).to_pylist()
    }
    assert rows["a red rectangle"]["status"] == "success"
    assert (rows["a red rectangle"]["width"], rows["a red rectangle"]["height"]) == (70, 50)
    assert rows["a missing picture"]["status"] == "failed_to_download"
    assert "404" in rows["a missing picture"]["error_message"]
    assert rows["an html page"]["status"] == "failed_to_resize"
